"""The study plan: the one study graph, and what the engines and the progress line read from it."""
from __future__ import annotations

import re
from collections import Counter
from dataclasses import replace

import pytest

from ofexp.pipeline.steps.options import FusionOptions
from ofexp.pipeline.engines.cluster_steps import plan_study
from ofexp.pipeline.study.run import StudyConfig, planned_step_count, planned_steps
from ofexp.pipeline.study.plan import KIND_ORDER, plan, study_kinds
from ofexp.pipeline.study.widths import split_width


def test_each_step_takes_only_models_its_seed_made_before_it():
    cfg = StudyConfig(seeds=(1, 2), finetune_epochs=2)
    made: set[tuple[int, str]] = set()
    for step in plan(cfg):
        assert all((step.seed, kind) in made for kind in step.inputs), step
        if step.makes_model:
            made.add((step.seed, step.kind))
    assert made == {(s, k) for s in (1, 2) for k in KIND_ORDER}  # a fine-tuning study makes every kind


def test_the_plan_says_how_each_model_is_made():
    steps = {(s.kind, s.stage): s for s in plan(StudyConfig(seeds=(3,), finetune_epochs=2))}
    assert steps["parent_2", "train"].config.seed == 302 and steps["parent_2", "train"].inputs == ()
    assert steps["ensemble", "ensemble"].inputs == ("parent_1", "parent_2")
    assert steps["naive_fused", "fuse"].config.methods == ("naive",)
    tuned = steps["geometric_finetuned", "train"]
    assert tuned.inputs == ("geometric_fused",) and tuned.config.recipe.epochs == 2 and tuned.config.seed == 300
    assert steps["geometric_finetuned", "evaluate"].inputs == ("geometric_finetuned",)
    assert tuned.run_name == "s3 geo+ft train"


def test_only_the_chosen_methods_are_planned_and_finetuning_adds_three_kinds():
    geometric = StudyConfig(fusion=FusionOptions(methods=("geometric",)))
    assert study_kinds(geometric) == ("parent_1", "parent_2", "geometric_fused")
    assert study_kinds(StudyConfig(finetune_epochs=1)) == KIND_ORDER


@pytest.mark.parametrize("finetune_epochs", [0, 1])
def test_progress_and_the_step_count_read_the_plan(finetune_epochs):
    cfg = StudyConfig(seeds=(1, 4, 5), finetune_epochs=finetune_epochs)
    steps = plan(cfg)
    assert planned_steps(cfg, cfg.seeds) == [(s.kind, s.stage) for s in steps]
    assert planned_step_count(cfg) == len(steps)


@pytest.mark.parametrize("finetune_epochs", [0, 1])
@pytest.mark.parametrize("widths", [(), (0.25, 0.5, 1.0)], ids=["one width", "widths"])
def test_the_cluster_engines_run_the_plans_steps_with_its_inputs(finetune_epochs, widths):
    cfg = StudyConfig(seeds=(1, 2), finetune_epochs=finetune_epochs, widths=widths)
    cluster = plan_study(cfg)
    assert len({step.key for step in cluster}) == len(cluster), "one key per step"
    assert all(re.fullmatch(r"[a-z0-9-]+", step.key) for step in cluster), "keys that name Kubernetes objects"
    assert Counter((s.seed, s.kind, s.stage) for s in cluster) == Counter((s.seed, s.kind, s.stage) for s in plan(cfg))
    made_by = {step.key: step.kind for step in cluster}
    planned = {(s.seed, s.kind, s.stage): s for s in plan(cfg)}
    for step in cluster:
        assert tuple(made_by[k] for k in step.needs) == planned[step.seed, step.kind, step.stage].inputs
        assert step.run_name == planned[step.seed, step.kind, step.stage].run_name, "the local study's run name"


def test_a_fine_tuning_runs_on_a_cluster_as_train_from_the_fused_run_with_the_plans_recipe():
    cfg = StudyConfig(seeds=(3,), finetune_epochs=2)
    steps = {(s.kind, s.stage): s for s in plan_study(cfg)}
    tuned, planned = steps["geometric_finetuned", "train"], {(s.kind, s.stage): s for s in plan(cfg)}
    recipe = planned["geometric_finetuned", "train"].config.recipe
    assert tuned.entry_point == "finetune" and tuned.inputs == {"init_from": (steps["geometric_fused", "fuse"].key,)}
    assert (tuned.params["epochs"], float(tuned.params["lr"]), tuned.params["seed"]) == ("2", recipe.lr, "300")
    assert tuned.params["recipe"] == cfg.train.recipe.name  # the base recipe, as `ofexp train --init-from` takes it
    ensemble = steps["ensemble", "ensemble"]
    assert ensemble.entry_point == "ensemble" and set(ensemble.inputs["parents"]) == {
        steps["parent_1", "train"].key, steps["parent_2", "train"].key}


@pytest.mark.parametrize("finetune_epochs", [0, 1])
def test_a_width_studys_cluster_steps_are_the_local_plans_steps_names_and_configs(finetune_epochs):
    """`ofexp study --widths --backend slurm|kubernetes`: each train step's command, as `ofexp train` reads
    it, is the local plan's config at its width; each step carries the local run name; fine-tunings start
    from the fused run of their own width."""
    from click import Context

    from ofexp.cli import cli
    from ofexp.cli.options import pop_train_config

    cfg = StudyConfig(seeds=(1, 2), finetune_epochs=finetune_epochs, widths=(0.25, 0.5))
    planned = {(s.seed, s.kind, s.stage): s for s in plan(cfg)}
    cluster = plan_study(cfg)
    assert sorted((s.seed, s.kind, s.stage, s.run_name) for s in cluster) == sorted(
        (s.seed, s.kind, s.stage, s.run_name) for s in planned.values())
    by_key = {s.key: s for s in cluster}
    group = Context(cli, info_name="ofexp", **cli.context_settings)
    for step in cluster:
        local = planned[step.seed, step.kind, step.stage]
        if step.entry_point == "train":
            args = [word for k, v in step.params.items() for word in (f"--{k}", v)]
            read = pop_train_config(dict(cli.get_command(None, "train").make_context("train", args,
                                                                                     parent=group).params))
            assert read == replace(local.config, run_name=None), step.key
            assert float(step.params["width"]) == split_width(step.kind)[1] == local.config.width
        for key in step.needs:  # an input of its own width
            assert split_width(by_key[key].kind)[1] == split_width(step.kind)[1], (step.key, key)
