"""The tracking server stops in the middle of training and comes back on the same store.

Two real `ofexp train` processes log to a server of their own (not the session one):
- A, with ofexp's default retries (MLflow's backoff, ~2 min), rides the restart out and
  ends FINISHED with every epoch's metrics exactly once;
- B, with retries cut to ~0 s, gives up while the server is down: a one-line error that
  names the server and the run, which stays RUNNING there (nothing can mark it while the
  server is away), is listed by `ofexp runs --stale` and resumes to FINISHED without gaps.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import BIN, free_port, run_cli_in_process, start_mlflow_server, stop_mlflow_server

pytestmark = pytest.mark.slow

EPOCHS = 10
METRICS = ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr")
TRAIN = ["train", "--model", "mlp", "--width", "0.25", "--epochs", str(EPOCHS), "--seed", "5", "--no-log-model"]

# The real entry point; each epoch also sleeps EPOCH_SLEEP seconds, so that training is
# still going when the server stops (tiny epochs take milliseconds). MLflow is untouched.
SLOW_EPOCHS = """
import os, sys, time
import ofexp.pipeline.steps.train as train
_fit = train.fit
def fit(*args, on_epoch_end, **kwargs):
    def slow(epoch, metrics, checkpoint):
        on_epoch_end(epoch, metrics, checkpoint)
        time.sleep(float(os.environ["EPOCH_SLEEP"]))
    return _fit(*args, on_epoch_end=slow, **kwargs)
train.fit = fit
from ofexp.cli import main
main(sys.argv[1:])
"""


def _start(uri: str, experiment: str, cwd: Path, **env: str) -> subprocess.Popen:
    full_env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
                "OMP_NUM_THREADS": "1", "EPOCH_SLEEP": "1", **env}
    full_env.pop("MLFLOW_RUN_ID", None)
    return subprocess.Popen([sys.executable, "-c", SLOW_EPOCHS, *TRAIN, "--experiment-name", experiment],
                            cwd=cwd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _run_at_epoch(client: MlflowClient, experiment: str, epoch: int, proc: subprocess.Popen) -> tuple[str, int]:
    """Wait until the experiment's run has logged `epoch`; (its ID, the last epoch logged)."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        found = client.get_experiment_by_name(experiment)
        for run in client.search_runs([found.experiment_id]) if found else []:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")]
            if steps and max(steps) >= epoch:
                return run.info.run_id, max(steps)
        time.sleep(0.2)
    raise AssertionError(f"no run of {experiment} logged epoch {epoch} in time")


def _assert_complete(client: MlflowClient, run_id: str) -> None:
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert "prediction/accuracy" in run.data.metrics
    for key in METRICS:
        steps = sorted(m.step for m in client.get_metric_history(run_id, key))
        assert steps == list(range(1, EPOCHS + 1)), (key, steps)  # no gap, no duplicate


def test_training_survives_a_server_restart_or_says_which_run_it_left(tmp_path, capsys):
    port = free_port()
    server = start_mlflow_server(tmp_path / "store", port=port)
    uri = server.uri
    client = MlflowClient(uri)
    try:
        rides = _start(uri, "outage-rides", tmp_path)
        gives_up = _start(uri, "outage-gives-up", tmp_path,
                          MLFLOW_HTTP_REQUEST_MAX_RETRIES="1", MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR="0")
        rides_id, before = _run_at_epoch(client, "outage-rides", 2, rides)
        gives_up_id, _ = _run_at_epoch(client, "outage-gives-up", 2, gives_up)
    except BaseException:
        stop_mlflow_server(server)
        raise
    stop_mlflow_server(server)
    assert rides.poll() is None and before < EPOCHS  # the outage hits A mid-training

    # B gives up fast, with one line that names the server, the run and the way back
    _, err = gives_up.communicate(timeout=120)
    assert gives_up.returncode != 0
    assert "Traceback" not in err
    (line,) = [l for l in err.splitlines() if l.startswith("error:")]
    assert uri in line and gives_up_id in line and f"ofexp train --resume {gives_up_id}" in line

    server = start_mlflow_server(tmp_path / "store", port=port)  # same store, same port
    try:
        out, err = rides.communicate(timeout=400)
        assert rides.returncode == 0, err[-3000:]
        assert out.strip().splitlines()[-1] == rides_id
        _assert_complete(client, rides_id)

        assert client.get_run(gives_up_id).info.status == "RUNNING"
        listed = run_cli_in_process(["runs", "--stale", "--older-than", "0", "--experiment-name", "outage-gives-up"],
                                    uri, capsys)
        assert f"ofexp train --resume {gives_up_id}" in listed.stdout
        resumed = run_cli_in_process(["train", "--resume", gives_up_id], uri, capsys)
        assert resumed.returncode == 0, resumed.stderr[-3000:]
        _assert_complete(client, gives_up_id)
    finally:
        stop_mlflow_server(server)
