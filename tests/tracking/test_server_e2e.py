"""End to end against a real `mlflow server` (SQLite, then PostgreSQL backend): train -> fuse -> evaluate, by run ID."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys

import mlflow
import pandas as pd
import pytest
import torch
from mlflow import MlflowClient

from conftest import using_tracking_uri

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def tiny_runs(request):
    """The session's tiny runs, on a server with a SQLite and with a PostgreSQL backend store."""
    return request.getfixturevalue("tiny_runs" if request.param == "sqlite" else "postgres_tiny_runs")


@pytest.fixture(scope="module")
def client(tiny_runs) -> MlflowClient:
    with using_tracking_uri(tiny_runs.server.uri):
        yield MlflowClient(tiny_runs.server.uri)


def _artifacts(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    found = set()
    for info in client.list_artifacts(run_id, path):
        found |= _artifacts(client, run_id, info.path) if info.is_dir else {info.path}
    return found


def test_train_runs_log_params_history_artifacts_and_data(tiny_runs, client):
    run = client.get_run(tiny_runs.parent_1)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "train mlp digits seed1"
    assert run.data.tags["ofexp.stage"] == "train"
    assert run.data.tags["ofexp.version"]
    params = run.data.params
    assert (params["model"], params["width"], params["epochs"], params["seed"]) == ("mlp", "0.25", "2", "1")
    for key in ("lr", "batch_size", "init", "warmup_epochs", "grad_clip", "recipe", "bias", "batchnorm", "val_fraction"):
        assert key in params, key
    for metric in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"):
        history = client.get_metric_history(run.info.run_id, metric)
        assert sorted(m.step for m in history) == [1, 2], metric
    assert {"weights/initial.pt", "weights/best.pt", "weights/final.pt", "checkpoint/last.pt",
            "spec.json"} <= _artifacts(client, run.info.run_id)
    contexts = {d.tags[0].value for d in run.inputs.dataset_inputs}
    assert contexts == {"training", "validation", "test"}
    assert {d.dataset.name for d in run.inputs.dataset_inputs} == {"digits-training", "digits-validation", "digits-test"}


def test_train_run_logs_an_mlflow_model_that_matches_the_weights(tiny_runs, client):
    from ofexp.tracking import load_model

    from ofexp.data import DataConfig, load_dataset

    model_id = client.get_run(tiny_runs.parent_1).data.tags["ofexp.logged_model_id"]
    served = mlflow.pytorch.load_model(f"models:/{model_id}")
    ours, _ = load_model(tiny_runs.parent_1)
    # the logged model takes raw 8×8 digits in [0, 1]; ofexp's network their resized, normalised form
    info = load_dataset(DataConfig()).info
    raw = torch.rand(4, 1, 8, 8)
    x = (torch.nn.functional.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
         - info.mean[0]) / info.std[0]
    torch.testing.assert_close(served(raw), ours(x))


def test_fuse_runs_are_tagged_with_parents_and_log_alignment(tiny_runs, client):
    assert set(tiny_runs.fused) == {"naive", "geometric"}
    for method, run_id in tiny_runs.fused.items():
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["ofexp.stage"] == "fuse"
        assert run.data.tags["ofexp.parent_run_ids"] == f"{tiny_runs.parent_1},{tiny_runs.parent_2}"
        assert run.data.tags["ofexp.parent_1"] == tiny_runs.parent_1
        assert tiny_runs.parent_1 in run.data.tags["mlflow.note.content"]
        assert run.data.params["method"] == method
        assert {"prediction/accuracy", "prediction/test_loss", "fusion_seconds"} <= set(run.data.metrics)
        artifacts = _artifacts(client, run_id)
        assert {"weights/fused.pt", "spec.json"} <= artifacts
    geometric = client.get_run(tiny_runs.fused["geometric"])
    assert "alignment/plans.pt" in _artifacts(client, tiny_runs.fused["geometric"])
    assert any(k.startswith("ot_cost/") for k in geometric.data.metrics)


def test_evaluate_runs_are_tagged_and_results_csv_matches_metrics(tiny_runs, client):
    model_runs = {"parent_1": tiny_runs.parent_1, "parent_2": tiny_runs.parent_2,
                  "naive_fused": tiny_runs.fused["naive"], "geometric_fused": tiny_runs.fused["geometric"]}
    for kind, eval_id in tiny_runs.evaluations.items():
        run = client.get_run(eval_id)
        assert run.info.status == "FINISHED"
        assert run.data.tags["ofexp.stage"] == "evaluate"
        assert run.data.tags["ofexp.model_run_id"] == model_runs[kind]
        metrics = run.data.metrics
        for name in ("accuracy", "test_loss", "train_accuracy", "generalisation_gap"):
            assert f"prediction/{name}" in metrics
        gap = abs(metrics["prediction/train_accuracy"] - metrics["prediction/accuracy"])
        assert metrics["prediction/generalisation_gap"] == pytest.approx(1 / gap)
        csv = mlflow.artifacts.load_text(f"runs:/{eval_id}/results.csv")
        frame = pd.read_csv(io.StringIO(csv))
        assert list(frame.columns) == ["Model", "Space", "Metric", "Value"]
        assert not frame.isna().any().any()
        assert set(frame["Model"]) == {kind}
        for row in frame.itertuples():
            assert row.Space == "prediction_space"
            assert row.Value == pytest.approx(metrics[f"prediction/{row.Metric}"], rel=1e-12)


_FRESH_PROCESS = """
import json, sys
from ofexp.data import load_dataset
from ofexp.tracking import fetch_model_run
from ofexp.training import evaluate
out = {}
for run_id in sys.argv[1:]:
    loaded = fetch_model_run(run_id)
    splits = load_dataset(loaded.data)
    out[run_id] = evaluate(loaded.model, splits.test_x, splits.test_y, device="cpu")["accuracy"]
print(json.dumps(out))
"""


def test_a_fresh_process_loads_every_model_by_run_id_alone(tiny_runs, client, tmp_path):
    # Nothing was stored next to the commands: artifacts live behind the server only.
    leftovers = [p for p in tiny_runs.workdir.rglob("*") if p.suffix in {".pt", ".pth", ".json"}]
    assert leftovers == []
    ids = [tiny_runs.parent_1, tiny_runs.parent_2, *tiny_runs.fused.values()]
    env = {**os.environ, "MLFLOW_TRACKING_URI": tiny_runs.server.uri}
    proc = subprocess.run([sys.executable, "-c", _FRESH_PROCESS, *ids], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    accuracies = json.loads(proc.stdout.strip().splitlines()[-1])
    evaluated = {client.get_run(e).data.tags["ofexp.model_run_id"]: client.get_run(e).data.metrics["prediction/accuracy"]
                 for e in tiny_runs.evaluations.values()}
    for run_id in ids:
        assert accuracies[run_id] == pytest.approx(evaluated[run_id], abs=1e-9)


def test_reference_weights_of_a_fused_model_come_from_the_farther_parent(tiny_runs, client):
    from ofexp.pipeline.steps.evaluate import reference_weights
    from ofexp.tracking import load_weights_from_run

    fused_id = tiny_runs.fused["geometric"]
    fused = load_weights_from_run(fused_id)
    parents = {pid: load_weights_from_run(pid) for pid in (tiny_runs.parent_1, tiny_runs.parent_2)}
    distance = {pid: sum(float((fused[k] - w[k]).pow(2).sum()) for k in fused if fused[k].is_floating_point())
                for pid, w in parents.items()}
    farther = max(distance, key=distance.get)
    chosen = reference_weights(fused_id)
    for key, value in parents[farther].items():
        assert torch.equal(chosen[key], value)
    initial = reference_weights(tiny_runs.parent_1)
    for key, value in load_weights_from_run(tiny_runs.parent_1, "initial").items():
        assert torch.equal(initial[key], value)


def test_no_run_is_left_running(tiny_runs, client):
    experiment = client.get_experiment_by_name(tiny_runs.experiment)
    running = client.search_runs([experiment.experiment_id], filter_string="attributes.status = 'RUNNING'")
    assert running == []


def test_train_runs_log_mlflow_system_metrics(mlflow_server, tmp_path, capsys, monkeypatch):
    # MLflow samples every 10 s by default; sampled every 0.5 s here, a 2-epoch VGG11 run has samples
    from conftest import run_cli_in_process

    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL", "0.5")
    monkeypatch.setenv("MLFLOW_SYSTEM_METRICS_SAMPLES_BEFORE_LOGGING", "1")
    result = run_cli_in_process(["train", "--model", "vgg11", "--width", "0.25", "--epochs", "2", "--no-log-model",
                                 "--device", "cpu", "--experiment-name", "system-metrics"], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    metrics = MlflowClient(mlflow_server.uri).get_run(result.last_line).data.metrics
    assert 0 <= metrics["system/cpu_utilization_percentage"] <= 100 * os.cpu_count()
    assert metrics["system/system_memory_usage_megabytes"] > 0
