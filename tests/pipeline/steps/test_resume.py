"""Crash-safe training: SIGKILL a real `ofexp train` mid-run, find it as stale, resume it, get the same weights."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import BIN, run_cli, run_cli_in_process

pytestmark = pytest.mark.slow

EXPERIMENT = "resume"
TRAIN = ["train", "--model", "mlp", "--width", "0.25", "--epochs", "4", "--seed", "3", "--no-log-model"]

# The real `ofexp train` entry point, except that the epoch after epoch 2 never ends: tiny
# epochs take milliseconds, so without this the test could not reliably kill the run mid-way.
# Only ofexp's own metric helper is wrapped; MLflow and the server are untouched.
HANG_AFTER_EPOCH_2 = """
import sys, time
import ofexp.tracking as tracking
_log_metrics = tracking.log_metrics
def log_metrics(metrics, step=None, **kwargs):
    _log_metrics(metrics, step=step, **kwargs)
    if step == 2:
        time.sleep(600)
tracking.log_metrics = log_metrics
from ofexp.cli import main
main(sys.argv[1:])
"""


def _env(uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def _wait_for_epoch(client: MlflowClient, epoch: int, proc: subprocess.Popen, timeout: float = 60) -> str:
    """Poll the server until the experiment's one run has logged `epoch`'s val_loss; its run ID."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the training process ended before it could be killed"
        experiment = client.get_experiment_by_name(EXPERIMENT)
        runs = client.search_runs([experiment.experiment_id]) if experiment else []
        for run in runs:
            if any(m.step >= epoch for m in client.get_metric_history(run.info.run_id, "val_loss")):
                return run.info.run_id
        time.sleep(0.2)
    raise AssertionError(f"no run logged epoch {epoch} within {timeout} s")


def _tensor_file(client: MlflowClient, run_id: str, path: str, tmp: Path) -> dict:
    local = client.download_artifacts(run_id, path, str(tmp))
    return torch.load(local, map_location="cpu", weights_only=True)


def _one_line_error(result) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    return lines[0]


def ofexp_here(args: list[str], uri: str, capsys):
    return run_cli_in_process(args, uri, capsys)


def _start(args: list[str], uri: str, cwd: Path, name: str, code: str | None = None) -> subprocess.Popen:
    command = [sys.executable, "-c", code, *args] if code else [str(BIN / "ofexp"), *args]
    with open(cwd / f"{name}.stderr", "wb") as stderr:
        return subprocess.Popen(command, cwd=cwd, env=_env(uri), stdout=subprocess.PIPE, stderr=stderr, text=True)


def test_sigkilled_train_run_resumes_bit_identically(mlflow_server, tmp_path, capsys):
    uri = mlflow_server.uri
    client = MlflowClient(uri)
    # the run to kill and an uninterrupted one of the same command, side by side
    doomed = _start([*TRAIN, "--experiment-name", EXPERIMENT], uri, tmp_path, "doomed", HANG_AFTER_EPOCH_2)
    whole = _start([*TRAIN, "--experiment-name", f"{EXPERIMENT}-reference"], uri, tmp_path, "whole")
    try:
        run_id = _wait_for_epoch(client, 2, doomed)
    finally:
        doomed.send_signal(signal.SIGKILL)
        doomed.communicate(timeout=30)
    reference = whole.communicate(timeout=300)[0].strip().splitlines()[-1]
    assert whole.returncode == 0, (tmp_path / "whole.stderr").read_text()[-3000:]
    # the checkpoint is logged before each epoch's metrics, so epoch 2's is on the server
    assert _tensor_file(client, run_id, "checkpoint/last.pt", tmp_path / "ckpt")["epoch"] == 2
    assert client.get_run(run_id).info.status == "RUNNING"

    listed = ofexp_here(["runs", "--stale", "--older-than", "0", "--experiment-name", EXPERIMENT], uri, capsys)
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if run_id in line)
    assert f"ofexp train --resume {run_id}" in row and " 2 " in row

    # a new `ofexp train` with the same settings offers the killed run for resume (and still trains)
    again = ofexp_here([*TRAIN, "--experiment-name", EXPERIMENT], uri, capsys)
    assert again.returncode == 0, again.stderr
    assert f"interrupted at epoch 2; continue it with `ofexp train --resume {run_id}`" in again.stderr

    resumed = run_cli(["train", "--resume", run_id], tracking_uri=uri, cwd=tmp_path, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert resumed.last_line == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert {"prediction/accuracy", "best_epoch"} <= set(run.data.metrics)
    for name in ("final", "best"):
        got = _tensor_file(client, run_id, f"weights/{name}.pt", tmp_path / f"{name}-resumed")
        want = _tensor_file(client, reference, f"weights/{name}.pt", tmp_path / f"{name}-reference")
        assert got.keys() == want.keys()
        assert all(torch.equal(got[k], want[k]) for k in want), name
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):  # no gap, no duplicate
        assert [m.step for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)] == [1, 2, 3, 4]
    assert run.data.metrics["val_loss"] == client.get_run(reference).data.metrics["val_loss"]

    # one-line refusals
    def refused(*args: str) -> str:
        return _one_line_error(ofexp_here(["train", "--resume", *args], uri, capsys))

    assert "does not exist" in refused("0" * 32)
    assert "already FINISHED" in refused(run_id)
    clash = refused(run_id, "--lr", "0.5", "--seed", "3")
    assert "--lr 0.5" in clash and "--seed" not in clash
    other = client.create_run(run.info.experiment_id, tags={"ofexp.stage": "evaluate"}).info.run_id
    client.set_terminated(other, "KILLED")
    assert "not a train run" in refused(other)
