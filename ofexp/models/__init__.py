"""Networks of the study (MLP, VGG11, ResNet18), built from a ModelSpec."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ofexp.errors import ConfigError
from ofexp.models.init import INIT_SCHEMES, init_weights
from ofexp.models.mlp import MLP
from ofexp.models.resnet import ResNet18
from ofexp.models.spec import ARCHITECTURES, ModelSpec
from ofexp.models.vgg import VGG11

_BUILDERS = {"mlp": MLP, "vgg11": VGG11, "resnet18": ResNet18}


def build_model(spec: ModelSpec) -> nn.Module:
    """A freshly initialised network for ``spec``, with the spec attached as ``model.spec``."""
    if not isinstance(spec, ModelSpec):
        raise ConfigError(
            f"build_model: spec must be a ModelSpec, got {type(spec).__name__}; use ModelSpec.from_dict"
        )
    model = _BUILDERS[spec.arch](spec)
    model.spec = spec
    return model


@contextmanager
def eval_mode(*models: nn.Module) -> Iterator[None]:
    """Run the block with every module of ``models`` in eval mode; restore each module's own mode after."""
    modes = [(m, m.training) for model in models for m in model.modules()]
    try:
        for model in models:
            model.eval()
        yield
    finally:
        for m, training in modes:
            m.train(training)


__all__ = [
    "ARCHITECTURES",
    "INIT_SCHEMES",
    "MLP",
    "ModelSpec",
    "ResNet18",
    "VGG11",
    "build_model",
    "eval_mode",
    "init_weights",
]
