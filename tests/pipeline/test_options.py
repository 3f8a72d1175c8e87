"""The fusion and evaluate options are defined once (ofexp.pipeline.options); everything else derives from them.

The MLproject files' defaults are held to the CLI's, and so to these definitions, by tests/test_packaging.py.
"""
from __future__ import annotations

from dataclasses import replace

import click
import pytest

from ofexp.cli import cli
from ofexp.pipeline.options import (EvaluateOptions, FusionOptions, command_params, option_fields, option_values,
                                    show_value)
from ofexp.pipeline.study import StudyConfig, study_params


# A value other than the default for every option: rendering and parsing must carry each one.
CHANGED_FUSION = FusionOptions(methods=("geometric",), fusion_weights=(0.25, 0.75), target=0, solver="sinkhorn",
                               reg=0.05, alignment="weights", activation_samples=64, repair=True, recompute_bn=False,
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
        param = by_name[f.name]
        if isinstance(f.default, bool):
            continue  # a flag: default None, resolved by pop_flag from the definition
        assert param.default == (show_value(f, f.default) if f.metadata["choices"] else f.default), f.name
        if f.metadata["choices"]:
            assert tuple(param.type.choices) == tuple(f.metadata["choices"]), f.name


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
