"""What a cluster job runs: one ofexp step's command. Standard library only.

submitit pickles this function into each Slurm job, and the job imports its module
before running it. Under `ofexp.pipeline` that import alone (torch, MLflow) took
5.4 s per job, paid again by the step's own `python -m ofexp`; here it is free.
"""
from __future__ import annotations

import os
import shlex
import subprocess
from typing import Mapping, Sequence


def run_step_command(argv: Sequence[str], env: Mapping[str, str]) -> None:
    """Inside the job: run one ofexp step's command; a failing command fails the job."""
    done = subprocess.run(list(argv), env={**os.environ, **env}, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{shlex.join(argv[:4])} ... exited with status {done.returncode}")
