"""Why a fusion lost accuracy: how well neurons matched, and how much the fused activations shrank."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ofexp.fusion.geometric import probe_features
from ofexp.fusion.groups import AlignmentSpec
from ofexp.fusion.naive import fusion_weights
from ofexp.fusion.repair import probe_names, probe_stats
from ofexp.fusion.trace import alignment_spec
from ofexp.models import eval_mode


def _standardise(a: torch.Tensor) -> torch.Tensor:
    """Rows [n, s] to zero mean and unit variance (constant rows stay 0)."""
    a = a - a.mean(dim=1, keepdim=True)
    return a / a.norm(dim=1, keepdim=True).clamp_min(1e-12) * a.shape[1] ** 0.5


@torch.no_grad()
def alignment_diagnostics(
    fused: nn.Module,
    sources: Sequence[nn.Module],
    inputs: torch.Tensor,
    *,
    weights: Sequence[float] | None = None,
    target: int = -1,
    spec: AlignmentSpec | None = None,
) -> dict[str, dict[str, float]]:
    r"""Per alignment group with probes, two numbers on ``inputs`` (at the group's probes, the pre-activations):

    - ``match_correlation``: the mean over neurons j and non-target sources k of the
      Pearson correlation between the target's neuron j and source k's neuron j. 1
      means the alignment found an exact counterpart for every neuron; unrelated
      neurons give about 0.
    - ``std_ratio``: the median over neurons (and, for a residual stream, over each of its
      terms) of :math:`\sigma^{fused}_j / \sum_k w_k \sigma^{(k)}_j`.
      Averaging partly correlated neurons shrinks their spread, layer after layer
      ("variance collapse"); values well below 1 are what ``repair_statistics`` fixes.

    Parameters
    ----------
    fused : nn.Module
        The fused network.
    sources : sequence of nn.Module
        The parents with their neurons in the fused network's order
        (``GeometricFusion.parents``), the target among them.
    inputs : torch.Tensor, shape [N, C, H, W] (or [N, D])
        Training samples.
    weights : sequence of float, optional
        The fusion weights; equal by default.
    target : int
        Index of the target parent in ``sources``.
    spec : AlignmentSpec, optional
        The groups and their probes; by default ``alignment_spec(fused)`` (a network ofexp built).

    Returns
    -------
    dict[str, dict[str, float]]
        Group -> {"match_correlation": ..., "std_ratio": ...}.
    """
    spec = spec if spec is not None else alignment_spec(fused)
    w = fusion_weights(weights, len(sources))
    t = target % len(sources)
    names = probe_names(spec)

    def on(net: nn.Module) -> torch.Tensor:
        return inputs.to(next(net.parameters()).device)

    with eval_mode(fused, *sources):  # results come back to the CPU, so parents may sit on any device
        feats = [{g: f.cpu() for g, f in probe_features(net, spec, on(net)).items()} for net in sources]
        # Spreads per probe module: a residual stream's terms (stem, branches, shortcuts) each
        # have their own scale, and REPAIR sets each one.
        stds = [{n: st[1].cpu() for n, st in probe_stats(net, names, on(net)).items()} for net in (fused, *sources)]
    out = {}
    for g in (g for g in spec.groups if spec.probes.get(g)):  # a group no module output shows has no numbers
        ref = _standardise(feats[t][g])  # [n, s]
        corr = [(ref * _standardise(f[g])).mean(dim=1) for i, f in enumerate(feats) if i != t]  # each [n]
        ratios = []
        for probe in spec.probes[g]:
            spread = sum(wk * st[probe] for wk, st in zip(w, stds[1:]))  # [n]
            live = spread > 1e-12
            ratios.append(stds[0][probe][live] / spread[live])
        ratio = torch.cat(ratios)
        out[g] = {"match_correlation": float(torch.stack(corr).mean()),
                  "std_ratio": float(ratio.median()) if len(ratio) else 1.0}
    return out
