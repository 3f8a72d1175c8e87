"""What the study needs from MLflow beyond a single step: worker processes nested under the
study run, and figures as PNG artifacts."""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import mlflow
from mlflow.tracking import fluent

from ofexp.tracking.runs import store_error


@contextmanager
def attached_to(run_id: str, uri: str) -> Iterator[None]:
    """Make another process's RUNNING run (the study) this process's active run, without owning it.

    A worker process of `ofexp study --jobs N` runs its steps inside this block, so that
    `stage_run` nests them under the study run exactly as in the parent process. On exit
    the run is detached, not ended: only the process that started the study ends it (MLflow
    would otherwise end it at interpreter exit through its atexit hook).
    """
    mlflow.set_tracking_uri(uri)
    try:
        run = mlflow.start_run(run_id=run_id)  # the run is RUNNING already; this only makes it active here
        mlflow.set_experiment(experiment_id=run.info.experiment_id)
    except Exception as exc:  # noqa: BLE001 -- any store failure becomes one line
        raise store_error(exc) from exc
    try:
        yield
    finally:
        # MLflow has no public "detach": drop the run from this thread's active-run stack.
        stack = fluent._active_run_stack.get()
        if stack and stack[-1].info.run_id == run_id:
            stack.pop()
        os.environ.pop("MLFLOW_RUN_ID", None)


def log_figure(figure, artifact_file: str) -> None:
    """Log a matplotlib figure as a PNG artifact of the active run."""
    mlflow.log_figure(figure, artifact_file)
