"""A step's identity changes with every option that changes its result, for every stage.

The identity is what a study matches to reuse a FINISHED run instead of redoing a step
(the local cache, and the Slurm digest). An option that changes what a step computes but
is left out of it lets a study reuse a run made with another value: the naive fusion's
--recompute-bn was such an option (this test failed on it before 'recompute_bn' became one
of the naive fusion's params). Each config field is either changed here (and the
identity must change), or listed in NOT_RESULT with why it does not change the result, so
a new field that is in neither fails this test until someone decides.
"""
from __future__ import annotations

from dataclasses import fields, is_dataclass, replace

import pytest

from ofexp.data import DataConfig
from ofexp.data.model_input import ModelInput
from ofexp.pipeline.steps.ensemble import EnsembleConfig
from ofexp.pipeline.steps.evaluate import EvalConfig, evaluate_params
from ofexp.pipeline.engines.cluster_steps import plan_study, step_digest
from ofexp.pipeline.study.run import StudyConfig
from ofexp.pipeline.steps.finetune import FinetuneConfig, finetune_params, finetune_train_config
from ofexp.pipeline.steps.fuse import FuseConfig
from ofexp.pipeline.steps.train import TrainConfig
from ofexp.models import ModelSpec
from ofexp.tracking import cache
from ofexp.training import make_recipe

# Fields that change nothing a step computes, with the reason.
NOT_RESULT = {
    "run_name": "a name", "progress": "progress bars", "register_as": "a Model Registry name",
    "log_model": "also logs a served copy of the same weights", "label": "results.csv's row name",
    "allow_unfinished": "which runs are accepted, not what is computed",
    "recorded_by": "which run recorded the data (an error message's hint)",
    "expect": "options checked against the source run, which fixes them",
    "data_dir": "where the data is read; the data set, split and size are in the identity",
    "download": "whether missing data may be downloaded; the same data either way",
}
# Fields a fusion method does not read: changing them changes nothing it computes.
NOT_READ_BY = {
    "naive": {"alignment", "solver", "reg", "target", "activation_samples", "activation_seed", "repair",
              "interpolation", "curve_samples"},
    "geometric": set(),
}
# Other values for fields whose change cannot be derived from the type: the first that differs is used.
OTHER_VALUES = {
    "model": ("vgg11", "mlp"), "name": ("fashion_mnist", "digits"), "init": ("kaiming", "default"),
    "schedule": ("cosine", "multistep"), "milestones": ((1, 2), (3,)), "fusion_weights": ((0.3, 0.7),),
    "solver": ("sinkhorn", "exact"), "alignment": ("weights", "activations"), "target": (0, 1),
    "measures": ("input,parameter", "all"), "preset": ("quick", "report"), "sharpness_worst": ("min", "max"),
    "accuracy_metric": ("generalisation_gap", "accuracy"), "device": ("cpu", "auto"), "base_recipe": ("vgg", "default"),
    "pixels": ("normalized", "unit"), "channels": (3, 1), "val_fraction": (0.2, 0.1), "momentum": (0.5, 0.9), "gamma": (0.5, 0.1),
}


def _changed(name: str, value):
    if name in OTHER_VALUES:
        return next(other for other in OTHER_VALUES[name] if other != value)
    if isinstance(value, bool):
        return not value
    if isinstance(value, (int, float)):
        return value + 1
    if isinstance(value, str):  # a run ID or a model URI
        return value + "-other"
    if isinstance(value, tuple) and value and isinstance(value[-1], str):  # parent runs or URIs
        return (*value[:-1], value[-1] + "-other")
    raise AssertionError(f"no changed value for field {name!r} ({value!r}): add one to OTHER_VALUES")


def _variants(cfg, skip: set[str] = frozenset()):
    """(dotted field name, cfg with that one field changed) for every field of cfg, nested ones included."""
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        if f.name in NOT_RESULT or f.name in skip or f.name == "model_kwargs":
            continue
        if f.name == "methods":
            continue  # the method is the identity's own (the stage's kind): see test_the_fusion_method
        if is_dataclass(value):
            for name, inner in _variants(value, skip):
                yield f"{f.name}.{name}", replace(cfg, **{f.name: inner})
        elif value is None and f.name == "model_input":
            continue  # a model by URI: its own case below
        else:
            yield f.name, replace(cfg, **{f.name: _changed(f.name, value)})


def local_identity(stage: str, params: dict, tags: dict) -> str:
    """What the local study's cache matches a finished run on (`cache.find_finished_run`)."""
    return cache.step_identity(stage, params, tags)


def _train(cfg: TrainConfig) -> tuple:
    return local_identity("train", cfg.params(), {})


def _fuse(method: str):
    def identity(cfg: FuseConfig) -> tuple:
        return local_identity("fuse", cfg.params(method), {"ofexp.parent_run_ids": ",".join(cfg.parents)})
    return identity


def _evaluate(cfg: EvalConfig) -> tuple:
    return local_identity("evaluate", evaluate_params(cfg), {})


SPEC = ModelSpec(arch="mlp", num_classes=10, in_channels=1, input_size=32)


def _finetune(cfg: FinetuneConfig) -> tuple:
    return local_identity("train", finetune_params(cfg, finetune_train_config(cfg, SPEC, cfg.data)), {})


def _ensemble(cfg: EnsembleConfig) -> tuple:
    return local_identity("ensemble", cfg.params(), {})


BY_URI = ModelInput(DataConfig(name="digits"))
STAGES = {
    "train": (TrainConfig(recipe=make_recipe("default")), _train, set()),
    "fuse naive": (FuseConfig(parents=("run-a", "run-b"), methods=("naive",)), _fuse("naive"), NOT_READ_BY["naive"]),
    "fuse geometric": (FuseConfig(parents=("run-a", "run-b"), methods=("geometric",)), _fuse("geometric"), set()),
    "fuse naive by URI": (FuseConfig(parents=("runs:/a/model", "runs:/b/model"), methods=("naive",),
                                     model_input=BY_URI), _fuse("naive"), NOT_READ_BY["naive"]),
    "evaluate": (EvalConfig(model_run="run-a", measures="all"), _evaluate, set()),
    "evaluate by URI": (EvalConfig(model_run="runs:/a/model", measures="all", model_input=BY_URI), _evaluate, set()),
    "finetune": (FinetuneConfig(source="run-a", data=DataConfig()), _finetune, set()),
    "ensemble": (EnsembleConfig(parents=("run-a", "run-b")), _ensemble, set()),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_every_option_that_changes_the_result_changes_the_identity(stage):
    base, identity, not_read = STAGES[stage]
    unchanged = [name for name, changed in _variants(base, skip=not_read) if identity(changed) == identity(base)]
    assert unchanged == [], f"{stage}: changing {unchanged} leaves the step's identity as it was"


@pytest.mark.parametrize("stage", ["fuse naive", "fuse geometric"])
def test_options_a_fusion_method_does_not_read_leave_its_identity(stage):
    """The converse, so that the method's runs are reused: an option it ignores is not in its identity."""
    base, identity, not_read = STAGES[stage]
    changed = [name for name, cfg in _variants(base) if name in not_read and identity(cfg) != identity(base)]
    assert changed == []


def test_the_fusion_method_is_part_of_the_identity():
    cfg = FuseConfig(parents=("run-a", "run-b"))
    assert _fuse("naive")(cfg) != _fuse("geometric")(cfg)


# --- the Slurm engine: each step's identity is made from the command it submits -----------------

def _slurm_identities(cfg: StudyConfig) -> dict[str, str]:
    """{step key: identity} of a 1-seed study's Slurm (and Kubernetes) steps, upstream run IDs named after
    their steps."""
    steps = plan_study(cfg)
    run_ids = {step.key: f"run-of-{step.key}" for step in steps}
    return {step.key: step_digest(step, step.resolved(run_ids)) for step in steps}


STUDY = StudyConfig(train=TrainConfig(recipe=make_recipe("default")), seeds=(1,))
# The train options a study's steps run with (a recipe's other fields come with its name).
STUDY_TRAIN = ("model", "width", "bias", "batchnorm", "device", "data.name", "data.val_fraction",
               "data.split_seed", "data.image_size", "recipe.epochs", "recipe.batch_size", "recipe.lr",
               "recipe.weight_decay", "recipe.init", "recipe.warmup_epochs", "recipe.grad_clip",
               "speed.channels_last", "speed.compile", "speed.tf32")


def _study_variants():
    for name, train in _variants(STUDY.train):
        if name in STUDY_TRAIN:
            yield "train", name, replace(STUDY, train=train)
    for name, fusion in _variants(STUDY.fusion):
        yield "fuse", name, replace(STUDY, fusion=fusion)
    for name, evaluation in _variants(STUDY.evaluation):
        yield "evaluate", name, replace(STUDY, evaluation=evaluation)


@pytest.mark.parametrize("stage,name,changed", list(_study_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_study_option_changes_the_slurm_identity_of_its_stages_steps(stage, name, changed):
    before, after = _slurm_identities(STUDY), _slurm_identities(changed)
    same = [key for key in before if key.startswith(stage) and before[key] == after.get(key)]
    assert same == [], f"changing {name} leaves the Slurm identity of {same}"


# The options a fine-tuning step runs with: the study's recipe but for its epochs (--finetune-epochs) and
# warm-up (none), device and speed flags; its network and data come from the fused run it starts from.
FINETUNE_TRAIN = ("device", "recipe.batch_size", "recipe.lr", "recipe.weight_decay", "recipe.grad_clip",
                  "speed.channels_last", "speed.compile", "speed.tf32")
FINETUNING = replace(STUDY, finetune_epochs=1)


def _finetuning_variants():
    yield "finetune_epochs", replace(FINETUNING, finetune_epochs=2)
    for name, train in _variants(FINETUNING.train):
        if name in FINETUNE_TRAIN:
            yield name, replace(FINETUNING, train=train)


@pytest.mark.parametrize("name,changed", list(_finetuning_variants()), ids=lambda v: v if isinstance(v, str) else "")
def test_every_fine_tuning_option_changes_the_cluster_identity_of_the_finetune_steps(name, changed):
    before, after = _slurm_identities(FINETUNING), _slurm_identities(changed)
    tuned = [key for key in before if key.startswith("finetune-")]
    assert len(tuned) == 2 and [key for key in tuned if before[key] == after[key]] == [], name


def test_the_ensemble_step_is_told_apart_from_the_fusions_of_the_same_parents():
    identities = _slurm_identities(FINETUNING)
    assert len(set(identities.values())) == len(identities)
    assert identities["ensemble-seed1"] != _slurm_identities(replace(
        FINETUNING, train=replace(FINETUNING.train, device="cpu")))["ensemble-seed1"]
