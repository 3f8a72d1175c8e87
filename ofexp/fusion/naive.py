"""Naive fusion (weighted parameter averaging) and the parent checks fusion methods share."""

from __future__ import annotations

import copy
import math
import numbers
from collections.abc import Sequence

import torch
from torch import nn

from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.models import ModelSpec

# Fields that must agree for any fusion; width may differ only for geometric fusion.
_SHARED_FIELDS = ("arch", "kwargs", "num_classes", "in_channels", "input_size", "bias", "batchnorm")


def parent_specs(models: Sequence[nn.Module], *, allow_width: bool) -> list[ModelSpec | None]:
    """Specs of ``models`` (None for a network ofexp did not build), after checking that there
    are >= 2 and that they can be fused.

    Networks ofexp built must agree on every spec field; ``allow_width`` lets the width
    differ (geometric fusion maps onto the target's width). Any other networks must have
    the same state-dict keys and shapes; the first that differs is named.
    """
    models = list(models)
    if len(models) < 2:
        raise ConfigError(f"fusion needs at least 2 models, got {len(models)}; pass two or more parents")
    for i, m in enumerate(models):
        if not isinstance(m, nn.Module):
            raise ConfigError(f"model {i} is a {type(m).__name__}, not an nn.Module; pass torch networks")
    specs = [getattr(m, "spec", None) for m in models]
    if not all(isinstance(s, ModelSpec) for s in specs):
        check_same_tensors(models)
        return [s if isinstance(s, ModelSpec) else None for s in specs]
    fields = _SHARED_FIELDS if allow_width else _SHARED_FIELDS + ("width",)
    for i, spec in enumerate(specs[1:], start=1):
        for f in fields:
            a, b = getattr(specs[0], f), getattr(spec, f)
            if a != b:
                raise IncompatibleModelsError(
                    f"cannot fuse: model 0 has {f}={a!r} but model {i} has {f}={b!r}; fuse models of one spec"
                )
    return specs


def check_same_tensors(models: Sequence[nn.Module], names: Sequence[str] | None = None) -> None:
    """IncompatibleModelsError naming the first state-dict key that is missing or shaped
    differently in a model than in the first one. ``names`` label the models in the message."""
    names = list(names) if names is not None else [f"model {i}" for i in range(len(models))]
    ref = models[0].state_dict()
    for name, model in zip(names[1:], models[1:]):
        state = model.state_dict()
        for key in list(ref) + [k for k in state if k not in ref]:
            a, b = ref.get(key), state.get(key)
            if a is None or b is None:
                has, lacks = (name, names[0]) if a is None else (names[0], name)
                raise IncompatibleModelsError(f"cannot fuse: {has} has tensor {key!r} but {lacks} does not; "
                                              "fuse networks of one architecture")
            if a.shape != b.shape:
                raise IncompatibleModelsError(f"cannot fuse: tensor {key!r} is {list(a.shape)} in {names[0]} but "
                                              f"{list(b.shape)} in {name}; fuse networks of one architecture and width")


def fusion_weights(weights: Sequence[float] | None, k: int, *, name: str = "weights") -> list[float]:
    """``weights`` normalised to sum to 1 (equal weights when None).

    ConfigError unless there is one per model and they are non-negative finite numbers with
    a positive, finite sum. The one statement of the rule: the fusion functions apply it, and
    so does the CLI's `FusionOptions` before any run exists, as `--fusion-weights`."""
    if weights is None:
        return [1.0 / k] * k
    allowed = f"pass {k} non-negative finite numbers with a positive sum, e.g. {','.join([f'{1 / k:g}'] * k)}"
    if len(weights) != k:
        raise ConfigError(f"{name} has {len(weights)} values for {k} parents; {allowed}")
    real = all(isinstance(w, numbers.Real) and not isinstance(w, bool) for w in weights)  # numpy's too
    shown = ",".join(f"{w:g}" if real else str(w) for w in weights)
    if not real:
        raise ConfigError(f"{name} {shown} holds a value that is not a number; {allowed}")
    for bad, what in ((lambda w: not math.isfinite(w), "is not a finite number"), (lambda w: w < 0, "is negative")):
        found = [w for w in weights if bad(w)]
        if found:
            raise ConfigError(f"{name} {shown}: {found[0]:g} {what}; {allowed}")
    total = float(sum(weights))
    if not 0 < total < math.inf:
        raise ConfigError(f"{name} {shown} sums to {total:g}; {allowed}")
    return [float(w) / total for w in weights]


def average_states(
    states: Sequence[dict[str, torch.Tensor]], weights: Sequence[float]
) -> dict[str, torch.Tensor]:
    """``sum_k w_k state_k`` for float tensors; other tensors (counters) from ``states[0]``."""
    out = {}
    for key, first in states[0].items():
        if first.is_floating_point():
            out[key] = sum(w * s[key].detach().to(first.device) for w, s in zip(weights, states))
        else:
            out[key] = first.detach().clone()
    return out


def naive_fuse(models: Sequence[nn.Module], weights: Sequence[float] | None = None) -> nn.Module:
    r"""Weighted average of the parameters and buffers of same-spec models.

    .. math:: \theta_{fused} = \sum_k w_k \theta_k, \qquad \sum_k w_k = 1

    Parameters
    ----------
    models : sequence of k >= 2 nn.Module
        Networks of one architecture: built by ``build_model`` with one spec, or any
        others with the same state-dict keys and shapes.
    weights : sequence of k non-negative floats, optional
        Mixing weights, normalised to sum to 1; equal by default.

    Returns
    -------
    nn.Module
        A copy of ``models[0]`` with the averaged tensors; integer buffers
        (``num_batches_tracked``) are copied from ``models[0]``.
    """
    parent_specs(models, allow_width=False)
    w = fusion_weights(weights, len(models))
    fused = copy.deepcopy(models[0])
    fused.load_state_dict(average_states([m.state_dict() for m in models], w))
    return fused
