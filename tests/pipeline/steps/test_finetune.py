"""Fine-tuning (`ofexp train --init-from`): starts from the source run's exact weights, names it, refuses bad input."""
from __future__ import annotations

import mlflow
import pandas as pd
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import run_cli_in_process, sqlite_store_with_parents, using_tracking_uri
from ofexp import tracking
from ofexp.errors import ConfigError, RunLookupError
from ofexp.pipeline.steps.evaluate import EvalConfig, run_evaluate
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse
from ofexp.pipeline.steps.train import TrainConfig
from ofexp.pipeline.steps.options import FusionOptions
from ofexp.pipeline.steps.finetune import (FINETUNE_EPOCHS, TAG_INIT_FROM, TAG_INIT_FROM_STAGE, FinetuneConfig,
                                     finetune_config_from_options, finetune_recipe, run_finetune)
from ofexp.training import make_recipe


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two tiny batch-norm MLP parents, their geometric fusion and an evaluate run, in a fresh SQLite store."""
    uri, parents, splits, experiment_id = sqlite_store_with_parents(tmp_path_factory.mktemp("finetune-store"),
                                                                    "finetune-tests", batchnorm=True)
    with using_tracking_uri(uri):
        mlflow.set_experiment(experiment_id=experiment_id)
        fused = run_fuse(FuseConfig(parents=parents, methods=("geometric",), device="cpu"), splits)["geometric"]
        evaluation = run_evaluate(EvalConfig(model_run=parents[0], device="cpu", progress=False), splits)
        yield {"splits": splits, "parents": parents, "fused": fused, "evaluation": evaluation,
               "client": MlflowClient(), "experiment_id": experiment_id}


def _finetune(store, source: str, **kw) -> str:
    cfg = FinetuneConfig(source=source, recipe=finetune_recipe(epochs=1), device="cpu", log_model=False,
                         progress=False, **kw)
    return run_finetune(cfg, store["splits"])


def _runs(store) -> list:
    return store["client"].search_runs([store["experiment_id"]], max_results=1000)


@pytest.mark.parametrize("source", ["fused", "parent"])
def test_initial_weights_are_the_source_weights_bit_for_bit(store, source):
    source_id = store["fused"] if source == "fused" else store["parents"][0]
    run_id = _finetune(store, source_id)
    run = store["client"].get_run(run_id)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG_INIT_FROM] == source_id
    assert run.data.tags[TAG_INIT_FROM_STAGE] == ("fuse" if source == "fused" else "train")
    assert run.data.tags[tracking.TAG_STAGE] == "train" and run.data.params["init_from"] == source_id
    source_weights = tracking.load_weights_from_run(source_id)  # fused.pt, or the parent's final.pt
    initial = tracking.load_weights_from_run(run_id, "initial")
    assert initial.keys() == source_weights.keys()
    for key, value in source_weights.items():
        assert initial[key].dtype == value.dtype and torch.equal(initial[key], value), key
    # it did train: the final weights moved away from the source
    final = tracking.load_weights_from_run(run_id, "final")
    assert not torch.equal(final["classifier.weight"], source_weights["classifier.weight"])
    assert tracking.load_spec_from_run(run_id)[0] == tracking.load_spec_from_run(source_id)[0]


def test_finetune_recipe_is_short_slow_and_without_warmup():
    default, tuned = make_recipe("default"), finetune_recipe()
    assert tuned.name == "finetune" and tuned.epochs == FINETUNE_EPOCHS < default.epochs
    assert tuned.lr == pytest.approx(default.lr / 10) and tuned.warmup_epochs == 0
    assert finetune_recipe(epochs=5, lr=0.02).lr == 0.02  # explicit options win


def test_contradicting_spec_is_refused_before_any_run(store):
    before = len(_runs(store))
    cfg = finetune_config_from_options(store["fused"], {"model": "mlp", "width": 0.5, "batchnorm": False})
    with pytest.raises(ConfigError, match=r"--width 0.5 \(run: 0.125\), --batchnorm false \(run: true\)"):
        run_finetune(cfg, store["splits"])
    assert len(_runs(store)) == before
    # options that agree with the source are fine to repeat
    agreeing = finetune_config_from_options(store["fused"], {"model": "mlp", "width": 0.125, "dataset": "digits"})
    assert agreeing.expect == (("model", "mlp"), ("width", 0.125), ("dataset", "digits"))


@pytest.mark.parametrize("given,words", [({"init": "kaiming"}, "--init kaiming"),
                                         ({"recipe": "nonesuch"}, "unknown --recipe")])
def test_options_that_make_no_sense_for_finetuning_are_refused(given, words):
    with pytest.raises(ConfigError, match=words):
        finetune_config_from_options("0123456789abcdef0123456789abcdef", given)


def test_evaluate_run_as_source_is_refused_without_a_run(store):
    before = len(_runs(store))
    with pytest.raises(RunLookupError, match="is an evaluate run, not a train or fuse run"):
        _finetune(store, store["evaluation"])
    assert len(_runs(store)) == before
    assert not [r for r in _runs(store) if r.info.status == "RUNNING"]


@pytest.mark.slow
def test_cli_finetunes_by_run_id_and_refuses_bad_input(tiny_runs, capsys):
    exp = ["--experiment-name", "finetune-cli"]
    ok = run_cli_in_process(["train", "--init-from", tiny_runs.fused["geometric"], "--epochs", "1",
                             "--no-log-model", "--model", "mlp", *exp], tiny_runs.server.uri, capsys)
    assert ok.returncode == 0, ok.stderr[-2000:]
    bad = [
        (["--init-from", tiny_runs.evaluations["parent_1"]], "not a train or fuse run"),
        (["--init-from", tiny_runs.parent_1, "--width", "1.0"], "--width 1.0 (run: 0.25)"),
        (["--init-from", tiny_runs.parent_1, "--model", "vgg11"], "--model vgg11 (run: mlp)"),
        (["--init-from", tiny_runs.parent_1, "--resume", tiny_runs.parent_1], "exclude each other"),
    ]
    for args, words in bad:
        result = run_cli_in_process(["train", *args, *exp], tiny_runs.server.uri, capsys)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode != 0 and "Traceback" not in result.stderr
        assert len(errors) == 1 and words in errors[0], result.stderr[-2000:]
    with using_tracking_uri(tiny_runs.server.uri):
        client = MlflowClient()
        experiment = client.get_experiment_by_name("finetune-cli")
        found = client.search_runs([experiment.experiment_id])
    assert [r.info.run_id for r in found] == [ok.last_line]  # the refused commands left no run at all
    assert found[0].info.status == "FINISHED"
    assert found[0].data.tags[TAG_INIT_FROM] == tiny_runs.fused["geometric"]


@pytest.mark.slow  # two one-seed studies in-process: seconds on an idle machine, but 7 models each
def test_study_with_finetune_epochs_adds_the_ensemble_and_both_finetuned_fusions(store):
    from ofexp.pipeline.study.report import study_steps
    from ofexp.tracking import queries
    from ofexp.pipeline.study.run import StudyConfig, run_study

    tcfg = TrainConfig(model="mlp", width=0.125, recipe=make_recipe(epochs=1), log_model=False, progress=False,
                       device="cpu")
    cfg = StudyConfig(train=tcfg, seeds=(1,), finetune_epochs=1, fusion=FusionOptions(methods=("naive", "geometric")))
    client = store["client"]
    study = client.get_run(run_study(cfg))
    kinds = ["parent_1", "parent_2", "ensemble", "naive_fused", "geometric_fused", "naive_finetuned",
             "geometric_finetuned"]  # the paper's Table 2 layout
    summary = pd.read_csv(client.download_artifacts(study.info.run_id, "summary.csv"))
    assert list(dict.fromkeys(summary["Kind"])) == kinds
    assert study.data.tags["ofexp.kinds"] == ",".join(kinds)  # what `ofexp report` rebuilds the order from
    steps = pd.read_csv(client.download_artifacts(study.info.run_id, "steps.csv"))
    made = {(r.kind, r.stage): r.run_id for r in steps.itertuples()}
    for method in ("naive", "geometric"):
        finetuned = client.get_run(made[(f"{method}_finetuned", "train")])
        assert finetuned.data.tags[TAG_INIT_FROM] == made[(f"{method}_fused", "fuse")]
        assert finetuned.data.params["epochs"] == "1" and finetuned.data.params["recipe"] == "finetune"
    ensemble = client.get_run(made[("ensemble", "ensemble")])
    assert ensemble.data.tags[tracking.TAG_PARENTS] == f"{made[('parent_1', 'train')]},{made[('parent_2', 'train')]}"
    assert set(kinds) == {kind for kind, stage in made if stage == "evaluate"}
    assert study.data.params["finetune_epochs"] == "1"
    rebuilt, _ = study_steps(queries.get_run_data(study.info.run_id))  # what `ofexp report` reads
    assert set(zip(rebuilt["kind"], rebuilt["stage"])) == set(made)
    # the steps' params are known before they run: a second study reuses every one of them
    again = client.get_run(run_study(cfg))
    assert again.data.metrics["steps/reused"] == len(steps) and again.data.metrics["steps/new"] == 0
