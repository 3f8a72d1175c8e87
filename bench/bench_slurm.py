"""A 2-seed digits study through Slurm (`--backend slurm`) beside the same study run locally with `--jobs 2`.

Issue #17's question: what does running every step as a Slurm job cost beside a
local study on the same cores? Both sides are real `ofexp study` processes against
one real `mlflow server` (started here), alternating, each in a new experiment with
--no-cache so that nothing is reused. The study is the default digits recipe (10
epochs, MLP width 1), 2 seeds, prediction measures: 16 steps in 3 waves. Needs a
Slurm cluster this machine submits to (.ci/install-slurm.sh makes a one-node one);
on 2 cores, Slurm runs two 1-CPU jobs at once, as `--jobs 2` runs two seeds.

Notes: the median train step (MLflow start to end of the train runs of the local
study) and the overhead per step, (Slurm − local) / 16.
"""
from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from bench.bench_report import start_server, stop_server
from bench.common import Result

OFEXP = Path(sys.executable).parent / "ofexp"
STUDY = ["study", "--seeds", "2", "--no-log-model", "--no-cache"]
STEPS = 16


def _study(uri: str, folder: Path, extra: list[str]) -> tuple[float, str]:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    start = time.perf_counter()
    done = subprocess.run([str(OFEXP), *STUDY, "--experiment-name", f"bench-{uuid.uuid4().hex[:8]}", *extra],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=3600)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ofexp study {' '.join(extra)} failed: {done.stderr[-2000:]}")
    return elapsed, done.stdout.split()[-1]


def _train_seconds(uri: str, study_id: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    study = client.get_run(study_id)
    runs = client.search_runs([study.info.experiment_id], "tags.`ofexp.stage` = 'train'")
    return [(r.info.end_time - r.info.start_time) / 1000 for r in runs]


def run(quick: bool, repeats: int) -> list[Result]:
    if shutil.which("sbatch") is None:
        print("bench slurm: no sbatch on PATH; run .ci/install-slurm.sh (skipped)", file=sys.stderr)
        return []
    with tempfile.TemporaryDirectory(prefix="ofexp-bench-slurm-") as tmp:
        root = Path(tmp)
        config = root / "slurm.json"
        config.write_text(json.dumps({"time": 30, "cpus_per_task": 1, "log_dir": str(root / "slurm-logs")}))
        uri, server = start_server(root)
        try:
            slurm_s, local_s, train_s = [], [], []
            for _ in range(1 if quick else repeats):
                seconds, _ = _study(uri, root, ["--backend", "slurm", "--backend-config", str(config)])
                slurm_s.append(seconds)
                seconds, study_id = _study(uri, root, ["--jobs", "2"])
                local_s.append(seconds)
                train_s += _train_seconds(uri, study_id)
        finally:
            stop_server(server)
    result = Result("2-seed digits study (16 steps), 2 cores", "--backend slurm (16 Slurm jobs)",
                    "--backend local --jobs 2", slurm_s, local_s)
    result.notes["median train step s"] = round(statistics.median(train_s), 2)
    result.notes["overhead per step s"] = round((result.ours_median - result.baseline_median) / STEPS, 2)
    return [result]
