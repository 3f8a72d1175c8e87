"""Networks of the study (MLP, VGG11, ResNet18, and torchvision's or the user's), built from a ModelSpec."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from ofexp.errors import ConfigError
from ofexp.models.foreign import (TRUSTED_FACTORIES_ENV, ModelName, build_foreign, has_batchnorm, is_foreign,
                                  kwargs_json, normalise_kwargs, parse_kwargs, trust_factory)
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
    if spec.foreign:
        model = build_foreign(spec.arch, spec.kwargs, spec.num_classes, spec.in_channels)
    else:
        model = _BUILDERS[spec.arch](spec)
    model.spec = spec
    return model


def check_forward(spec: ModelSpec) -> None:
    """ConfigError, in one line, unless `spec`'s network maps a [2, C, S, S] batch to [2, num_classes]
    logits; run on the meta device, so it costs no memory and no compute (for foreign networks,
    whose smallest input ofexp does not know)."""
    import torch

    shape = (2, spec.in_channels, spec.input_size, spec.input_size)
    with torch.device("meta"):
        model = build_model(spec)
        try:
            out = model.eval()(torch.zeros(shape))
        except NotImplementedError:
            return  # an op without a meta kernel: the first real batch checks it
        except Exception as exc:
            reason = " ".join(str(exc).split())[:200]
            raise ConfigError(f"{spec.arch} cannot take {spec.in_channels}×{spec.input_size}×{spec.input_size} "
                              f"images ({type(exc).__name__}: {reason}); use a larger --image-size or other "
                              "--model-kwargs") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (2, spec.num_classes):
        got = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ConfigError(f"{spec.arch} returns {got} for a batch of 2, not [2, {spec.num_classes}] logits; "
                          "use a classifier that returns one logit per class")


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
    "ModelName",
    "ModelSpec",
    "ResNet18",
    "TRUSTED_FACTORIES_ENV",
    "VGG11",
    "build_model",
    "check_forward",
    "has_batchnorm",
    "is_foreign",
    "kwargs_json",
    "normalise_kwargs",
    "parse_kwargs",
    "trust_factory",
    "eval_mode",
    "init_weights",
]
