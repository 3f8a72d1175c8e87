"""The ensemble step: an evaluable run whose model is the mean of its parents' softmax outputs."""
from __future__ import annotations

import json

import mlflow
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from mlflow.tracking import MlflowClient

from conftest import run_cli_in_process, sqlite_store_with_parents, using_tracking_uri
from ofexp import tracking
from ofexp.data import DataConfig
from ofexp.errors import ConfigError, IncompatibleModelsError, RunLookupError
from ofexp.metrics import MEASURES
from ofexp.pipeline.steps.evaluate import EvalConfig, run_evaluate
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse
from ofexp.pipeline.steps.train import TrainConfig, run_train
from ofexp.pipeline.steps.ensemble import EnsembleConfig, run_ensemble
from ofexp.pipeline.steps.evaluate import ENSEMBLE_SKIP_NOTE
from ofexp.pipeline.steps.finetune import FinetuneConfig, run_finetune
from ofexp.training import make_recipe


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two tiny MLP parents and their ensemble, in a fresh SQLite store."""
    uri, parents, splits, experiment_id = sqlite_store_with_parents(tmp_path_factory.mktemp("ensemble-store"),
                                                                    "ensemble-tests")
    with using_tracking_uri(uri):
        mlflow.set_experiment(experiment_id=experiment_id)
        ensemble = run_ensemble(EnsembleConfig(parents=parents, device="cpu"), splits)
        yield {"splits": splits, "parents": parents, "ensemble": ensemble, "client": MlflowClient(),
               "experiment_id": experiment_id}


def test_loaded_ensemble_predicts_the_mean_of_the_parents_softmax(store):
    model, spec = tracking.load_model(store["ensemble"])  # from the ensemble run alone
    parents = [tracking.load_model(p)[0] for p in store["parents"]]
    x = store["splits"].test_x[:32]  # [32, 1, 32, 32]
    with torch.no_grad():
        expected = torch.stack([F.softmax(p(x), dim=1) for p in parents]).mean(dim=0)  # [32, 10]
        assert torch.allclose(F.softmax(model(x), dim=1), expected, atol=1e-6)
    assert torch.allclose(model.predict_proba(x), expected, atol=1e-7)
    assert [m.to_dict() for m in spec.members] == [tracking.load_spec_from_run(p)[0].to_dict() for p in store["parents"]]


def test_ensemble_run_records_its_parents_and_accuracy(store):
    client = store["client"]
    run = client.get_run(store["ensemble"])
    assert run.info.status == "FINISHED" and run.data.tags[tracking.TAG_STAGE] == "ensemble"
    assert run.data.tags[tracking.TAG_PARENTS] == ",".join(store["parents"])
    blob = json.loads(open(client.download_artifacts(run.info.run_id, "spec.json")).read())
    assert blob["parents"] == list(store["parents"]) and blob["model"]["arch"] == "ensemble"
    model, _ = tracking.load_model(store["ensemble"])
    x, y = store["splits"].test_x, store["splits"].test_y
    with torch.no_grad():
        accuracy = (model(x).argmax(dim=1) == y).float().mean().item()
    assert run.data.metrics["prediction/accuracy"] == pytest.approx(accuracy)
    for i, parent in enumerate(store["parents"], start=1):
        assert run.data.metrics[f"prediction/accuracy/member_{i}"] == pytest.approx(
            client.get_run(parent).data.metrics["prediction/accuracy"])


def test_evaluate_measures_prediction_space_and_skips_parameter_space_with_a_note(store):
    cfg = EvalConfig(model_run=store["ensemble"], measures="accuracy,generalisation_gap,hessian_trace,sharpness_init",
                     preset="quick", device="cpu", progress=False)
    run = store["client"].get_run(run_evaluate(cfg, store["splits"]))
    assert run.info.status == "FINISHED"
    metrics, tags = run.data.metrics, run.data.tags
    ensemble_accuracy = store["client"].get_run(store["ensemble"]).data.metrics["prediction/accuracy"]
    assert metrics["prediction/accuracy"] == pytest.approx(ensemble_accuracy)
    assert metrics["prediction/generalisation_gap"] > 0
    for name in ("hessian_trace", "sharpness_init"):
        assert MEASURES[name].metric_key not in metrics
        assert tags[f"ofexp.warning.{name}"] == ENSEMBLE_SKIP_NOTE
    files = {name: pd.read_csv(store["client"].download_artifacts(run.info.run_id, name))
             for name in ("results.csv", "prediction_metrics.csv")}
    assert files["results.csv"]["Metric"].tolist() == ["accuracy"]  # the one prediction row, as the report has it
    assert files["prediction_metrics.csv"]["Metric"].tolist() == ["generalisation_gap"]


def test_ensemble_is_no_single_network_for_fusion_or_finetuning(store):
    before = len(store["client"].search_runs([store["experiment_id"]]))
    with pytest.raises(RunLookupError, match="is an ensemble run, not a train or fuse run"):
        run_fuse(FuseConfig(parents=(store["ensemble"], store["parents"][0]), device="cpu"), store["splits"])
    with pytest.raises(RunLookupError, match="is an ensemble run"):
        run_finetune(FinetuneConfig(source=store["ensemble"], device="cpu", progress=False), store["splits"])
    assert len(store["client"].search_runs([store["experiment_id"]])) == before


def test_bad_parents_are_refused_before_any_run(store, tmp_path):
    with pytest.raises(ConfigError, match="at least 2"):
        EnsembleConfig(parents=(store["parents"][0],))
    with pytest.raises(ConfigError, match="twice"):
        EnsembleConfig(parents=(store["parents"][0],) * 2)
    other = run_train(TrainConfig(model="mlp", width=0.125, data=DataConfig(split_seed=1), recipe=make_recipe(epochs=1),
                                  log_model=False, progress=False, device="cpu"))
    before = len(store["client"].search_runs([store["experiment_id"]]))
    with pytest.raises(IncompatibleModelsError, match="different data"):
        run_ensemble(EnsembleConfig(parents=(store["parents"][0], other), device="cpu"), store["splits"])
    assert len(store["client"].search_runs([store["experiment_id"]])) == before


@pytest.mark.slow
def test_cli_ensemble_prints_its_run_id_and_refuses_bad_input(tiny_runs, capsys):
    exp = ["--experiment-name", "ensemble-cli"]
    parents = f"{tiny_runs.parent_1},{tiny_runs.parent_2}"
    ok = run_cli_in_process(["ensemble", "--parents", parents, *exp], tiny_runs.server.uri, capsys)
    assert ok.returncode == 0, ok.stderr[-2000:]
    evaluated = run_cli_in_process(["evaluate", "--model-run", ok.last_line, *exp], tiny_runs.server.uri, capsys)
    assert evaluated.returncode == 0, evaluated.stderr[-2000:]
    for parents_arg, words in ((tiny_runs.parent_1, "at least 2"),
                               (f"{tiny_runs.parent_1},{tiny_runs.evaluations['parent_2']}", "not a train or fuse run")):
        result = run_cli_in_process(["ensemble", "--parents", parents_arg, *exp], tiny_runs.server.uri, capsys)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and len(errors) == 1 and words in errors[0], result.stderr[-2000:]
    with using_tracking_uri(tiny_runs.server.uri):
        client = MlflowClient()
        found = client.search_runs([client.get_experiment_by_name("ensemble-cli").experiment_id])
    assert {r.info.run_id for r in found} == {ok.last_line, evaluated.last_line}
    assert all(r.info.status == "FINISHED" for r in found)
    evaluation = next(r for r in found if r.info.run_id == evaluated.last_line)
    assert evaluation.data.tags[tracking.TAG_MODEL_RUN] == ok.last_line
    assert "prediction/accuracy" in evaluation.data.metrics
