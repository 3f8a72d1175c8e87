"""MLflow's process-wide tracking state, pointed at another store for one block and put back after.

`mlflow.set_tracking_uri` also exports MLFLOW_TRACKING_URI and pins the URI for the rest of
the process, and a step run inside the block selects an experiment (an ID of *that* store).
Whoever runs ofexp against a store for a while inside a longer process (the tests, the
benchmarks) needs all three back as they were, or every later run lands in the wrong store.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import mlflow
import mlflow.tracking._tracking_service.utils as tracking_utils
from mlflow.tracking import fluent

# what set_tracking_uri and set_experiment export into the environment
_EXPORTED = ("MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_ID")


@contextmanager
def using_tracking_uri(uri: str) -> Iterator[None]:
    """Point this process's MLflow at `uri`, then restore exactly what was there: the URI (also
    when none was set), the active experiment and the exported environment variables."""
    saved_env = {key: os.environ.get(key) for key in _EXPORTED}
    saved_uri = tracking_utils._tracking_uri  # MLflow has no public getter that tells "none set" apart
    saved_experiment = fluent._active_experiment_id
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_uri)
        fluent._active_experiment_id = saved_experiment
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
