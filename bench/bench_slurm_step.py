"""What one study step costs on Slurm beyond its work (issue #24): the per-step overhead.

One step, a digits train (MLP width 0.25, 1 epoch, no MLflow model), is submitted as a Slurm
job through the engine's own path (`slurm_jobs.submit`: submitit's sbatch script, which runs
`ofexp.cluster_job.run_step_command`, which runs `python -m ofexp train ...`), against one real
`mlflow server` (started here). Its wall time runs from the submission to the job's result
(submitit's result file, polled every 0.05 s). Each side is the same job with another ofexp on
PYTHONPATH, alternating in this run:

- ours: this working tree;
- main before the step import cuts (BEFORE_STEP: lazy command table already, but the
  `ofexp.pipeline` package imported every step and the study, so a step process imported
  matplotlib and scipy.stats);
- the issue's before (BEFORE_EAGER, every command registered eagerly: 3.5 s per step then).

The step's own work is `run_train` of the same config called in this process (imports already
done), timed in the same run: a job's overhead is its wall time minus that. The same command
is also timed as a plain subprocess of each tree (no sbatch): its start-up without Slurm's share,
which on a loaded machine is the noisier part. Needs a Slurm
cluster this machine submits to (.ci/install-slurm.sh makes a one-node one).
"""
from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.bench_report import start_server, stop_server
from bench.common import Result, one_thread, timed

ROOT = Path(__file__).resolve().parents[1]
BEFORE_STEP = "2f537e4"  # main before the step import cuts: its step processes import matplotlib, scipy.stats
BEFORE_EAGER = "94eba3e229722e9e12b6c4c7b16f47da7d750049"  # before the lazy command table (bench_startup's)
STEP = ["train", "--model", "mlp", "--width", "0.25", "--epochs", "1", "--no-log-model", "--seed", "1",
        "--experiment-name", "bench-slurm-step"]


def _tree(commit: str, folder: Path) -> Path:
    """ofexp as it was at `commit`, extracted with `git archive`."""
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", commit, "ofexp"], check=True, capture_output=True)
    folder.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _step_env(tree: Path, uri: str) -> dict[str, str]:
    """What a step process of `tree` gets beside the submitting environment (as sbatch exports it).

    PYTHONSAFEPATH: `python -m` would put its working folder (this tree, where the job starts)
    first on sys.path, and every side would import this tree's ofexp whatever PYTHONPATH says.
    """
    return {"PYTHONPATH": str(tree), "PYTHONSAFEPATH": "1", "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}


def _process_step(tree: Path, uri: str):
    """The step as a plain subprocess; each call returns the CPU seconds it used (user + system),
    which the other processes on a loaded machine disturb far less than its wall time."""
    env = {**os.environ, **_step_env(tree, uri)}

    def run() -> float:
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        subprocess.run([sys.executable, "-m", "ofexp", *STEP], env=env, check=True, capture_output=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

    return run


def _slurm_step(tree: Path, uri: str, root: Path):
    from ofexp.pipeline.engines import slurm_jobs
    from ofexp.pipeline.engines.slurm_jobs import SlurmConfig

    config = SlurmConfig(time=20, cpus_per_task=1, log_dir=str(root / "slurm-logs"))
    env = _step_env(tree, uri)

    def run() -> str:
        job = slurm_jobs.submit(config, "bench-step", [sys.executable, "-m", "ofexp", *STEP], env)
        deadline = time.monotonic() + 600
        while not job.paths.result_pickle.exists():
            if time.monotonic() > deadline:
                job.cancel(check=False)
                raise RuntimeError(f"Slurm job {job.job_id} did not finish in 600 s")
            time.sleep(0.05)
        if slurm_jobs.job_outcome(job) != slurm_jobs.COMPLETED:
            raise RuntimeError(f"Slurm job {job.job_id} failed (log: {slurm_jobs.job_log(job)})")
        return job.job_id

    return run


def _in_process_step(uri: str):
    import mlflow

    from ofexp.pipeline.steps.train import TrainConfig, run_train
    from ofexp.training import make_recipe

    cfg = TrainConfig(model="mlp", width=0.25, recipe=make_recipe("default", epochs=1), seed=1, log_model=False,
                      progress=False)
    mlflow.set_tracking_uri(uri)
    mlflow.set_experiment("bench-slurm-step")

    def run() -> str:
        with one_thread():
            return run_train(cfg)

    return run


def run(quick: bool, repeats: int) -> list[Result]:
    if shutil.which("sbatch") is None:
        print("bench slurm_step: no sbatch on PATH; run .ci/install-slurm.sh (skipped)", file=sys.stderr)
        return []
    repeats = 1 if quick else repeats
    with tempfile.TemporaryDirectory(prefix="ofexp-bench-slurm-step-") as tmp:
        root = Path(tmp)
        trees = {"ours": ROOT, BEFORE_STEP: _tree(BEFORE_STEP, root / "step"),
                 BEFORE_EAGER[:7]: _tree(BEFORE_EAGER, root / "eager")}
        uri, server = start_server(root)
        saved = os.environ.get("MLFLOW_TRACKING_URI")
        try:
            sides = {**{name: _slurm_step(tree, uri, root) for name, tree in trees.items()},
                     **{f"process {name}": _process_step(tree, uri) for name, tree in trees.items()},
                     "work": _in_process_step(uri)}
            for side in sides.values():  # warm-up: imports, Slurm's first job, the digits cache
                side()
            walls: dict[str, list[float]] = {name: [] for name in sides}
            cpu: dict[str, list[float]] = {name: [] for name in sides if name.startswith("process ")}
            for _ in range(repeats):
                for name, side in sides.items():
                    wall, value = timed(side)
                    walls[name].append(wall)
                    if name in cpu:
                        cpu[name].append(value)
        finally:
            stop_server(server)
            if saved is None:
                os.environ.pop("MLFLOW_TRACKING_URI", None)
            else:
                os.environ["MLFLOW_TRACKING_URI"] = saved
    work_s = statistics.median(walls["work"])
    results = []
    for before in (BEFORE_STEP, BEFORE_EAGER[:7]):
        result = Result("Slurm step: digits train (MLP 0.25, 1 epoch), sbatch to result", "this tree",
                        f"ofexp at {before}", walls["ours"], walls[before])
        result.notes["step work in-process s"] = round(work_s, 2)
        result.notes["overhead per step s (ours)"] = round(result.ours_median - work_s, 2)
        result.notes[f"overhead per step s ({before})"] = round(result.baseline_median - work_s, 2)
        results.append(result)
    for before in (BEFORE_STEP, BEFORE_EAGER[:7]):
        result = Result("Step process: the same command as a plain subprocess (no Slurm)", "this tree",
                        f"ofexp at {before}", walls["process ours"], walls[f"process {before}"])
        result.notes["start-up s (ours)"] = round(result.ours_median - work_s, 2)
        result.notes[f"start-up s ({before})"] = round(result.baseline_median - work_s, 2)
        results.append(result)
        results.append(Result("Step process: its CPU seconds (user + system), not wall", "this tree",
                              f"ofexp at {before}", cpu["process ours"], cpu[f"process {before}"]))
    return results
