"""A FINISHED run is never changed, and only one process may resume a run.

Against a local SQLite store: extending a finished train run makes a new run with
lineage; two resumes of the same killed run, started 0.3 s apart, train it once.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from mlflow import MlflowClient

from conftest import BIN, run_artifact_bytes, run_cli_in_process
from ofexp.errors import ConfigError
from ofexp.tracking import cache, runs
from ofexp.tracking.names import CLAIM_PARAM

pytestmark = pytest.mark.slow

TINY = ["--model", "mlp", "--width", "0.125", "--no-log-model", "--device", "cpu", "--experiment-name", "owners"]


def _env(uri: str) -> dict:
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    return env


def test_extending_a_finished_run_makes_a_new_run_and_leaves_the_old_one_as_it_was(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    first = run_cli_in_process(["train", *TINY, "--epochs", "2", "--seed", "4"], uri, capsys)
    assert first.returncode == 0, first.stderr
    old_id = first.last_line
    before = client.get_run(old_id)
    final_before = run_artifact_bytes(client, old_id, "weights/final.pt")

    extended = run_cli_in_process(["train", "--resume", old_id, "--epochs", "3"], uri, capsys)
    assert extended.returncode == 0, extended.stderr
    new_id = extended.last_line
    assert new_id != old_id
    new = client.get_run(new_id)
    assert new.info.status == "FINISHED"
    assert new.data.tags["ofexp.extends"] == old_id and new.data.params["extends"] == old_id
    assert new.data.params["epochs"] == "3"
    assert [m.step for m in client.get_metric_history(new_id, "val_loss")] == [1, 2, 3]
    # θ₀ of the measures is the original initialisation
    assert run_artifact_bytes(client, new_id, "weights/initial.pt") == run_artifact_bytes(
        client, old_id, "weights/initial.pt")

    after = client.get_run(old_id)  # the finished run is exactly as it was
    assert after.info.status == "FINISHED" and after.data.params == before.data.params
    assert after.data.tags.get("ofexp.epochs") == before.data.tags.get("ofexp.epochs")
    assert [m.step for m in client.get_metric_history(old_id, "val_loss")] == [1, 2]
    assert run_artifact_bytes(client, old_id, "weights/final.pt") == final_before
    # and the study cache never takes the extension for a fresh 3-epoch run
    import mlflow

    mlflow.set_tracking_uri(uri)
    try:
        fresh_3 = {**before.data.params, "epochs": "3"}
        assert cache.find_finished_run(before.info.experiment_id, "train", fresh_3) is None
        assert cache.find_finished_run(before.info.experiment_id, "train", before.data.params).info.run_id == old_id
    finally:
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))


def test_a_claim_on_one_state_of_a_run_is_granted_once(tmp_path):
    import mlflow

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    run_id = client.create_run(client.create_experiment("claims"), tags={"ofexp.stage": "train"}).info.run_id
    client.set_terminated(run_id, "KILLED")
    seen = client.get_run(run_id)  # what two resuming processes both read
    mlflow.set_tracking_uri(uri)
    try:
        runs.claim_run(seen)
        with pytest.raises(ConfigError, match=f"run {run_id} is being resumed by process {os.getpid()} on "):
            runs.claim_run(seen)
        time.sleep(0.01)
        client.set_terminated(run_id, "KILLED")  # that attempt ended: the run may be resumed again
        runs.claim_run(client.get_run(run_id))
    finally:
        mlflow.set_tracking_uri(os.environ.get("MLFLOW_TRACKING_URI", ""))
    claims = [k for k in client.get_run(run_id).data.params if k.startswith(CLAIM_PARAM)]
    assert len(claims) == 2


def test_two_resumes_started_together_train_the_run_once(tmp_path):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    # a VGG11 epoch on digits takes seconds: stopped with SIGTERM after its first epoch
    train = subprocess.Popen([str(BIN / "ofexp"), "train", "--model", "vgg11", *TINY[2:], "--epochs", "3"], cwd=tmp_path,
                             env=_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while True:
        experiment = client.get_experiment_by_name("owners")
        found = client.search_runs([experiment.experiment_id]) if experiment else []
        if found and "val_loss" in found[0].data.metrics:
            break
        assert train.poll() is None and time.monotonic() < deadline, "no epoch logged in time"
        time.sleep(0.2)
    train.send_signal(signal.SIGTERM)
    train.communicate(timeout=120)
    run_id = found[0].info.run_id
    assert client.get_run(run_id).info.status == "KILLED"

    resumes = []
    for _ in range(2):
        resumes.append(subprocess.Popen([str(BIN / "ofexp"), "train", "--resume", run_id], cwd=tmp_path,
                                        env=_env(uri), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(0.3)
    results = [p.communicate(timeout=300) + (p.returncode,) for p in resumes]
    codes = sorted(code for _, _, code in results)
    assert codes[0] == 0 and codes[1] != 0, results
    (_, refused_err, _), = [r for r in results if r[2] != 0]
    line = refused_err.strip().splitlines()[-1]
    assert line.startswith("error: run ") and ("being resumed by process" in line or "still being trained" in line)
    assert "Traceback" not in refused_err
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.get_metric_history(run_id, "prediction/accuracy")) == 1
    assert [m.step for m in client.get_metric_history(run_id, "val_loss")] == [1, 2, 3]
