"""`ofexp runs [--stale]` and the stale-run notice, on real runs of the session's MLflow server."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
from mlflow import MlflowClient

from conftest import run_cli_in_process, using_tracking_uri
from ofexp.pipeline.steps.train import TrainConfig, stale_notice

pytestmark = pytest.mark.slow

EXPERIMENT = "runs-command"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


@pytest.fixture(scope="module")
def runs(mlflow_server) -> dict[str, str]:
    """RUNNING and finished runs made with the MLflow client, as `ofexp train` tags them."""
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment(EXPERIMENT)
    # str(): on/off params as True/False, the form of runs logged before they became true/false; a
    # killed run of that age is still offered for resume
    params = {k: str(v) for k, v in TrainConfig(seed=7).params().items()}
    here = socket.gethostname()

    def make(name: str, stage: str = "train", epochs: int = 0, **tags) -> str:
        run = client.create_run(experiment_id, run_name=name, tags={"ofexp.stage": stage, **tags})
        for key, value in params.items():
            client.log_param(run.info.run_id, key, value)
        for epoch in range(1, epochs + 1):
            client.log_metric(run.info.run_id, "val_loss", 1.0 / epoch, step=epoch)
        return run.info.run_id

    made = {
        "killed": make("killed", epochs=3, **{"ofexp.host": here, "ofexp.pid": str(_dead_pid())}),
        "live": make("live", epochs=1, **{"ofexp.host": here, "ofexp.pid": str(os.getpid())}),
        "elsewhere": make("elsewhere", epochs=2, **{"ofexp.host": "another-host", "ofexp.pid": "1"}),
        "finished": make("finished", epochs=3),
        "evaluate": make("evaluate", stage="evaluate"),
    }
    client.set_terminated(made["finished"], "FINISHED")
    return made


def ofexp_here(args: list[str], uri: str, capsys) -> tuple[int, str, str]:
    result = run_cli_in_process(args, uri, capsys)
    return result.returncode, result.stdout, result.stderr


def _rows(stdout: str) -> dict[str, str]:
    lines = stdout.strip().splitlines()
    assert lines and lines[0].split()[:4] == ["run_id", "name", "stage", "last_epoch"], stdout
    return {line.split()[0]: line for line in lines[1:]}


def test_stale_lists_killed_running_runs_of_every_stage_with_what_picks_them_up(runs, mlflow_server, capsys):
    code, out, err = ofexp_here(["runs", "--stale", "--older-than", "0", "--experiment-name", EXPERIMENT],
                                mlflow_server.uri, capsys)
    assert code == 0, err
    rows = _rows(out)
    # the live process is not stale; finished runs are never listed
    assert set(rows) == {runs["killed"], runs["elsewhere"], runs["evaluate"]}
    killed = rows[runs["killed"]].split()
    assert killed[1:4] == ["killed", "train", "3"] and "gone" in killed
    assert rows[runs["killed"]].endswith(f"ofexp train --resume {runs['killed']}")
    assert rows[runs["evaluate"]].endswith("rerun the evaluate step")
    code, out, err = ofexp_here(["runs", "--stale", "--older-than", "0", "--stage", "train", "--experiment-name",
                                 EXPERIMENT], mlflow_server.uri, capsys)
    assert code == 0 and set(_rows(out)) == {runs["killed"], runs["elsewhere"]}


def test_threshold_and_plain_listing(runs, mlflow_server, capsys):
    code, out, err = ofexp_here(["runs", "--stale", "--experiment-name", EXPERIMENT], mlflow_server.uri, capsys)
    assert (code, out) == (0, "") and "no stale RUNNING runs" in err  # all were active < 600 s ago
    code, out, err = ofexp_here(["runs", "--experiment-name", EXPERIMENT], mlflow_server.uri, capsys)
    assert code == 0, err
    assert set(_rows(out)) == {runs["killed"], runs["live"], runs["elsewhere"], runs["evaluate"]}


def test_close_ends_only_the_stale_runs_as_killed(mlflow_server, capsys):
    client = MlflowClient(mlflow_server.uri)
    experiment_id = client.create_experiment("runs-close")
    here = socket.gethostname()
    gone = client.create_run(experiment_id, run_name="gone fuse", tags={
        "ofexp.stage": "fuse", "ofexp.host": here, "ofexp.pid": str(_dead_pid())}).info.run_id
    live = client.create_run(experiment_id, run_name="live study", tags={
        "ofexp.stage": "study", "ofexp.host": here, "ofexp.pid": str(os.getpid())}).info.run_id
    code, out, err = ofexp_here(["runs", "--stale", "--older-than", "0", "--close", "--experiment-name", "runs-close"],
                                mlflow_server.uri, capsys)
    assert code == 0, err
    assert set(_rows(out)) == {gone} and "closed 1 stale RUNNING runs as KILLED" in err
    closed = client.get_run(gone)
    assert closed.info.status == "KILLED" and "ofexp runs --stale --close" in closed.data.tags["ofexp.failure_reason"]
    assert client.get_run(live).info.status == "RUNNING"


@pytest.mark.parametrize("args,words", [
    (["--experiment-name", "no-such-experiment"], "no experiment named 'no-such-experiment'"),
    (["--older-than", "-1"], "--older-than"),
])
def test_bad_input_is_one_line(args, words, mlflow_server, capsys):
    code, out, err = ofexp_here(["runs", "--stale", *args], mlflow_server.uri, capsys)
    assert code != 0 and "Traceback" not in err
    assert err.strip().startswith("error:") and len(err.strip().splitlines()) == 1 and words in err


def test_train_notice_names_the_killed_run_with_the_same_settings(runs, mlflow_server):
    experiment_id = MlflowClient(mlflow_server.uri).get_experiment_by_name(EXPERIMENT).experiment_id
    with using_tracking_uri(mlflow_server.uri):
        notice = stale_notice(TrainConfig(seed=7), experiment_id)
        assert notice and len(notice.splitlines()) == 1
        assert f"ofexp train --resume {runs['killed']}" in notice and "epoch 3" in notice
        assert stale_notice(TrainConfig(seed=8), experiment_id) is None  # other settings: nothing to offer


def test_close_without_stale_is_refused(mlflow_server, capsys):
    code, out, err = ofexp_here(["runs", "--close", "--experiment-name", EXPERIMENT], mlflow_server.uri, capsys)
    assert code != 0 and out == "" and err.strip() == (
        "error: --close ends only stale runs; add --stale (and --older-than) to choose them")
