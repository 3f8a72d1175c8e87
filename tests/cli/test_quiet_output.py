"""What a user sees (issue #16): a study ends with its result and where to look next; MLflow's
INFO lines and bars for steps that take a moment stay out of the way unless asked for."""
from __future__ import annotations

import os
import subprocess

import pytest

from conftest import BIN, run_cli_in_process

pytestmark = pytest.mark.slow


def _ofexp(args: list[str], cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{cwd}/mlflow.db", "OMP_NUM_THREADS": "1"}
    return subprocess.run([str(BIN / "ofexp"), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_mlflow_info_lines_only_with_verbose(tmp_path):
    # a fresh store: MLflow logs "Creating initial MLflow database tables..." at INFO
    quiet = _ofexp(["runs", "--experiment-name", "nothing-here"], tmp_path)
    assert " INFO mlflow" not in quiet.stderr, quiet.stderr
    (tmp_path / "mlflow.db").unlink()
    verbose = _ofexp(["--verbose", "runs", "--experiment-name", "nothing-here"], tmp_path)
    assert " INFO mlflow.store.db.utils: Creating initial MLflow database tables" in verbose.stderr


def test_a_study_ends_with_its_result_table_and_the_run_id_last(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    args = ["study", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--seeds", "2", "--no-log-model",
            "--device", "cpu", "--measures", "prediction", "--preset", "quick", "--experiment-name", "quiet"]
    result = run_cli_in_process(args, uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    study_id = lines[-1]
    assert lines[0] == f"study {study_id}: seeds 1,2, 16 steps (0 reused); accuracy over seeds:"
    rows = {line.split()[0]: line.split() for line in lines[2:6]}
    assert list(rows) == ["parent_1", "parent_2", "naive_fused", "geometric_fused"]
    for kind, cells in rows.items():
        mean, std, ratio = float(cells[1]), float(cells[3]), float(cells[4])
        assert 0 < mean <= 1 and std >= 0 and cells[2] == "±"
        assert ratio == pytest.approx(mean / ((float(rows["parent_1"][1]) + float(rows["parent_2"][1])) / 2),
                                      abs=2e-3)
    assert f"  ofexp report {study_id}" in result.stdout and "  ofexp ui" in result.stdout
    # the prediction measures take a moment each: no bar of theirs, one progress line per step
    assert "prediction/accuracy" not in result.stderr and "step/s" not in result.stderr
    assert result.stderr.count("study step ") == 16

    # the MLflow side: the experiment has its kind and a description, and the steps' names are
    # told apart where the UI's runs table cuts them (about 15 characters)
    from mlflow import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("quiet")
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert "A study run is the parent of its steps" in experiment.tags["mlflow.note.content"]
    steps = client.search_runs([experiment.experiment_id], f"tags.mlflow.parentRunId = '{study_id}'")
    names = sorted(r.info.run_name for r in steps)
    assert names == sorted(f"s{s} {kind} {stage}" for s in (1, 2) for kind, stage in (
        ("parent_1", "train"), ("parent_2", "train"), ("naive", "fuse"), ("geometric", "fuse"),
        ("parent_1", "eval"), ("parent_2", "eval"), ("naive", "eval"), ("geometric", "eval")))
    assert len({name[:15] for name in names}) == len(names)


def test_an_experiment_description_of_the_users_own_is_kept(tmp_path, capsys):
    from mlflow import MlflowClient

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment_id = client.create_experiment("mine", tags={"mlflow.note.content": "my notes"})
    result = run_cli_in_process(["train", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model",
                                 "--device", "cpu", "--experiment-name", "mine"], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    tags = client.get_experiment(experiment_id).tags
    assert tags["mlflow.note.content"] == "my notes" and tags["mlflow.experimentKind"] == "custom_model_development"
