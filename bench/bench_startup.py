"""Start-up of the `ofexp` command: what a process pays before it does anything (issue #24).

"before" is ofexp as it was before commands were imported lazily (commit BEFORE, extracted
with `git archive` into a temporary folder); "ours" is this working tree. Both are run as
fresh `python -m ofexp ...` processes, alternating, in this same run:

- `ofexp --version` and `ofexp --help` (target: ≤ 0.5 s), and `ofexp --version` beside
  `python -c pass`, the interpreter's own start-up;
- `ofexp <stage> --help` for the stages a cluster step runs (train, fuse, evaluate): the
  imports each Slurm or Kubernetes step pays before its work starts, i.e. the start-up part of
  the per-step overhead that bench_slurm.py measures for a whole study.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

from bench.common import Result, time_pair

ROOT = Path(__file__).resolve().parents[1]
BEFORE = "94eba3e229722e9e12b6c4c7b16f47da7d750049"  # main before the lazy command table
STEP_STAGES = ("train", "fuse", "evaluate")


def _extract_before(folder: Path) -> Path:
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", BEFORE, "ofexp"], check=True, capture_output=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def _command(tree: Path, argv: list[str]):
    env = {**os.environ, "PYTHONPATH": str(tree), "OMP_NUM_THREADS": "1"}

    def run() -> str:
        done = subprocess.run([sys.executable, "-m", "ofexp", *argv], env=env, cwd=tree, capture_output=True,
                              text=True, timeout=300)
        if done.returncode != 0:
            raise RuntimeError(f"ofexp {' '.join(argv)} ({tree}) failed: {done.stderr[-1000:]}")
        return done.stdout

    return run


def run(quick: bool, repeats: int) -> list[Result]:
    results = []
    cases = [(["--version"], "ours <= 0.5 s"), (["--help"], "ours <= 0.5 s")]
    cases += [([stage, "--help"], "") for stage in (STEP_STAGES[:1] if quick else STEP_STAGES)]
    with tempfile.TemporaryDirectory(prefix="ofexp-bench-startup-") as tmp:
        before = _extract_before(Path(tmp))
        for argv, target in cases:
            ours_s, base_s, ours_out, base_out = time_pair(_command(ROOT, argv), _command(before, argv),
                                                           repeats=1 if quick else repeats)
            result = Result(f"ofexp {' '.join(argv)} (fresh process)", "lazy command table",
                            f"eager registration ({BEFORE[:7]})", ours_s, base_s, target=target)
            if target:
                result.passed = result.ours_median <= 0.5
            result.notes["same output"] = ours_out == base_out
            results.append(result)
        # the interpreter's own start-up, the floor of any command: what --version adds to it
        ours_s, base_s, _, _ = time_pair(_command(ROOT, ["--version"]), _python_pass,
                                         repeats=1 if quick else repeats)
        results.append(Result("ofexp --version (fresh process)", "lazy command table", "python -c pass",
                              ours_s, base_s))
    return results


def _python_pass() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True, timeout=60)
