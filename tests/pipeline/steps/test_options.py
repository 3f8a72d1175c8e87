"""The options are defined once, as `option()` fields (ofexp.options): fusion and evaluate
(ofexp.pipeline.steps.options), train (TrainConfig), data (DataConfig), recipe (RecipeOptions) and
speed (SpeedOptions). The CLI, the cluster engines' step commands and the run params derive from them.

The MLproject files' defaults are held to the CLI's, and so to these definitions, by tests/test_packaging.py.
"""
from __future__ import annotations

import json
from dataclasses import replace

import click
import pytest

from ofexp.cli import cli
from ofexp.cli.options import SEED
from ofexp.data import DataConfig
from ofexp.data.model_input import PIXELS, ModelInput
from ofexp.errors import ConfigError
from ofexp.options import (command_params, option_choices, option_fields, option_help, option_name, option_values,
                           show_value)
from ofexp.pipeline.steps.options import EvaluateOptions, FusionOptions
from ofexp.pipeline.steps.train import NOT_PARAMS, TrainConfig
from ofexp.training import RecipeOptions, SpeedOptions
from ofexp.pipeline.study.run import StudyConfig, study_params


# A value other than the default for every option: rendering and parsing must carry each one.
CHANGED_FUSION = FusionOptions(methods=("geometric",), fusion_weights=(0.25, 0.75), target=0, solver="sinkhorn",
                               reg=0.05, alignment="weights", activation_samples=64, activation_seed=5, repair=True, recompute_bn=False,
                               interpolation=False,
                               curve_samples=500)
CHANGED_EVALUATE = EvaluateOptions(measures="accuracy,lipschitz", preset="quick", sharpness_worst="min",
                                   accuracy_metric="generalisation_gap", seed=7)


def _parsed(command: str, args: list[str]) -> dict:
    group = click.Context(cli, info_name="ofexp", **cli.context_settings)
    return cli.get_command(None, command).make_context(command, args, parent=group).params


def _as_args(params: dict[str, str]) -> list[str]:
    # as MLflow appends undeclared parameters to a command: --name value
    return [word for key, value in params.items() for word in (f"--{key}", value)]


@pytest.mark.parametrize("options, cls", [(CHANGED_FUSION, FusionOptions), (CHANGED_EVALUATE, EvaluateOptions)])
def test_every_option_differs_from_its_default_in_the_fixture(options, cls):
    changed = {f.name for f in option_fields(cls) if getattr(options, f.name) != f.default}
    assert changed == {f.name for f in option_fields(cls)}, "a new option needs a changed value here"


def test_fusion_options_render_into_a_command_that_the_cli_reads_back():
    from ofexp.cli.options import pop_typed_options

    params = _parsed("fuse", ["--parents", "A,B", *_as_args(command_params(CHANGED_FUSION))])
    assert FusionOptions(**pop_typed_options(FusionOptions, dict(params))) == CHANGED_FUSION


def test_evaluate_options_render_into_a_command_that_the_cli_reads_back():
    from ofexp.cli.options import pop_typed_options

    params = _parsed("evaluate", ["--model-run", "A", *_as_args(command_params(CHANGED_EVALUATE))])
    assert EvaluateOptions(**pop_typed_options(EvaluateOptions, dict(params))) == CHANGED_EVALUATE


@pytest.mark.parametrize("command, cls", [("fuse", FusionOptions), ("evaluate", EvaluateOptions),
                                          ("study", FusionOptions), ("study", EvaluateOptions)])
def test_the_cli_defaults_and_choices_are_the_definitions(command, cls):
    by_name = {p.name: p for p in cli.get_command(None, command).params}
    for f in option_fields(cls):
        if command == "study" and f.name == "seed":
            assert f.name not in by_name, "a study measures every model with the same draws"
            continue
        param = by_name[option_name(f)]
        if isinstance(f.default, bool):
            continue  # a flag: default None, resolved by pop_flag from the definition
        assert param.default == (show_value(f, f.default) if f.metadata["choices"] else f.default), f.name
        if f.metadata["choices"]:
            assert tuple(param.type.choices) == option_choices(f), f.name


def test_a_study_logs_every_option_it_used():
    cfg = StudyConfig(fusion=replace(CHANGED_FUSION, methods=("naive", "geometric")), evaluation=replace(
        CHANGED_EVALUATE, seed=0))
    params = study_params(cfg)
    values = option_values(cfg.fusion)
    assert params["method"] == "naive,geometric" and params["fusion_weights"] == (0.25, 0.75)
    for name in ("target", "solver", "reg", "alignment", "activation_samples", "repair", "recompute_bn",
                 "interpolation", "curve_samples"):
        assert params[name] == values[name], name
    assert params["preset"] == "quick" and params["sharpness_worst"] == "min"
    assert params["measures"].split(",") == ["accuracy", "generalisation_gap", "lipschitz"]


# --- the train, data and recipe options ------------------------------------------------------

TRAIN_CLASSES = (TrainConfig, DataConfig, RecipeOptions, SpeedOptions)
CHANGED_TRAIN = TrainConfig(
    model="vgg11", width=0.5, bias=True, batchnorm=True, seed=7, device="cpu", log_model=False,
    data=DataConfig(name="cifar10", data_dir="/srv/cifar", val_fraction=0.2, split_seed=3, image_size=16,
                    download=False),
    recipe=RecipeOptions(recipe="report", epochs=2, batch_size=32, lr=0.05, weight_decay=0.001, init="kaiming",
                         warmup_epochs=0.5, grad_clip=2.0).resolve(),
    speed=SpeedOptions(channels_last=True, compile=True, tf32=True),
)
# A torchvision model takes --model-kwargs (and not --width, --bias, --batchnorm).
CHANGED_KWARGS = replace(TrainConfig(), model="torchvision:mobilenet_v2", model_kwargs={"width_mult": 0.5})


def _changed_train_options(cls: type) -> set[str]:
    obj = {TrainConfig: CHANGED_TRAIN, DataConfig: CHANGED_TRAIN.data, SpeedOptions: CHANGED_TRAIN.speed,
           RecipeOptions: RecipeOptions.of(CHANGED_TRAIN.recipe)}[cls]
    return {f.name for f in option_fields(cls) if getattr(obj, f.name) != f.default}


@pytest.mark.parametrize("cls", TRAIN_CLASSES)
def test_every_train_option_differs_from_its_default_in_the_fixture(cls):
    expected = {f.name for f in option_fields(cls)} - ({"model_kwargs"} if cls is TrainConfig else set())
    assert _changed_train_options(cls) >= expected, "a new option needs a changed value here"


@pytest.mark.parametrize("cfg", [CHANGED_TRAIN, CHANGED_KWARGS], ids=["own model", "torchvision model"])
def test_train_options_render_into_a_command_that_the_cli_reads_back(cfg):
    """What a cluster engine passes to a train step (TrainConfig.command_params) gives the same config."""
    from ofexp.cli.options import pop_train_config

    params = _parsed("train", _as_args(cfg.command_params()))
    assert pop_train_config(dict(params)) == cfg


def test_a_study_passes_every_train_option_but_the_seed_to_its_train_steps():
    from ofexp.cli.options import pop_train_config

    params = _parsed("study", _as_args({k: v for k, v in CHANGED_TRAIN.command_params().items() if k != "seed"}))
    assert pop_train_config(dict(params), exclude=("seed",)) == replace(CHANGED_TRAIN, seed=0)


@pytest.mark.parametrize("command", ["train", "study"])
@pytest.mark.parametrize("cls", TRAIN_CLASSES)
def test_the_train_commands_defaults_help_and_choices_are_the_definitions(command, cls):
    by_name = {p.name: p for p in cli.get_command(None, command).params}
    for f in option_fields(cls):
        if command == "study" and f.name == "seed":
            assert "seed" not in by_name, "a study's parents take their seeds from --seeds"
            continue
        param = by_name[option_name(f)]
        assert param.help.startswith(option_help(f)), f.name
        if isinstance(f.default, bool):
            continue  # a flag: default None, resolved by pop_flag from the definition
        assert param.default == (show_value(f, f.default) if option_choices(f) or f.metadata["show"] else f.default)
        if option_choices(f):
            assert tuple(param.type.choices) == option_choices(f), f.name


def test_the_run_params_are_the_options_and_the_resolved_recipe():
    params = CHANGED_TRAIN.params()
    names = {option_name(f) for cls in (TrainConfig, DataConfig, SpeedOptions) for f in option_fields(cls)}
    recipe = set(CHANGED_TRAIN.recipe.to_params())  # momentum, schedule, milestones, gamma too
    assert set(params) == (names - set(NOT_PARAMS)) | recipe
    assert params["dataset"] == "cifar10" and params["data_dir"] == "/srv/cifar" and params["download"] == "false"
    assert params["epochs"] == "2" and params["momentum"] == "0.9" and params["bias"] == "true"
    assert DataConfig(name="cifar10").to_params()["data_dir"] == "./data", "the folder as read: the data set's default"


@pytest.mark.parametrize("command", ["fuse", "evaluate"])
def test_the_data_options_of_models_by_uri_are_the_data_options(command):
    """--dataset, --data-dir, --image-size and --split-seed of a model given by URI: DataConfig's, under
    their own names (input_*), with no default data set (the fuse run's record gives it)."""
    by_name = {p.name: p for p in cli.get_command(None, command).params}
    for f in option_fields(DataConfig):
        if f.name in ("download", "val_fraction"):
            # not options of models by URI: their data is read where it is, never fetched, and held out at
            # the default --val-fraction
            assert f"input_{f.name}" not in by_name
            continue
        param = by_name[f"input_{option_name(f)}"]
        assert param.opts == [f"--{option_name(f).replace('_', '-')}"]
        assert param.default == (None if f.name == "name" else f.default), f.name
        if option_choices(f):
            assert tuple(param.type.choices) == option_choices(f)
    assert by_name["input_split_seed"].type is SEED


BY_URI_INPUT = ModelInput(DataConfig(name="digits", image_size=16, download=False), channels=3, pixels="normalized")


@pytest.mark.parametrize("command", ["fuse", "evaluate"])
def test_channels_and_pixels_are_model_inputs_option_fields(command):
    """--channels and --pixels of a model given by URI: ModelInput's fields, read back from their rendering
    (its run param 'data', "the data set's own channels", included)."""
    from ofexp.cli.model_input_options import pop_model_input

    by_name = {p.name: p for p in cli.get_command(None, command).params}
    for f in option_fields(ModelInput):
        param = by_name[f"input_{option_name(f)}"]
        assert param.opts == [f"--{option_name(f)}"] and param.help.startswith(option_help(f))
        assert param.default == (show_value(f, f.default) if option_choices(f) else f.default), f.name
    assert tuple(by_name["input_pixels"].type.choices) == PIXELS
    required = ["--parents", "runs:/a/model,runs:/b/model"] if command == "fuse" else ["--model-run", "runs:/a/model"]
    for given in (BY_URI_INPUT, replace(BY_URI_INPUT, channels=None)):
        args = ["--dataset", "digits", "--image-size", "16", *_as_args(command_params(given))]
        assert pop_model_input(dict(_parsed(command, [*required, *args]))) == given


def test_a_model_inputs_params_and_record_are_its_options():
    names = {option_name(f) for f in option_fields(ModelInput)}
    params = BY_URI_INPUT.to_params()
    assert set(params) == set(BY_URI_INPUT.data.to_params()) | names
    assert (params["channels"], params["pixels"]) == ("3", "normalized")
    assert replace(BY_URI_INPUT, channels=None).to_params()["channels"] == "data", "the name runs have logged"
    record = BY_URI_INPUT.to_record()
    # model_input.json's keys, as fuse runs have written them
    assert set(record) == {"dataset", "data_dir", "image_size", "val_fraction", "split_seed", "channels", "pixels"}
    assert json.loads(json.dumps(record)) == record
    assert ModelInput.from_record(record, recorded_by="run x") == BY_URI_INPUT


def test_evaluates_seed_is_checked_as_every_seed_is():
    by_name = {p.name: p for p in cli.get_command(None, "evaluate").params}
    assert by_name["seed"].type is SEED, "the CLI refuses it where it enters, by name"
    with pytest.raises(ConfigError, match="--seed 18446744073709551616 is outside the seeds torch takes"):
        EvaluateOptions(seed=2**64).check()
