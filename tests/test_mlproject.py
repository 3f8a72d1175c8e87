"""`mlflow run` of the top-level MLproject against a real tracking server.

One step, one run: the step logs into the run that `mlflow run` creates (it
passes MLFLOW_RUN_ID). Each `mlflow run` costs ~15-20 s of start-up, so the
settings are tiny.
"""
from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from ofexp.pipeline.study.run import MODEL_KINDS

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
TINY = ["-P", "model=mlp", "-P", "width=0.25", "-P", "log_model=false"]


def mlflow_run(server, entry_point: str, params: list[str], *, project: str = ".",
               timeout: float = 300) -> tuple[subprocess.CompletedProcess, str]:
    """`mlflow run PROJECT -e ENTRY --env-manager local` in a fresh experiment; returns (process, experiment)."""
    experiment = f"mlproject-{entry_point}-{uuid.uuid4().hex[:8]}"
    # One torch thread: on 2 shared cores the tiny models train several times faster so.
    env = {**os.environ, "MLFLOW_TRACKING_URI": server.uri, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    proc = subprocess.run(
        [str(BIN / "mlflow"), "run", project, "-e", entry_point, "--env-manager", "local",
         "--experiment-name", experiment, *params],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout,
    )
    return proc, experiment


def _runs(client: MlflowClient, experiment: str):
    exp = client.get_experiment_by_name(experiment)
    assert exp is not None, f"experiment {experiment} was not created"
    return client.search_runs([exp.experiment_id], max_results=1000)


def _the_run(runs, entry_point: str, stage: str):
    """The one run `mlflow run` made, which is the ofexp step's run."""
    made = [r for r in runs if r.data.tags.get("mlflow.project.entryPoint") == entry_point]
    assert len(made) == 1, f"expected one run of entry point {entry_point}, got {[r.info.run_name for r in runs]}"
    run = made[0]
    assert run.data.tags.get("ofexp.stage") == stage, "the step should log into the run mlflow run made"
    return run


def _no_empty_params(run) -> None:
    blank = {k: v for k, v in run.data.params.items() if v.strip() in ("", "''", '""')}
    assert not blank, f"params with an empty value: {blank}"


def _children(runs, parent_id: str, stage: str | None = None):
    return [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id
            and (stage is None or r.data.tags.get("ofexp.stage") == stage)]


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    paths = set()
    for info in client.list_artifacts(run_id, path):
        paths |= _artifact_paths(client, run_id, info.path) if info.is_dir else {info.path}
    return paths


def _output(proc: subprocess.CompletedProcess) -> str:
    return f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}"


def test_mlflow_run_train_makes_exactly_one_run(mlflow_server):
    # width=1 is spelled as given (ofexp would write 1.0); batch_size is an undeclared option, passed as given
    proc, experiment = mlflow_run(mlflow_server, "train", ["-P", "model=mlp", "-P", "width=1", "-P", "log_model=false",
                                                           "-P", "epochs=2", "-P", "batch_size=32"])
    assert proc.returncode == 0, _output(proc)

    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, experiment)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    train = _the_run(runs, "train", "train")
    assert train.info.status == "FINISHED"
    assert train.info.run_id in proc.stdout.split(), "ofexp should print the run ID"
    assert train.info.run_name.startswith("train ")
    params = train.data.params
    assert params["model"] == "mlp" and params["epochs"] == "2" and params["batch_size"] == "32"
    assert float(params["width"]) == 1.0 and "resolved.width" not in params
    assert float(params["lr"]) > 0, "an option left out takes the recipe's value"
    assert params["bias"] == "false" and params["channels_last"] == "false"
    _no_empty_params(train)

    history = client.get_metric_history(train.info.run_id, "val_loss")
    assert sorted(m.step for m in history) == [1, 2]
    assert {"weights/final.pt", "spec.json"} <= _artifact_paths(client, train.info.run_id)


def test_mlflow_run_fuse_logs_into_its_run_with_parents_by_id(mlflow_server):
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    parents = []
    for seed in (1, 2):
        out = subprocess.run([str(BIN / "ofexp"), "train", "--width", "0.25", "--epochs", "1", "--seed", str(seed),
                              "--no-log-model", "--experiment-name", "mlproject-fuse-parents"],
                             env=env, capture_output=True, text=True, timeout=300, check=True)
        parents.append(out.stdout.split()[-1])
    proc, experiment = mlflow_run(mlflow_server, "fuse", ["-P", f"parents={','.join(parents)}", "-P", "log_model=false",
                                                          "-P", "activation_samples=64"])
    assert proc.returncode == 0, _output(proc)
    runs = _runs(MlflowClient(mlflow_server.uri), experiment)
    assert len(runs) == 1, [r.info.run_name for r in runs]
    fuse = _the_run(runs, "fuse", "fuse")
    assert fuse.info.status == "FINISHED"
    assert fuse.data.params["method"] == "geometric" and fuse.data.params["activation_samples"] == "64"
    assert fuse.data.tags["ofexp.parent_run_ids"] == ",".join(parents)
    assert "fusion_seconds" in fuse.data.metrics
    _no_empty_params(fuse)


def test_mlflow_run_main_study(mlflow_server, tmp_path):
    proc, experiment = mlflow_run(mlflow_server, "main", [*TINY, "-P", "epochs=1", "-P", "seeds=1"])
    assert proc.returncode == 0, _output(proc)

    client = MlflowClient(mlflow_server.uri)
    runs = _runs(client, experiment)
    assert all(r.info.status == "FINISHED" for r in runs), {r.info.run_name: r.info.status for r in runs}
    study = _the_run(runs, "main", "study")
    _no_empty_params(study)
    # measures=prediction is kept as given; what it resolved to is beside it
    assert study.data.params["measures"] == "prediction"
    assert study.data.params["resolved.measures"].split(",")[0] == "accuracy"
    sid = study.info.run_id
    assert len(_children(runs, sid, "train")) == 2
    fuse = _children(runs, sid, "fuse")
    assert sorted(r.data.params["method"] for r in fuse) == ["geometric", "naive"]
    assert len(_children(runs, sid, "evaluate")) == 4
    assert len(runs) == 1 + 2 + 2 + 4, "every run should be the study or a child of it"

    results = pd.read_csv(client.download_artifacts(sid, "results.csv", str(tmp_path)))
    assert list(results.columns) == ["Model", "Space", "Metric", "Value"]
    per_seed = results[results["Space"] != "correlation_space"]
    assert sorted(per_seed["Model"].unique()) == sorted(f"{k}_seed1" for k in MODEL_KINDS)
    # results.csv as the original study reads it: one prediction row per model, the study's metric
    assert (per_seed["Space"] == "prediction_space").all() and set(per_seed["Metric"]) == {"accuracy"}
    # one seed gives no correlation: its rows are there, undefined, per model kind
    correlations = pd.read_csv(client.download_artifacts(sid, "correlations.csv", str(tmp_path)))
    per_kind = correlations[correlations["model_kind"] != "pooled"]
    assert set(per_kind["model_kind"]) == set(MODEL_KINDS) and per_kind["value"].isna().all()
    assert set(correlations["model_kind"]) == {*MODEL_KINDS, "pooled"}
    raw = pd.read_csv(client.download_artifacts(sid, "results.csv", str(tmp_path)), dtype=str, keep_default_na=False)
    assert (raw != "").all().all(), "no blank cells"
    assert results.loc[per_seed.index, "Value"].notna().all()


def test_mlflow_run_bad_model_fails_cleanly(mlflow_server):
    proc, experiment = mlflow_run(mlflow_server, "train", ["-P", "model=nosuch"], timeout=180)
    assert proc.returncode != 0, _output(proc)
    output = proc.stdout + proc.stderr
    assert any(line.startswith("error: ") and "nosuch" in line for line in output.splitlines()), _output(proc)
    assert "Traceback" not in output, _output(proc)

    runs = _runs(MlflowClient(mlflow_server.uri), experiment)
    assert not [r.info.run_name for r in runs if r.info.status == "RUNNING"]
    (launcher,) = runs
    assert launcher.info.status == "FAILED"


# --- `mlflow run` as a new user types it ----------------------------------------------------

DOCS_STUDY = REPO / "docs" / "study.md"


def _without_conda(env: dict) -> dict:
    """`env` on a machine without conda: no conda on PATH, no MLFLOW_CONDA_HOME."""
    path = os.pathsep.join(p for p in env["PATH"].split(os.pathsep) if not (Path(p) / "conda").exists())
    env = {**env, "PATH": f"{BIN}{os.pathsep}{path}"}
    env.pop("MLFLOW_CONDA_HOME", None)
    return env


def test_every_mlflow_run_the_docs_show_works_without_conda_and_lands_in_ofexp():
    """Pasted from the docs, an `mlflow run` needs no conda and logs where `ofexp ui` looks."""
    shown = [line for line in DOCS_STUDY.read_text().splitlines() if line.startswith("mlflow run ")]
    assert shown, "docs/study.md shows the mlflow run commands"
    for line in shown:
        assert "--env-manager local" in line, line


def test_flagless_mlflow_run_without_conda_fails_in_one_line_before_any_run_exists(tmp_path):
    """ofexp's MLflow plugin (ofexp/mlflow_plugin.py) refuses before MLflow creates the run."""
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _without_conda({**os.environ, "MLFLOW_TRACKING_URI": store})
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    proc = subprocess.run([str(BIN / "mlflow"), "run", ".", "-e", "train", *TINY],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0, _output(proc)
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "--env-manager local" in errors[0], _output(proc)
    assert "Traceback" not in proc.stderr, _output(proc)
    client = MlflowClient(store)
    runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
    assert runs == [], "a run was created"


def test_mlflow_run_without_experiment_name_logs_into_the_ofexp_experiment(tmp_path):
    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = _without_conda({**os.environ, "MLFLOW_TRACKING_URI": store, "OMP_NUM_THREADS": "1"})
    for var in ("MLFLOW_RUN_ID", "MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        env.pop(var, None)
    proc = subprocess.run([str(BIN / "mlflow"), "run", ".", "-e", "train", "--env-manager", "local",
                           *TINY, "-P", "epochs=1"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, _output(proc)
    (run,) = _runs(MlflowClient(store), "ofexp")
    assert run.info.status == "FINISHED" and run.data.tags["ofexp.stage"] == "train"
