"""Per-epoch logging off the training loop: in order, nothing lost, failures surface."""
from __future__ import annotations

import threading
import time

import pytest
import torch
from mlflow import MlflowClient

from conftest import run_cli_in_process, using_tracking_uri
from ofexp.tracking.async_log import EpochLogger

EPOCH_METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")


class Recorder:
    """A metrics sink that records (step, metrics) and can be slowed down or made to fail."""

    def __init__(self, delay: float = 0.0, fail_at: int | None = None) -> None:
        self.calls: list[tuple[int, dict, str]] = []
        self.delay, self.fail_at = delay, fail_at
        self.threads: set[str] = set()

    def __call__(self, metrics: dict, step: int | None = None, run_id: str | None = None) -> None:
        self.threads.add(threading.current_thread().name)
        time.sleep(self.delay)
        if step == self.fail_at:
            raise ConnectionError(f"server gone at step {step}")
        self.calls.append((step, metrics, run_id))


def test_epochs_are_logged_in_order_off_the_calling_thread():
    sink = Recorder(delay=0.01)
    with EpochLogger("run-1", "checkpoint/last.pt", log_metrics=sink, max_pending=2) as log:
        for epoch in range(1, 7):
            log.submit(epoch, None, {"val_loss": 1.0 / epoch})
    assert [c[0] for c in sink.calls] == [1, 2, 3, 4, 5, 6]
    assert all(run_id == "run-1" for _, _, run_id in sink.calls)
    assert sink.calls[-1][1] == {"val_loss": 1.0 / 6}
    assert threading.current_thread().name not in sink.threads


def test_submit_returns_before_the_epoch_is_logged():
    sink = Recorder(delay=1.0)
    with EpochLogger("run-1", "checkpoint/last.pt", log_metrics=sink) as log:
        start = time.perf_counter()
        log.submit(1, None, {"val_loss": 1.0})
        assert time.perf_counter() - start < 0.5  # the training loop does not wait for the server
        assert sink.calls == []
    assert [c[0] for c in sink.calls] == [1]  # leaving the block flushed it


def test_max_pending_bounds_the_queue():
    sink = Recorder(delay=0.1)
    with EpochLogger("run-1", "checkpoint/last.pt", log_metrics=sink, max_pending=1) as log:
        start = time.perf_counter()
        for epoch in (1, 2, 3):
            log.submit(epoch, None, {"val_loss": 1.0})
        # with one slot, the third submit waits for the first two epochs to be logged
        assert time.perf_counter() - start >= 0.15
    assert [c[0] for c in sink.calls] == [1, 2, 3]


def test_a_logging_failure_surfaces_on_flush_and_stops_later_submits():
    sink = Recorder(fail_at=2)
    log = EpochLogger("run-1", "checkpoint/last.pt", log_metrics=sink)
    try:
        log.submit(1, None, {"val_loss": 1.0})
        log.submit(2, None, {"val_loss": 0.5})
        with pytest.raises(ConnectionError, match="step 2"):
            log.flush()
        with pytest.raises(ConnectionError, match="step 2"):
            log.submit(3, None, {"val_loss": 0.3})
    finally:
        log.close()
    assert [c[0] for c in sink.calls] == [1]


def test_a_training_error_wins_but_finished_epochs_are_still_logged():
    sink = Recorder(delay=0.05, fail_at=3)
    with pytest.raises(RuntimeError, match="diverged"):
        with EpochLogger("run-1", "checkpoint/last.pt", log_metrics=sink) as log:
            for epoch in (1, 2, 3):
                log.submit(epoch, None, {"val_loss": 1.0})
            raise RuntimeError("training diverged at epoch 4")
    assert [c[0] for c in sink.calls] == [1, 2]


def test_max_pending_must_be_positive():
    with pytest.raises(ValueError, match="max_pending"):
        EpochLogger("run-1", "checkpoint/last.pt", max_pending=0)


@pytest.mark.slow
def test_checkpoint_reaches_the_server_before_its_metrics(mlflow_server, tmp_path):
    """The worker's order is the resume contract: metrics of epoch e imply checkpoint e is there."""
    client = MlflowClient(mlflow_server.uri)
    experiment = client.get_experiment_by_name("async-log") or client.get_experiment(
        client.create_experiment("async-log"))
    run_id = client.create_run(experiment.experiment_id).info.run_id
    seen: list[tuple[int, int]] = []

    def check_then_log(metrics, step=None, run_id=None):
        local = client.download_artifacts(run_id, "checkpoint/last.pt", str(tmp_path / str(step)))
        seen.append((step, torch.load(local, weights_only=True)["epoch"]))
        client.log_metric(run_id, "val_loss", metrics["val_loss"], step=step)

    with using_tracking_uri(mlflow_server.uri):
        with EpochLogger(run_id, "checkpoint/last.pt", log_metrics=check_then_log) as log:
            for epoch in (1, 2, 3):
                log.submit(epoch, {"epoch": epoch, "w": torch.full((4,), float(epoch))}, {"val_loss": 1.0 / epoch})
    client.set_terminated(run_id)
    assert seen == [(1, 1), (2, 2), (3, 3)]
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3]


@pytest.mark.slow
def test_train_run_has_every_epoch_once_and_the_last_checkpoint(mlflow_server, tmp_path, capsys):
    args = ["train", "--model", "mlp", "--width", "0.25", "--epochs", "3", "--seed", "5", "--no-log-model",
            "--experiment-name", "async-log-train"]
    result = run_cli_in_process(args, mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr
    run_id = result.last_line
    client = MlflowClient(mlflow_server.uri)
    assert client.get_run(run_id).info.status == "FINISHED"
    for key in EPOCH_METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == [1, 2, 3], key  # every epoch, exactly once
    checkpoint = torch.load(client.download_artifacts(run_id, "checkpoint/last.pt", str(tmp_path / "c")),
                            weights_only=True)
    final = torch.load(client.download_artifacts(run_id, "weights/final.pt", str(tmp_path / "f")),
                       weights_only=True)
    assert checkpoint["epoch"] == 3
    assert all(torch.equal(checkpoint["model"][k], final[k]) for k in final)
    logged_val = {m.step: m.value for m in client.get_metric_history(run_id, "val_loss")}
    assert logged_val == {row["epoch"]: pytest.approx(row["val_loss"]) for row in checkpoint["history"]}
