"""The check every alignment spec passes before it is used: permuting its groups changes nothing."""

from __future__ import annotations

import copy

import torch
from torch import nn

from ofexp.errors import ConfigError
from ofexp.fusion.groups import (AlignmentSpec, check_covers, group_sizes, permutation_units, permute_model,
                                 random_permutations)
from ofexp.models import eval_mode

# In float64 a correct permutation reorders sums only (relative error ~1e-15 per op); a wrong
# one changes outputs at the scale of the outputs themselves.
_RELATIVE_TOLERANCE = 1e-9


class AlignmentSpecError(ConfigError):
    """An alignment spec under which permuting a group changes the network's function."""


def _outputs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if isinstance(out, dict):
        out = list(out.values())
    if isinstance(out, (list, tuple)):
        return torch.cat([o.reshape(-1) for o in out if isinstance(o, torch.Tensor)])
    return out.reshape(-1)


def _change(model: nn.Module, spec: AlignmentSpec, perms: dict, x: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest output change when ``perms`` are applied, relative to the largest output."""
    out = _outputs(permute_model(model, perms, spec).eval(), x)
    return float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))


@torch.no_grad()
def check_alignment_spec(model: nn.Module, spec: AlignmentSpec, example_input: torch.Tensor, *,
                         seed: int = 0) -> None:
    r"""Raise AlignmentSpecError unless every group of ``spec`` is a symmetry of ``model``.

    With :math:`\pi_g` a random permutation of each group g, the permuted copy
    :math:`\pi(\theta)` must give the outputs of :math:`\theta` on ``example_input``:
    :math:`\max |f_{\pi(\theta)}(x) - f_\theta(x)| \le 10^{-9} \max |f_\theta(x)|`,
    computed in float64 (eval mode), so that rounding cannot hide or fake a wiring error.
    On a failure, each group is permuted alone to name the first one that breaks.

    Parameters
    ----------
    model : nn.Module
        The network the spec describes (left unchanged).
    spec : AlignmentSpec
        Its alignment groups, e.g. from ``trace_alignment``.
    example_input : torch.Tensor, shape [B, ...]
        Inputs in the model's format; B >= 2 exercises batch statistics of nothing (eval mode),
        but distinct samples make a coincidental pass unlikely.
    seed : int
        Seed of the random permutations.
    """
    state = model.state_dict()
    check_covers(spec, state)
    double = copy.deepcopy(model).to(torch.float64).eval()
    x = example_input.to(next(double.parameters()).device, torch.float64)
    gen = torch.Generator().manual_seed(seed)
    sizes = group_sizes(spec, state)
    units = [unit for unit in permutation_units(spec) if any(sizes[g] > 1 for g in unit)]
    perms = {g: perm for unit in units for g, perm in random_permutations(spec, sizes, gen, unit).items()}
    with eval_mode(double):
        ref = _outputs(double, x)
        if _change(double, spec, perms, x, ref) <= _RELATIVE_TOLERANCE:
            return
        for unit in units:  # an attention module's groups share their head permutation: moved together
            change = _change(double, spec, {g: perms[g] for g in unit}, x, ref)
            if change > _RELATIVE_TOLERANCE:
                g, perm = unit[0], perms[unit[0]]
                raise AlignmentSpecError(
                    f"alignment check failed: permuting group {g!r} ({len(perm)} neurons; written by "
                    f"{', '.join(spec.writers[g][:2])}) changes {type(model).__name__}'s outputs by {change:.1e} of "
                    "their scale; the network has an op that mixes this group's neurons: fuse it naively")
    raise AlignmentSpecError(f"alignment check failed: permuting all {len(perms)} groups together changes "
                             f"{type(model).__name__}'s outputs, though each alone does not; fuse it naively")
