"""Loss and accuracy along the straight line between two networks' weights, and its barrier.

Linear mode connectivity (Frankle et al. 2020; Entezari et al. 2022): two
networks are connected when the loss along
:math:`\\theta(\\alpha) = (1 - \\alpha)\\,\\theta_A + \\alpha\\,\\theta_B` never rises far
above the straight line between the endpoint losses. Aligning one parent's
neurons to the other's (geometric fusion's first half) should lower that rise.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from ofexp.fusion.batchnorm import recompute_batchnorm_stats

ALPHAS = tuple(round(0.1 * i, 1) for i in range(11))  # 0, 0.1, ..., 1


@dataclass(frozen=True)
class InterpolationCurve:
    """Loss and accuracy at each α of ``alphas`` (α = 0 is model A, α = 1 is model B).

    Attributes
    ----------
    alphas, losses, accuracies : tuple[float, ...], each of length P
    loss_barrier : float
        :math:`\\max_\\alpha \\, L(\\alpha) - [(1-\\alpha) L(0) + \\alpha L(1)]`; ≥ 0 at the ends.
    accuracy_barrier : float
        :math:`\\max_\\alpha \\, [(1-\\alpha) a(0) + \\alpha a(1)] - a(\\alpha)`: the accuracy lost
        against the straight line between the endpoints.
    """

    alphas: tuple[float, ...]
    losses: tuple[float, ...]
    accuracies: tuple[float, ...]
    loss_barrier: float
    accuracy_barrier: float


def barrier(values: np.ndarray, alphas: np.ndarray) -> float:
    """:math:`\\max_i \\, v_i - [(1-\\alpha_i) v_0 + \\alpha_i v_{-1}]` for values [P] at alphas [P]."""
    line = (1 - alphas) * values[0] + alphas * values[-1]  # [P]
    return float(np.max(values - line))


def interpolate_states(
    a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor], alpha: float
) -> dict[str, torch.Tensor]:
    """:math:`(1 - \\alpha) a + \\alpha b` for float tensors; integer buffers (counters) from ``a``."""
    if a.keys() != b.keys():
        raise ValueError("interpolate_states: the two state dicts have different keys; interpolate one architecture")
    out = {}
    for key, ta in a.items():
        tb = b[key]
        if ta.shape != tb.shape:
            raise ValueError(
                f"interpolate_states: {key!r} is {tuple(ta.shape)} in A but {tuple(tb.shape)} in B; "
                "align B onto A's width first"
            )
        out[key] = torch.lerp(ta, tb.to(ta), alpha) if ta.is_floating_point() else ta.clone()
    return out


@torch.no_grad()
def _loss_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int) -> tuple[float, float]:
    """True mean cross-entropy and accuracy of ``model`` (eval mode) on x [n, ...], y [n]."""
    device = next(model.parameters()).device
    loss_sum, correct = 0.0, 0
    for xb, yb in zip(torch.split(x, batch_size), torch.split(y, batch_size)):
        logits = model(xb.to(device))  # [b, classes]
        yb = yb.to(device)
        loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
        correct += (logits.argmax(dim=1) == yb).sum().item()
    return loss_sum / len(x), correct / len(x)


def interpolation_curve(
    model_a: nn.Module,
    model_b: nn.Module | Mapping[str, torch.Tensor],
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    alphas: tuple[float, ...] = ALPHAS,
    bn_inputs: torch.Tensor | None = None,
    batch_size: int = 512,
) -> InterpolationCurve:
    """Loss and accuracy on (x [n, C, H, W], y [n]) of :math:`\\theta(\\alpha)` at each α.

    Batch-norm networks get their running statistics recomputed on ``bn_inputs``
    at **every** point, the endpoints included: an interpolated net's averaged
    statistics do not describe its activations (variance collapse), and
    recomputing at the ends too keeps the curve's points comparable. Without
    batch-norm, ``bn_inputs`` is unused.

    Parameters
    ----------
    model_a : nn.Module
        The network at α = 0; its architecture (and width) is the curve's.
    model_b : nn.Module or state dict
        The network (or its state dict) at α = 1, with ``model_a``'s tensor shapes.
    alphas : tuple of float
        Points in [0, 1], first 0 and last 1; 0, 0.1, ..., 1 by default.
    bn_inputs : torch.Tensor, shape [N, C, H, W], N >= 2
        Training inputs; required when the network has batch-norm.

    Returns
    -------
    InterpolationCurve
    """
    a_state = model_a.state_dict()
    b_state = model_b.state_dict() if isinstance(model_b, nn.Module) else model_b
    points = np.asarray(alphas, dtype=np.float64)
    if len(points) < 2 or points[0] != 0 or points[-1] != 1 or np.any(np.diff(points) <= 0):
        raise ValueError(f"alphas={alphas!r} must rise from 0 to 1 with at least 2 points; e.g. use ALPHAS")
    has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model_a.modules())
    if has_bn and (bn_inputs is None or len(bn_inputs) < 2):
        raise ValueError("interpolation_curve: a batch-norm network needs bn_inputs=<training inputs [N >= 2, ...]>")
    probe = copy.deepcopy(model_a)
    losses, accuracies = [], []
    for alpha in alphas:
        probe.load_state_dict(interpolate_states(a_state, b_state, float(alpha)))
        if has_bn:
            recompute_batchnorm_stats(probe, bn_inputs)
        loss, acc = _loss_accuracy(probe.eval(), x, y, batch_size)
        losses.append(loss), accuracies.append(acc)
    loss_arr, acc_arr = np.array(losses), np.array(accuracies)
    return InterpolationCurve(
        alphas=tuple(float(a) for a in alphas), losses=tuple(losses), accuracies=tuple(accuracies),
        loss_barrier=barrier(loss_arr, points), accuracy_barrier=barrier(-acc_arr, points),
    )


CURVES = ("parents_raw", "parents_aligned", "parent_fused")


def fusion_curves(
    target: nn.Module,
    parent: nn.Module,
    aligned_parent: Mapping[str, torch.Tensor],
    fused: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    bn_inputs: torch.Tensor | None = None,
) -> dict[str, InterpolationCurve]:
    """The three curves of a geometric fusion, each from the target parent (α = 0) to:

    - ``parents_raw``: the other parent as trained (left out when its width differs);
    - ``parents_aligned``: the other parent mapped onto the target's neurons
      (``GeometricFusion.aligned``); with a permutation it computes what ``parent`` does;
    - ``parent_fused``: the fused network.
    """
    curves = {}
    if parent.state_dict().keys() == target.state_dict().keys() and all(
        v.shape == target.state_dict()[k].shape for k, v in parent.state_dict().items()
    ):
        curves["parents_raw"] = interpolation_curve(target, parent, x, y, bn_inputs=bn_inputs)
    curves["parents_aligned"] = interpolation_curve(target, aligned_parent, x, y, bn_inputs=bn_inputs)
    curves["parent_fused"] = interpolation_curve(target, fused, x, y, bn_inputs=bn_inputs)
    return curves


def plot_curves(curves: Mapping[str, InterpolationCurve], title: str = ""):
    """A matplotlib figure: test loss (left) and accuracy (right) against α, one line per curve."""
    from matplotlib.figure import Figure  # no pyplot: no global state, no display backend needed

    fig = Figure(figsize=(9, 3.6), layout="constrained")
    loss_ax, acc_ax = fig.subplots(1, 2)
    for name, c in curves.items():
        label = f"{name} (loss barrier {c.loss_barrier:.3f})"
        loss_ax.plot(c.alphas, c.losses, marker="o", label=label)
        acc_ax.plot(c.alphas, c.accuracies, marker="o", label=name)
    loss_ax.set(xlabel="α (0 = target parent)", ylabel="test loss")
    acc_ax.set(xlabel="α (0 = target parent)", ylabel="test accuracy", ylim=(0, 1))
    loss_ax.legend(fontsize="small")
    if title:
        fig.suptitle(title)
    return fig
