"""SIGTERM (kill, timeout, schedulers, docker stop) ends ofexp's runs KILLED, as Ctrl-C does.

Real `ofexp` processes against a local SQLite store, signalled while a step runs.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from conftest import BIN

pytestmark = pytest.mark.slow

COMMON = ["--width", "0.125", "--no-log-model", "--device", "cpu", "--experiment-name", "signals"]
TINY = ["--model", "mlp", *COMMON]


def _start(args: list[str], tmp_path: Path) -> tuple[subprocess.Popen, str]:
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.Popen([str(BIN / "ofexp"), *args], cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    return proc, uri


def _runs(client: MlflowClient) -> list:
    found = client.get_experiment_by_name("signals")
    return client.search_runs([found.experiment_id], max_results=200) if found else []


def _wait_until(proc: subprocess.Popen, ready, what: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, f"ofexp ended before {what}: {proc.stderr.read()[-2000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)


def _terminate(proc: subprocess.Popen) -> tuple[int, str]:
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=120)
    finally:
        proc.kill()
    return proc.returncode, err


def _check_one_line(code: int, err: str) -> None:
    assert code == 128 + signal.SIGTERM, err[-2000:]
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == "error: stopped by SIGTERM; the runs it had open are marked KILLED"


def test_sigterm_during_training_marks_the_run_killed_and_it_resumes(tmp_path):
    # a VGG11 epoch on digits takes seconds: long enough to be stopped after its first epoch
    proc, uri = _start(["train", "--model", "vgg11", *COMMON, "--epochs", "4"], tmp_path)
    client = MlflowClient(uri)
    _wait_until(proc, lambda: any("val_loss" in r.data.metrics for r in _runs(client)), "an epoch was logged")
    code, err = _terminate(proc)
    _check_one_line(code, err)
    (run,) = _runs(client)
    assert run.info.status == "KILLED"
    assert run.data.tags["ofexp.failure_reason"] == "stopped by SIGTERM"
    # the killed run is picked up where it stopped, as after Ctrl-C
    resumed = subprocess.run([str(BIN / "ofexp"), "train", "--resume", run.info.run_id],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300,
                             env={**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"})
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    finished = client.get_run(run.info.run_id)
    assert finished.info.status == "FINISHED"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "val_loss")][-1] == 4


def test_sigterm_during_a_study_leaves_no_run_running_and_the_rerun_reuses_finished_steps(tmp_path):
    study = ["study", *TINY, "--epochs", "1", "--seeds", "1", "--measures", "prediction", "--preset", "quick"]
    proc, uri = _start(study, tmp_path)
    client = MlflowClient(uri)

    def fusing() -> bool:  # both parents trained: stop the study inside its fuse steps
        return any(r.data.tags.get("ofexp.stage") == "fuse" for r in _runs(client))

    _wait_until(proc, fusing, "the study reached fusion")
    code, err = _terminate(proc)
    _check_one_line(code, err)
    runs = _runs(client)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    by_stage = {}
    for r in runs:
        by_stage.setdefault(r.data.tags.get("ofexp.stage"), []).append(r)
    assert [r.info.status for r in by_stage["study"]] == ["KILLED"]
    finished_train = {r.info.run_id for r in by_stage["train"] if r.info.status == "FINISHED"}
    assert len(finished_train) == 2

    rerun = subprocess.run([str(BIN / "ofexp"), *study], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                           env={**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"})
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    second = client.get_run(rerun.stdout.strip().splitlines()[-1])
    assert second.info.status == "FINISHED" and second.data.metrics["steps/reused"] >= 2
    assert {r.info.run_id for r in _runs(client) if r.data.tags.get("ofexp.stage") == "train"} == finished_train


def test_sigterm_during_a_fuse_marks_it_killed_and_leaves_the_parents_as_they_were(tmp_path):
    # VGG11 parents: a geometric fusion with its interpolation curves takes ~10 s on digits,
    # a window wide enough to be signalled in
    from dataclasses import replace

    from conftest import using_tracking_uri
    from ofexp.data import DataConfig, load_dataset
    from ofexp.pipeline.steps.train import TrainConfig, run_train
    from ofexp.training import make_recipe

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with using_tracking_uri(uri):
        import mlflow

        mlflow.set_experiment("signals")
        splits = load_dataset(DataConfig())
        base = TrainConfig(model="vgg11", width=0.25, recipe=make_recipe(epochs=1), log_model=False, progress=False,
                           device="cpu")
        parents = [run_train(replace(base, seed=s), splits) for s in (1, 2)]
    client = MlflowClient(uri)
    before = {r.info.run_id: (r.info.status, r.data.tags.get("ofexp.sha256.weights/final.pt")) for r in _runs(client)}
    fuse = ["fuse", "--parents", ",".join(parents), "--method", "geometric", "--device", "cpu",
            "--experiment-name", "signals"]
    proc, _ = _start(fuse, tmp_path)
    _wait_until(proc, lambda: any(r.data.tags.get("ofexp.stage") == "fuse" for r in _runs(client)), "the fuse run began")
    code, err = _terminate(proc)
    _check_one_line(code, err)
    (killed,) = [r for r in _runs(client) if r.data.tags.get("ofexp.stage") == "fuse"]
    assert killed.info.status == "KILLED" and killed.data.tags["ofexp.failure_reason"] == "stopped by SIGTERM"
    assert {r.info.run_id: (r.info.status, r.data.tags.get("ofexp.sha256.weights/final.pt"))
            for r in _runs(client) if r.info.run_id in before} == before
    # the same command again fuses them: the killed run holds nothing that stands in its way
    again = subprocess.run([str(BIN / "ofexp"), *fuse], cwd=tmp_path, capture_output=True, text=True, timeout=300,
                           env={**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0, again.stderr[-2000:]
    fused = again.stdout.strip().splitlines()[-1].split()[-1]
    assert client.get_run(fused).info.status == "FINISHED" and fused != killed.info.run_id
