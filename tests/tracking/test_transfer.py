"""`ofexp export` and `ofexp import` against real servers: a tiny digits study moved from a
SQLite-backed `mlflow server` into a PostgreSQL-backed one reports the same, with its lineage
pointing at the imported runs; with weights, an imported fused run evaluates as the original."""
from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile

from pathlib import Path

import mlflow
import pandas as pd
import pytest
from mlflow.entities import ViewType
from mlflow.tracking import MlflowClient

from conftest import run_cli_in_process, using_tracking_uri
from ofexp.tracking.names import (TAG_FAILURE, TAG_IMPORTED_FROM, TAG_LOGGED_MODEL, TAG_MODEL_RUN, TAG_PARENT_RUN,
                                  TAG_PARENTS, TAG_STAGE, parent_tag)
from ofexp.tracking.transfer import MANIFEST, IdRewriter

pytestmark = pytest.mark.slow

EXPERIMENT = "transfer-tests"
# the fastest study options of tests/pipeline/study/test_study.py
TINY = ["--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu",
        "--measures", "prediction", "--preset", "quick", "--experiment-name", EXPERIMENT]


def ofexp(uri: str, *args: str) -> tuple[int, str, str]:
    """`ofexp ARGS` in this process against `uri`: (exit code, stdout, stderr)."""
    from ofexp.cli import main

    out, err = io.StringIO(), io.StringIO()
    with using_tracking_uri(uri), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
            code = 0
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue(), err.getvalue()


def must(uri: str, *args: str) -> str:
    code, out, err = ofexp(uri, *args)
    assert code == 0, f"ofexp {' '.join(args)} exited {code}: {err[-2000:]}"
    return out.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def study(mlflow_server) -> str:
    return must(mlflow_server.uri, "study", *TINY, "--seeds", "2")


@pytest.fixture(scope="module")
def exported(mlflow_server, study, tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "study"
    assert must(mlflow_server.uri, "export", study, str(folder)) == str(folder)
    return folder


@pytest.fixture(scope="module")
def imported(postgres_mlflow_server, exported) -> str:
    return must(postgres_mlflow_server.uri, "import", str(exported))


def _runs(client: MlflowClient) -> list:
    experiment = client.get_experiment_by_name(EXPERIMENT)
    return client.search_runs([experiment.experiment_id], max_results=1000)


def _steps(client: MlflowClient, study_run_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        return pd.read_csv(client.download_artifacts(study_run_id, "steps.csv", tmp), dtype={"run_id": str})


def test_report_on_the_import_equals_the_original(mlflow_server, postgres_mlflow_server, study, imported):
    _, original, _ = ofexp(mlflow_server.uri, "report", study)
    _, copy, _ = ofexp(postgres_mlflow_server.uri, "report", imported)
    assert imported != study
    assert "## correlation" in original and len(original.splitlines()) > 30
    assert copy == original.replace(study, imported)


def test_lineage_points_at_the_imported_runs(mlflow_server, postgres_mlflow_server, study, imported):
    source, target = MlflowClient(mlflow_server.uri), MlflowClient(postgres_mlflow_server.uri)
    new = {r.info.run_id: r for r in _runs(target)}
    old_of = {run_id: r.data.tags[TAG_IMPORTED_FROM] for run_id, r in new.items()}
    steps = _steps(target, imported)
    assert set(steps["run_id"]) | {imported} == set(new)  # every step and the study, nothing else
    assert [old_of[r] for r in steps["run_id"]] == list(_steps(source, study)["run_id"])
    fuse_runs = [r for r in new.values() if r.data.tags[TAG_STAGE] == "fuse"]
    assert len(fuse_runs) == 4
    for run in fuse_runs:
        parents = run.data.tags[TAG_PARENTS].split(",")
        assert all(new[p].data.tags[TAG_STAGE] == "train" for p in parents)
        assert [run.data.tags[parent_tag(i + 1)] for i in range(2)] == parents
        assert run.data.params["parents"] == ",".join(parents)
        original = source.get_run(old_of[run.info.run_id])
        assert original.data.tags[TAG_PARENTS] == ",".join(old_of[p] for p in parents)
    for run in new.values():
        if run.info.run_id != imported:
            assert run.data.tags[TAG_PARENT_RUN] == imported
        if run.data.tags[TAG_STAGE] == "evaluate":
            assert run.data.tags[TAG_MODEL_RUN] in new
        original = source.get_run(old_of[run.info.run_id])
        assert run.info.status == original.info.status and run.info.run_name == original.info.run_name
        assert run.info.start_time == original.info.start_time and run.info.end_time == original.info.end_time
        histories = {k: [(m.step, m.value) for m in source.get_metric_history(original.info.run_id, k)]
                     for k in original.data.metrics}
        assert histories == {k: [(m.step, m.value) for m in target.get_metric_history(run.info.run_id, k)]
                             for k in run.data.metrics}


def test_the_export_holds_no_weights_and_says_its_format(exported, study):
    manifest = json.loads((exported / MANIFEST).read_text())
    assert (manifest["format"], manifest["version"], manifest["study_run_id"]) == ("ofexp-study-export", 1, study)
    assert len(manifest["runs"]) == 17  # the study, 2 seeds x (2 train + 2 fuse + 4 evaluate)
    files = [p for p in exported.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix == ".pt"]
    assert {"steps.csv", "results.csv", "spec.json", "metrics.csv", "run.json"} <= {p.name for p in files}
    assert any(p.suffix == ".png" for p in files)


def test_a_second_import_into_the_same_store_is_refused(postgres_mlflow_server, exported, imported):
    before = len(_runs(MlflowClient(postgres_mlflow_server.uri)))
    code, _, err = ofexp(postgres_mlflow_server.uri, "import", str(exported))
    assert code == 1 and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and "imported" in err and imported in err
    assert len(_runs(MlflowClient(postgres_mlflow_server.uri))) == before


def test_export_never_writes_into_a_folder_with_files(mlflow_server, study, tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    code, _, err = ofexp(mlflow_server.uri, "export", study, str(tmp_path))
    assert code != 0 and err.startswith("error: ") and "not empty" in err and len(err.strip().splitlines()) == 1
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"] and (tmp_path / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize("change, expected", [
    (lambda m: {**m, "version": 99}, "version 99"),
    (lambda m: {**m, "format": "mlflow-export-import"}, "not of format"),
    (None, "no ofexp-export.json"),
])
def test_import_refuses_a_folder_of_another_format(mlflow_server, exported, tmp_path, change, expected):
    copy = tmp_path / "copy"
    shutil.copytree(exported, copy)
    if change is None:
        (copy / MANIFEST).unlink()
    else:
        (copy / MANIFEST).write_text(json.dumps(change(json.loads((copy / MANIFEST).read_text()))))
    code, out, err = ofexp(mlflow_server.uri, "import", str(copy))
    assert code != 0 and not out and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and expected in err


def test_with_weights_logged_models_travel_and_an_imported_fused_run_evaluates_as_the_original(
        mlflow_server, tmp_path, monkeypatch):
    """A one-seed study that logs MLflow models, into a fresh SQLite store: tensor files travel with
    their sha256 tags, each logged model is made anew (its source run and the MLmodel's run ID the
    imported run's), and evaluate reads the imported lineage and gives the original's accuracy."""
    logging = [a for a in TINY if a != "--no-log-model"]
    logging[logging.index(EXPERIMENT)] = "transfer-models"
    study = must(mlflow_server.uri, "study", *logging, "--seeds", "1")
    folder = tmp_path / "with-weights"
    must(mlflow_server.uri, "export", study, str(folder), "--with-weights")
    assert any(p.suffix == ".pt" for p in folder.rglob("*")) and list(folder.rglob("MLmodel"))
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    store = f"sqlite:///{tmp_path / 'fresh.db'}"
    copy = must(store, "import", str(folder), "--tracking-uri", store)
    target, source = MlflowClient(store), MlflowClient(mlflow_server.uri)
    new = {r.info.run_name: r for r in target.search_runs([target.get_experiment_by_name("transfer-models")
                                                           .experiment_id])}
    fused = new["s1 geometric fuse"]
    model = target.get_logged_model(fused.data.tags[TAG_LOGGED_MODEL])
    assert model.source_run_id == fused.info.run_id and str(model.status) == "READY"
    with tempfile.TemporaryDirectory() as tmp, using_tracking_uri(store):
        mlmodel = Path(mlflow.artifacts.download_artifacts(f"{model.artifact_location}/MLmodel", dst_path=tmp)).read_text()
    assert fused.info.run_id in mlmodel and model.model_id in mlmodel
    assert fused.data.tags[TAG_IMPORTED_FROM] not in mlmodel
    evaluated = must(store, "evaluate", "--model-run", fused.info.run_id, "--measures", "accuracy",
                     "--device", "cpu", "--experiment-name", "transfer-models")
    original = source.get_run(fused.data.tags[TAG_IMPORTED_FROM])
    original_eval = next(r for r in source.search_runs([original.info.experiment_id])
                         if r.data.tags.get(TAG_MODEL_RUN) == original.info.run_id)
    assert target.get_run(evaluated).data.metrics["prediction/accuracy"] == \
        original_eval.data.metrics["prediction/accuracy"]
    assert target.get_run(copy).data.tags[TAG_STAGE] == "study"


def test_export_refuses_a_run_that_is_not_a_study(mlflow_server, study, tmp_path):
    fuse_run = next(r for r in _runs(MlflowClient(mlflow_server.uri)) if r.data.tags.get(TAG_STAGE) == "fuse")
    code, _, err = ofexp(mlflow_server.uri, "export", fuse_run.info.run_id, str(tmp_path / "out"))
    assert code != 0 and err.startswith("error: ") and "not a study run" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists() and not list(tmp_path.iterdir())


def test_an_import_that_fails_part_way_leaves_no_run_behind(exported, tmp_path, monkeypatch):
    """The last run's metric history is broken: the import stops in one line naming the file, and the
    runs it had made are FAILED (with the reason) and deleted, so the folder can be imported again."""
    copy = tmp_path / "broken"
    shutil.copytree(exported, copy)
    last = json.loads((copy / MANIFEST).read_text())["runs"][-1]
    (copy / "runs" / last / "metrics.csv").write_text("key,step,timestamp,value\nloss,one,2,3\n")
    monkeypatch.chdir(tmp_path)  # a SQLite store keeps its artifacts in ./mlruns
    store = f"sqlite:///{tmp_path / 'store.db'}"
    code, out, err = ofexp(store, "import", str(copy))
    assert code == 1 and not out and len(err.strip().splitlines()) == 1
    assert err.startswith("error: ") and f"{last}/metrics.csv" in err
    client = MlflowClient(store)
    experiment = client.get_experiment_by_name(EXPERIMENT).experiment_id
    assert client.search_runs([experiment]) == []
    deleted = client.search_runs([experiment], run_view_type=ViewType.DELETED_ONLY, max_results=100)
    assert len(deleted) == 17
    assert all(r.info.status == "FAILED" and "metrics.csv" in r.data.tags[TAG_FAILURE] for r in deleted)


def test_id_rewriter_replaces_only_whole_exported_ids():
    old, new = "a" * 32, "b" * 32
    rewrite = IdRewriter({old: new, "m-" + "c" * 32: "m-" + "d" * 32})
    assert rewrite(f"runs:/{old}/model,{old}") == f"runs:/{new}/model,{new}"
    assert rewrite("models:/m-" + "c" * 32) == "models:/m-" + "d" * 32
    assert rewrite("f" * 32) == "f" * 32
    assert rewrite("a" * 33) == "a" * 33
