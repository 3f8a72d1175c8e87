"""The evaluate step on real runs in a real local MLflow store (SQLite): options, warnings, lineage."""
from __future__ import annotations

import math
from dataclasses import replace

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import sqlite_store_with_parents, using_tracking_uri
from ofexp import tracking
from ofexp.errors import ConfigError
from ofexp.metrics import MEASURES, SearchBudget, parameter_vector, sharpness_init
from ofexp.metrics import context as context_module
from ofexp.pipeline.steps.evaluate import EvalConfig, reference_weights, run_evaluate
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse

SEARCH_KEYS = ("sigma", "deviation", "converged", "steps")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two tiny trained MLPs and their naive fusion, in a fresh SQLite store."""
    uri, parents, splits, experiment_id = sqlite_store_with_parents(tmp_path_factory.mktemp("evaluate-store"),
                                                                    "evaluate-tests", width=0.25)
    with using_tracking_uri(uri):
        mlflow.set_experiment(experiment_id=experiment_id)
        # Unequal weights: at equal weights the fused model lies halfway and the parents tie.
        fused = run_fuse(FuseConfig(parents=parents, methods=("naive",), fusion_weights=(0.3, 0.7), device="cpu"),
                         splits)["naive"]
        halfway = run_fuse(FuseConfig(parents=parents, methods=("naive",), device="cpu"), splits)["naive"]
        yield {"splits": splits, "parents": parents, "fused": fused, "halfway": halfway, "client": MlflowClient()}


def _evaluate(store, **kw) -> tuple:
    cfg = EvalConfig(model_run=store["fused"], device="cpu", progress=False, **kw)
    run = store["client"].get_run(run_evaluate(cfg, store["splits"]))
    # results.csv and the other prediction values beside it: every value the run logged
    files = [pd.read_csv(store["client"].download_artifacts(run.info.run_id, name))
             for name in ("results.csv", "prediction_metrics.csv")]
    return run, pd.concat(files, ignore_index=True)


def _warnings(run) -> dict[str, str]:
    prefix = "ofexp.warning."
    return {k[len(prefix):]: v for k, v in run.data.tags.items() if k.startswith(prefix)}


def test_all_measures_quick_on_a_fused_model(store):
    run, results = _evaluate(store, measures="all", preset="quick", accuracy_metric="generalisation_gap", seed=3)
    assert run.info.status == "FINISHED"
    params, metrics, warned = run.data.params, run.data.metrics, _warnings(run)
    assert params["preset"] == "quick" and params["sharpness_worst"] == "max" and params["seed"] == "3"
    assert params["accuracy_metric"] == "generalisation_gap"
    assert run.data.tags["ofexp.accuracy_metric"] == "generalisation_gap"
    assert params["budget.sharpness_depth"] == str(SearchBudget.quick().sharpness_depth)
    for name, measure in MEASURES.items():
        assert measure.metric_key in metrics or name in warned, f"{name}: neither logged nor warned"
        assert f"time/{name}" in metrics
        if name in warned:
            assert warned[name].strip() and "\n" not in warned[name]
    for search in context_module.SEARCHES:
        for key in SEARCH_KEYS:
            assert f"search/{search}/{key}" in metrics, (search, key)
        converged = metrics[f"search/{search}/converged"]
        assert converged in (0.0, 1.0)
        dependents = [n for n, m in MEASURES.items() if m.search == search]
        if converged == 0.0:  # reported, not hidden: warned, and the values still logged
            assert all(n in warned and MEASURES[n].metric_key in metrics for n in dependents), search
    if warned:
        assert set(run.data.tags["ofexp.warnings"].split(",")) == set(warned)
    # the trace of this ReLU net is exact: its method and (zero) sampling error are on the run
    assert run.data.tags["ofexp.hessian_trace_method"] == "exact"
    assert metrics["hessian/trace_stderr"] == 0 and metrics["hessian/trace_samples"] == 0
    assert metrics["param/hessian_trace"] > 0
    # results.csv: exactly the logged values, no blank cells
    assert list(results.columns) == ["Model", "Space", "Metric", "Value"]
    assert not results.isna().any().any()
    by_report_name = {m.report_name: m for m in MEASURES.values()}  # lipschitz is lipschitz_constant there
    logged = {m.report_name for m in MEASURES.values() if m.metric_key in metrics}
    assert set(results["Metric"]) == logged
    for _, row in results.iterrows():
        assert row["Value"] == pytest.approx(metrics[by_report_name[row["Metric"]].metric_key], rel=1e-12)

    # θ₀ of the fused model is the final weights of the parent farther from it, found through lineage
    fused = tracking.load_weights_from_run(store["fused"])
    finals = [tracking.load_weights_from_run(p) for p in store["parents"]]
    theta_fused = tracking.fetch_model_run(store["fused"]).model
    distances = [sum(float((fused[k] - f[k]).pow(2).sum()) for k in fused if fused[k].is_floating_point())
                 for f in finals]
    far, near = 0, 1  # the fused weights are 0.3·parent_1 + 0.7·parent_2: parent_1 is farther
    assert distances[far] > 2 * distances[near]
    chosen = reference_weights(store["fused"])
    assert all(chosen[k].equal(finals[far][k]) for k in finals[far])
    # ... and it is the θ₀ behind the logged sharpness_init: recompute it from the logged σ
    theta = parameter_vector(theta_fused)
    m = store["splits"].train_x.shape[0]
    sigma = metrics["search/sharpness/sigma"]
    if "param/sharpness_init" in metrics:
        def with_parent(i):
            return sharpness_init(sigma, theta, parameter_vector(_with_weights(theta_fused, finals[i])), m)
        assert metrics["param/sharpness_init"] == pytest.approx(with_parent(far), rel=1e-9)
        assert not math.isclose(metrics["param/sharpness_init"], with_parent(near), rel_tol=1e-6)


def _with_weights(model, state):
    import copy

    other = copy.deepcopy(model)
    other.load_state_dict(state)
    return other


def test_a_failing_measure_is_warned_and_the_others_still_log(store, monkeypatch):
    def broken(ctx):
        raise FloatingPointError("loss is nan\nsecond line")

    monkeypatch.setitem(MEASURES, "lipschitz", replace(MEASURES["lipschitz"], compute=broken))
    monkeypatch.setitem(MEASURES, "test_loss", replace(MEASURES["test_loss"], compute=lambda ctx: math.nan))
    run, results = _evaluate(store, measures="accuracy,lipschitz,test_loss,train_accuracy", preset="quick")
    assert run.info.status == "FINISHED"
    warned, metrics = _warnings(run), run.data.metrics
    assert set(warned) == {"lipschitz", "test_loss"}
    assert warned["lipschitz"] == "not computed: FloatingPointError: loss is nan"
    assert "not finite" in warned["test_loss"]
    assert "input/lipschitz" not in metrics and "prediction/test_loss" not in metrics
    assert {"prediction/accuracy", "prediction/train_accuracy", "time/lipschitz"} <= set(metrics)
    assert sorted(results["Metric"]) == ["accuracy", "train_accuracy"]
    assert run.data.tags["ofexp.warnings"] == "test_loss,lipschitz"  # table order


def test_a_search_that_does_not_converge_logs_values_diagnostics_and_warnings(store, monkeypatch, capsys):
    tiny = SearchBudget(sharpness_depth=1, sharpness_draws=1, ascent_steps=0, sharpness_batches=1)
    monkeypatch.setitem(context_module.PRESETS, "quick", lambda: tiny)
    run, results = _evaluate(store, measures="sharpness_flatness,sharpness_orig", preset="quick",
                             sharpness_worst="min")
    assert "warning: sharpness_flatness: sharpness: σ search did not converge" in capsys.readouterr().err
    assert run.info.status == "FINISHED" and run.data.params["sharpness_worst"] == "min"
    metrics, warned = run.data.metrics, _warnings(run)
    assert metrics["search/sharpness/converged"] == 0.0 and metrics["search/sharpness/steps"] == 1.0
    assert metrics["search/sharpness/sigma"] == pytest.approx(3.5)  # the midpoint of [0, 7]
    assert metrics["param/sharpness_flatness"] == pytest.approx(1 / 3.5**2)
    assert "param/sharpness_orig" in metrics
    assert set(warned) == {"sharpness_flatness", "sharpness_orig"}
    assert all("did not converge" in v for v in warned.values())
    assert sorted(results["Metric"]) == ["sharpness_flatness", "sharpness_orig"]


@pytest.mark.parametrize("option,value", [("preset", "slow"), ("sharpness_worst", "mean"),
                                          ("accuracy_metric", "f1")])
def test_bad_options_are_one_line_config_errors(option, value):
    with pytest.raises(ConfigError) as info:
        EvalConfig(model_run="0" * 32, **{option: value})
    message = str(info.value)
    assert "\n" not in message and repr(value) in message and f"--{option.replace('_', '-')}" in message


def test_a_tie_goes_to_the_first_listed_parent(store):
    """Naive fusion at equal weights lies halfway: the rule ties, and the first parent is taken."""
    first = tracking.load_weights_from_run(store["parents"][0])
    chosen = reference_weights(store["halfway"])
    assert all(chosen[k].equal(first[k]) for k in first)


def test_parent_distance_counts_parameters_not_batchnorm_statistics():
    from ofexp.pipeline.steps.evaluate import squared_distance

    fused = {"w": torch.zeros(3), "bn.running_var": torch.ones(3)}
    near_params = {"w": torch.full((3,), 0.1), "bn.running_var": torch.full((3,), 100.0)}
    far_params = {"w": torch.full((3,), 1.0), "bn.running_var": torch.ones(3)}
    assert squared_distance(fused, near_params, {"w"}) == pytest.approx(0.03)
    assert squared_distance(fused, far_params, {"w"}) == pytest.approx(3.0)
    # counting the statistics would flip which parent is farther
    assert squared_distance(fused, near_params) > squared_distance(fused, far_params)


@pytest.mark.parametrize("measures,expected", [
    ("prediction", {"model_run", "measures", "device", "accuracy_metric"}),
    ("accuracy,lipschitz", {"model_run", "measures", "device", "accuracy_metric", "seed"}),
    ("accuracy,pac_bayes_flatness", {"model_run", "measures", "device", "accuracy_metric", "seed", "preset"}),
    ("accuracy,sharpness_flatness",
     {"model_run", "measures", "device", "accuracy_metric", "seed", "preset", "sharpness_worst"}),
])
def test_an_evaluate_run_logs_only_the_params_its_measures_use(measures, expected):
    # budget.*, preset and sharpness_worst change no prediction value: a prediction-only run
    # that carried them would claim settings it never used, and split the study's cache on them
    from ofexp.pipeline.steps.evaluate import evaluate_params

    params = evaluate_params(EvalConfig(model_run="0" * 32, measures=measures, preset="quick"))
    assert {k for k in params if not k.startswith("budget.")} == expected
    assert any(k.startswith("budget.") for k in params) == ("preset" in expected)
