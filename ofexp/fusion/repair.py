"""REPAIR: give the fused network's neurons the activation statistics of its parents' neurons.

Averaging two aligned networks shrinks each neuron's variance (matched neurons are
only partly correlated), and the shrinkage compounds layer after layer until the
signal is lost: "variance collapse" (Jordan et al., "REPAIR: REnormalizing Permuted
Activations for Interpolation Repair", ICLR 2023). Rescaling every fused neuron back
to the parents' statistics undoes most of it, without training.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ofexp.fusion.geometric import GeometricFusion
from ofexp.fusion.groups import AlignmentSpec
from ofexp.fusion.trace import alignment_spec
from ofexp.fusion.naive import fusion_weights
from ofexp.models import eval_mode

# A channel whose fused output barely varies is dead (ReLU-clipped upstream): leave it alone
# rather than amplify rounding noise into a signal.
_MIN_STD = 1e-6


def probe_names(spec: AlignmentSpec) -> list[str]:
    """Modules whose outputs carry a group's neurons on axis 1 (see ``AlignmentSpec.probes``)."""
    names = [n for group in spec.probes.values() for n in group]
    return list(dict.fromkeys(names))


def _channel_stats(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and std of ``out`` [B, C, ...] over the batch and spatial axes: ([C], [C])."""
    flat = out.transpose(0, 1).reshape(out.shape[1], -1)  # [C, B * spatial]
    return flat.mean(dim=1), flat.std(dim=1)


def _run_with_hooks(model: nn.Module, names: list[str], hook, inputs: torch.Tensor) -> None:
    """``model(inputs)`` with ``hook(module, args, output, name)`` on each named module; its
    return value, if not None, replaces the module's output downstream."""
    modules = dict(model.named_modules())
    handles = [modules[n].register_forward_hook(lambda m, a, o, n=n: hook(m, a, o, n)) for n in names]
    try:
        model(inputs)
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def probe_stats(model: nn.Module, names: list[str], inputs: torch.Tensor) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per named module, the channel (mean, std) of its output on ``inputs``, each [C]."""
    stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    _run_with_hooks(model, names, lambda m, a, o, n: stats.__setitem__(n, _channel_stats(o)), inputs)
    return stats


def _correct(module: nn.Module, out: torch.Tensor, goal: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, float]:
    """Rescale ``module``'s weight and bias so that its output [B, C, ...] takes the goal mean and std.

    ``out' = s * out + shift`` with ``s = std_goal / std_out`` per channel. The shift
    ``mean_goal - s * mean_out`` needs a bias to live in; without one only the scale is set.
    """
    mean, std = _channel_stats(out)  # [C], [C]
    live = std > _MIN_STD
    scale = torch.where(live, goal[1] / std.clamp_min(_MIN_STD), torch.ones_like(std))  # [C]
    bias = getattr(module, "bias", None)
    shift = torch.where(live, goal[0] - scale * mean, torch.zeros_like(mean)) if bias is not None else None
    module.weight.mul_(scale.view(-1, *[1] * (module.weight.ndim - 1)))  # axis 0 is the output channel
    view = (1, -1) + (1,) * (out.ndim - 2)  # broadcast a [C] vector over [B, C, ...]
    if bias is not None:
        bias.mul_(scale).add_(shift)
        return out * scale.view(view) + shift.view(view), float(scale.mean())
    return out * scale.view(view), float(scale.mean())


@torch.no_grad()
def repair_statistics(
    fused: nn.Module,
    sources: Sequence[nn.Module],
    inputs: torch.Tensor,
    weights: Sequence[float] | None = None,
    spec: AlignmentSpec | None = None,
) -> dict[str, float]:
    r"""Set each fused neuron's activation mean and std to the weighted average of the sources'.

    For every probe module m of the alignment spec (a conv, linear or batch-norm layer
    whose output holds a group's neurons: the pre-activations), in forward order, with
    channel statistics over ``inputs`` (batch and spatial positions):

    .. math::
        \mu^*_c = \sum_k w_k \mu^{(k)}_c, \quad \sigma^*_c = \sum_k w_k \sigma^{(k)}_c, \quad
        s_c = \sigma^*_c / \sigma_c, \quad W_c \leftarrow s_c W_c, \quad
        b_c \leftarrow s_c b_c + \mu^*_c - s_c \mu_c

    where :math:`\mu_c, \sigma_c` are the fused model's statistics after every earlier
    module was corrected (one forward pass, corrected as it goes). A module without a
    bias gets the scale only (ReLU commutes with a positive scale, so the next layer
    sees the same pattern). Batch-norm running statistics should be recomputed first.

    Parameters
    ----------
    fused : nn.Module
        The fused network (from ``build_model``), corrected in place, in eval mode.
    sources : sequence of nn.Module
        The networks whose statistics the fused one should have, with their neurons in
        the fused network's order: the aligned parents (``GeometricFusion.aligned`` and
        the target) for geometric fusion.
    inputs : torch.Tensor, shape [N, C, H, W] (or [N, D]), N >= 2
        Training samples; all are run as one batch.
    weights : sequence of float, optional
        The sources' averaging weights (the fusion weights); equal by default.
    spec : AlignmentSpec, optional
        Whose probes to correct; by default ``alignment_spec(fused)`` (a network ofexp built).

    Returns
    -------
    dict[str, float]
        Module name -> mean scale applied to its channels (1 = unchanged).
    """
    if len(inputs) < 2:
        raise ValueError(f"repair_statistics: inputs has {len(inputs)} sample(s); statistics need at least 2")
    w = fusion_weights(weights, len(sources))
    names = probe_names(spec if spec is not None else alignment_spec(fused))
    device = next(fused.parameters()).device
    scales: dict[str, float] = {}
    with eval_mode(fused, *sources):
        per_source = [probe_stats(s, names, inputs.to(next(s.parameters()).device)) for s in sources]
        goal = {n: tuple(sum(wk * st[n][i].to(device) for wk, st in zip(w, per_source)) for i in (0, 1))
                for n in names}

        def correct(module, args, out, name):
            out, scales[name] = _correct(module, out, goal[name])
            return out

        _run_with_hooks(fused, names, correct, inputs.to(device))
    return scales


def repair_geometric(
    result: GeometricFusion,
    inputs: torch.Tensor,
    *,
    weights: Sequence[float] | None = None,
) -> dict[str, float]:
    """``repair_statistics`` of ``result.model`` against the parents as ``geometric_fuse``
    aligned them (``result.parents``); ``weights`` are the fusion weights it was given."""
    return repair_statistics(result.model, result.parents, inputs, weights, result.spec)
