"""Runs that log the same new dataset at the same moment (the seeds of a `--jobs` study) each
record it: MLflow's store looks a dataset up and then inserts it, so one of two simultaneous
inserts is refused, and ofexp logs the input again (`log_dataset_input`). CI met this race
once in the local study the Slurm test compares against."""
from __future__ import annotations

import threading
import uuid

import mlflow
import pytest
import torch
from mlflow import MlflowClient

from conftest import using_tracking_uri
from ofexp.tracking.artifacts import log_dataset_input

pytestmark = pytest.mark.slow

RUNS_AT_ONCE = 6
# Before the retry, 6 rounds of 6 runs met the race twice, in each of 4 tries (2 per store)
ROUNDS = 6


def _log_at_once(experiment_id: str, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[list[str], list[str]]:
    """RUNS_AT_ONCE runs, one per thread, log the same dataset together; (their IDs, the errors)."""
    run_ids, errors = [], []
    barrier = threading.Barrier(RUNS_AT_ONCE)

    def one_run() -> None:
        try:
            with mlflow.start_run(experiment_id=experiment_id) as run:
                run_ids.append(run.info.run_id)
                barrier.wait()
                log_dataset_input("digits-training", "digits", inputs, targets, "training")
        except Exception as exc:  # noqa: BLE001 - every failure is the result
            errors.append(" ".join(str(exc).split())[:200])

    threads = [threading.Thread(target=one_run) for _ in range(RUNS_AT_ONCE)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return run_ids, errors


@pytest.mark.parametrize("store", ["server", "sqlite"])
def test_runs_logging_the_same_new_dataset_at_once_each_record_it(store, mlflow_server, tmp_path):
    uri = mlflow_server.uri if store == "server" else f"sqlite:///{tmp_path}/mlflow.db"
    inputs, targets = torch.randn(50, 8), torch.randint(0, 10, (50,))
    with using_tracking_uri(uri):
        client = MlflowClient(uri)
        for _ in range(ROUNDS):
            experiment_id = client.create_experiment(f"datasets-{uuid.uuid4().hex}")
            run_ids, errors = _log_at_once(experiment_id, inputs, targets)
            assert errors == []
            recorded = {(i.dataset.name, i.dataset.digest) for run_id in run_ids
                        for i in client.get_run(run_id).inputs.dataset_inputs}
            assert len(run_ids) == RUNS_AT_ONCE and len(recorded) == 1 and next(iter(recorded))[0] == "digits-training"
            assert all(client.get_run(r).inputs.dataset_inputs for r in run_ids)
