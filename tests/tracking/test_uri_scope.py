"""using_tracking_uri: a block against another store leaves the process's MLflow state as it found it."""
from __future__ import annotations

import os

import mlflow
import pytest
from mlflow.tracking import fluent

from ofexp.tracking.uri_scope import using_tracking_uri


def _state() -> tuple:
    return (mlflow.get_tracking_uri(), fluent._active_experiment_id,
            os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_EXPERIMENT_ID"))


def test_a_block_that_selects_an_experiment_leaves_uri_experiment_and_environment_as_they_were(tmp_path):
    before = _state()
    inner = f"sqlite:///{tmp_path}/inner.db"
    with using_tracking_uri(inner):
        mlflow.set_experiment("inside")
        assert mlflow.get_tracking_uri() == inner and os.environ["MLFLOW_TRACKING_URI"] == inner
        assert fluent._active_experiment_id is not None
    assert _state() == before


def test_the_state_comes_back_when_the_block_raises(tmp_path):
    before = _state()
    with pytest.raises(RuntimeError, match="inside"):
        with using_tracking_uri(f"sqlite:///{tmp_path}/inner.db"):
            mlflow.set_experiment("inside")
            raise RuntimeError("inside")
    assert _state() == before


def test_nested_blocks_each_restore_their_own_outer_store(tmp_path):
    outer, inner = f"sqlite:///{tmp_path}/outer.db", f"sqlite:///{tmp_path}/inner.db"
    with using_tracking_uri(outer):
        outer_experiment = mlflow.set_experiment("outer").experiment_id
        with using_tracking_uri(inner):
            mlflow.create_experiment("first")  # so that the inner experiment's ID differs from the outer's
            assert mlflow.set_experiment("inner").experiment_id != outer_experiment
        assert mlflow.get_tracking_uri() == outer and fluent._active_experiment_id == outer_experiment
        assert os.environ["MLFLOW_TRACKING_URI"] == outer
