"""The fusion-method registry: the CLI's choices, each method's params and its fuse function come from it."""
from __future__ import annotations

from dataclasses import fields

import pytest
import torch

from ofexp.cli import cli
from ofexp.data import DataConfig, load_dataset
from ofexp.fusion import naive_fuse
from ofexp.models import ModelSpec, build_model
from ofexp.pipeline.steps.fuse import FuseConfig
from ofexp.errors import ConfigError
from ofexp.pipeline.steps.fusion_methods import COMMON_OPTIONS, FUSION_METHODS, METHODS, activation_inputs
from ofexp.pipeline.steps.options import FusionOptions


def test_the_method_choices_and_help_are_the_registrys():
    method = next(p for p in cli.get_command(None, "fuse").params if p.name == "method")
    assert list(method.type.choices) == [*FUSION_METHODS, "both"]
    assert all(f"{m.name}: {m.help}" in method.help for m in FUSION_METHODS.values())
    assert FusionOptions().methods == METHODS  # "both" is every registered method


def test_each_methods_options_are_fusion_options_and_are_its_params():
    names = {f.name for f in fields(FusionOptions)}
    for method in FUSION_METHODS.values():
        assert set(method.options) | set(method.only_with.values()) <= names, method.name
        params = FuseConfig(parents=("a", "b"), methods=(method.name,)).params(method.name)
        assert set(params) == {"method", "parents", "device", *method.options, *COMMON_OPTIONS}


def test_an_option_that_counts_only_with_another_is_left_out_without_it():
    cfg = FuseConfig(parents=("a", "b"), methods=("geometric",), interpolation=False)
    assert "curve_samples" not in cfg.params("geometric")
    assert "curve_samples" in FuseConfig(parents=("a", "b"), methods=("geometric",)).params("geometric")


def test_each_methods_fuse_function_returns_a_network_of_the_parents_spec():
    splits = load_dataset(DataConfig(name="digits"))
    spec = ModelSpec(arch="mlp", num_classes=10, in_channels=1, input_size=32, width=0.25)
    torch.manual_seed(0)
    parents = [build_model(spec), build_model(spec)]
    opts = FusionOptions(activation_samples=32)
    for method in FUSION_METHODS.values():
        made = method.fuse(opts, parents, splits, None)
        assert made.model.spec == spec, method.name
        assert (made.alignment is not None) == method.aligns
    naive = FUSION_METHODS["naive"].fuse(opts, parents, splits, None).model
    expected = naive_fuse(parents)
    assert all(torch.equal(a, b) for a, b in zip(naive.state_dict().values(), expected.state_dict().values()))


def test_the_activation_seed_draws_the_inputs_geometric_fusion_probes():
    """--activation-seed: another fixed sample of training inputs, the same one for the same seed."""
    splits = load_dataset(DataConfig(name="digits"))
    spec = ModelSpec(arch="mlp", num_classes=10, in_channels=1, input_size=32, width=0.25)
    torch.manual_seed(0)
    parents = [build_model(spec), build_model(spec)]
    made = {seed: FUSION_METHODS["geometric"].fuse(FusionOptions(activation_samples=32, activation_seed=seed),
                                                    parents, splits, None) for seed in (0, 1)}
    assert torch.equal(made[0].inputs, activation_inputs(splits, 32)), "seed 0: the sample ofexp always drew"
    assert torch.equal(made[1].inputs, activation_inputs(splits, 32, 1)) and not torch.equal(made[0].inputs,
                                                                                              made[1].inputs)
    assert "activation_seed" in FuseConfig(parents=("a", "b"), methods=("geometric",)).params("geometric")
    assert "activation_seed" not in FuseConfig(parents=("a", "b"), methods=("naive",)).params("naive")


def test_an_activation_seed_torch_cannot_take_is_refused_by_its_name():
    with pytest.raises(ConfigError, match="--activation-seed 18446744073709551616 is outside the seeds torch takes"):
        FusionOptions(activation_seed=2**64).check(2)
