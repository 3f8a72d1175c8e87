"""The README's first command after setup: `ofexp study --seeds 2` in a fresh folder.

Issue #16's target: the quickstart finishes in at most 3 minutes on 2 cores once the
environment is set up. Each repeat is a real `ofexp` process in a new empty folder (a
new `mlflow.db`, no reuse), timed from start to exit, beside `ofexp --version` in the
same folder: the start-up every command pays (Python, torch, MLflow imports).
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import Result

TARGET_S = 180.0
OFEXP = Path(sys.executable).parent / "ofexp"


def _timed_command(args: list[str], folder: str) -> float:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}  # the default ./mlflow.db
    start = time.perf_counter()
    done = subprocess.run([str(OFEXP), *args], cwd=folder, env=env, capture_output=True, text=True, timeout=1800)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"ofexp {' '.join(args)} failed: {done.stderr[-2000:]}")
    return elapsed


def run(quick: bool, repeats: int) -> list[Result]:
    study_s, startup_s = [], []
    for _ in range(1 if quick else repeats):
        with tempfile.TemporaryDirectory(prefix="ofexp-quickstart-") as folder:
            startup_s.append(_timed_command(["--version"], folder))
            study_s.append(_timed_command(["study", "--seeds", "2"], folder))
    result = Result("README quickstart, digits, 2 seeds (fresh folder)", "ofexp study --seeds 2",
                    "ofexp --version (start-up)", study_s, startup_s, target=f"ours <= {TARGET_S:.0f} s")
    result.passed = result.ours_median <= TARGET_S
    result.notes["start-up share"] = round(result.baseline_median / result.ours_median, 3)
    return [result]
