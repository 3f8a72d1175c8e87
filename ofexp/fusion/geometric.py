"""Geometric (OT) fusion, Singh & Jaggi 2020: align every parent's neurons to a target's, then average."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from ofexp.errors import ConfigError
from ofexp.fusion.groups import AlignmentSpec, apply_plan, axis_groups, check_covers
from ofexp.fusion.heads import head_block_plans
from ofexp.fusion.token_probes import register_token_hooks
from ofexp.fusion.naive import average_states, fusion_weights, parent_specs
from ofexp.fusion.trace import alignment_spec
from ofexp.fusion.transport import solve_transport
from ofexp.models import eval_mode

ALIGNMENTS = ("weights", "activations")

State = dict[str, torch.Tensor]


@dataclass
class GeometricFusion:
    """Result of ``geometric_fuse``.

    Attributes
    ----------
    model : nn.Module
        The fused network: a copy of the target parent with the fused tensors.
    plans : dict[str, list[torch.Tensor]]
        Group -> per non-target parent (in input order), the rescaled map A
        [n_parent, n_target] whose columns sum to 1; a 0/1 matrix when the plan
        is a permutation.
    costs : dict[str, float]
        Group -> OT cost <T, M> of the unscaled plans, summed over non-target parents.
    seconds : float
        Wall-clock time of the fusion.
    aligned : list[dict[str, torch.Tensor]]
        Per non-target parent (in input order), its state dict mapped onto the
        target's neurons (target-shaped): the parent "with alignment" of an
        interpolation curve.
    group_seconds : dict[str, float]
        Group -> seconds spent on its cost, transport and mapping, summed over parents.
    parents : list[nn.Module]
        The parents in input order, all in the target's (and the fused network's)
        neuron order: the target as given, every other one built from ``aligned``
        (sharing its tensors). REPAIR, the diagnostics and the curves compare the
        fused network with these.
    spec : AlignmentSpec
        The alignment groups used; REPAIR and the diagnostics read its probes.
    """

    model: nn.Module
    plans: dict[str, list[torch.Tensor]]
    costs: dict[str, float]
    seconds: float
    aligned: list[dict[str, torch.Tensor]] = field(default_factory=list, repr=False)
    group_seconds: dict[str, float] = field(default_factory=dict)
    parents: list[nn.Module] = field(default_factory=list, repr=False)
    spec: AlignmentSpec | None = field(default=None, repr=False)


def _writes_whole(axis, group: str) -> bool:
    """Whether axis 0 of a writer holds only ``group``'s neurons in whole blocks: the group itself,
    or a layout whose segments holding the group are the group alone (attention's [q | k | v])."""
    if axis == group:
        return True
    return isinstance(axis, tuple) and all(len(seg) == 1 for seg in axis if group in axis_groups((seg,)))


def _cost_tensors(state: State, spec: AlignmentSpec, group: str, solved: set[str]) -> list[str]:
    """Writers of ``group`` usable for its weight cost: conv / linear weights (and their
    biases) whose other grouped axes are already aligned, so that rows are comparable."""
    keys = []
    writers = spec.writers[group]
    for key in writers:
        if state[key].ndim < 2 or not key.endswith("weight") or not _writes_whole(spec.axes[key][0], group):
            continue  # batch-norm vectors and biases ride along with their layer's weight
        if all(g in solved for ax in spec.axes[key][1:] for g in axis_groups(ax)):
            keys.append(key)
            bias = key[: -len("weight")] + "bias"
            if bias in writers:
                keys.append(bias)
    return keys


def _group_rows(t: torch.Tensor, axis, group: str) -> torch.Tensor:
    """The rows [n, d] of writer ``t`` that make ``group``'s n neurons; the segments of a layout
    (a query and a key projection) side by side."""
    rows = t.detach().reshape(t.shape[0], -1)  # [n_axis, d]
    if axis == group:
        return rows
    parts, start = [], 0
    for seg in axis:
        n = math.prod(size for _, size in seg)
        if seg[0][0] == group:
            parts.append(rows[start:start + n])
        start += n
    return torch.cat(parts, dim=1)  # [n, d * segments]


def _unit_rows(state: State, spec: AlignmentSpec, group: str, keys: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows [n, d] (float32, CPU) scaled to unit norm, and their squared norms [n] (1, or 0 for zero rows)."""
    parts = [_group_rows(state[k], spec.axes[k][0], group) for k in keys]
    rows = (parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)).to("cpu", torch.float32)  # [n, d]
    norms = rows.norm(dim=1, keepdim=True)  # [n, 1]
    return rows / norms.clamp_min(1e-12), (norms[:, 0] > 0).double()  # zero rows stay zero


def weight_cost(
    p_state: State, t_state: State, spec: AlignmentSpec, group: str, solved: set[str]
) -> np.ndarray:
    r"""Ground cost between the parent's and the target's neurons of ``group`` from their weights.

    :math:`M_{ij} = \| \hat w^P_i - \hat w^T_j \|_2` with :math:`\hat w = w / \|w\|_2`,
    where :math:`w_i` concatenates neuron i's flattened incoming weights (and bias)
    over every usable writer of the group (see ``_cost_tensors``).

    Returns
    -------
    np.ndarray, shape [n_parent, n_target]
    """
    keys = _cost_tensors(p_state, spec, group, solved)
    if not keys:
        raise ValueError(
            f"group {group!r} has no conv/linear writer whose inputs are aligned before it; "
            "order the alignment spec so that such a writer comes first"
        )
    (p, p2), (t, t2) = _unit_rows(p_state, spec, group, keys), _unit_rows(t_state, spec, group, keys)  # [n_p, d], [n_t, d]
    # |p - t|^2 = |p|^2 + |t|^2 - 2 p.t, the Gram in float32: one BLAS call, ~4x faster than
    # float64 cdist. Errors are ~1e-7 in d^2, so near-zero distances read as ~1e-3 at worst;
    # distinct neurons of trained or random nets lie ~0.1-1 apart, so the ranking is unaffected.
    d2 = p2[:, None] + t2[None, :] - 2 * (p @ t.T).double()  # [n_p, n_t]
    return d2.clamp_min_(0).sqrt_().numpy()


def probe_features(model: nn.Module, spec: AlignmentSpec, x: torch.Tensor,
                   with_tokens: bool = False) -> dict[str, torch.Tensor]:
    """Per group, the activations of its neurons on batch ``x``: [n, B * spatial * n_probes]; with
    ``with_tokens``, the values at its token probes (``spec.token_probes``) are appended, from the
    same forward pass."""
    modules = dict(model.named_modules())
    outs: dict[str, torch.Tensor] = {}
    tokens: dict[str, list[torch.Tensor]] = {}
    hooks = [
        modules[name].register_forward_hook(lambda m, i, o, name=name: outs.__setitem__(name, o))
        for names in spec.probes.values()
        for name in names
    ] + (register_token_hooks(model, spec, tokens) if with_tokens else [])
    try:
        model(x)
    finally:
        for h in hooks:
            h.remove()
    feats = {}
    for g, names in spec.probes.items():
        # [B, n, ...] -> [n, B * ...]: one row of samples per neuron
        parts = [outs[n].transpose(0, 1).reshape(outs[n].shape[1], -1) for n in names]
        feats[g] = torch.cat(parts, dim=1).to(torch.float64)
    for g, rows in tokens.items():  # transformers: neurons on the tokens' last axis
        feats[g] = torch.cat([feats[g], *rows] if g in feats else rows, dim=1)
    return feats


@torch.no_grad()
def activation_costs(
    parent: nn.Module, target: nn.Module, spec: AlignmentSpec, inputs: torch.Tensor, batch_size: int = 128
) -> dict[str, np.ndarray]:
    r"""Ground costs of every group from activations: :math:`M_{ij} = \| a^P_i - a^T_j \|_2`.

    :math:`a_i` stacks neuron i's values over all of ``inputs`` (and spatial
    positions) at the group's probes: pre-activations (after batch-norm, before
    ReLU); for a residual stream, every term written into it (stem, each block's
    conv2 branch, the shortcut conv); in a transformer, at ``spec.token_probes`` too
    (the stream at each LayerNorm's input, an MLP's hidden layer, attention's
    query-and-key and value projections). Squared distances are
    accumulated batch by batch, so memory does not grow with the sample count.
    Both models run in eval mode; their modes are restored afterwards.

    Returns
    -------
    dict[str, np.ndarray]
        Group -> cost of shape [n_parent, n_target].
    """
    blind = [g for g in spec.groups if not spec.probes.get(g) and not spec.token_probes.get(g)]
    if blind:
        raise ConfigError(f"activation alignment: group {blind[0]!r} has no module whose output shows its neurons "
                          f"on axis 1 ({len(blind)} such groups); use alignment='weights'")
    device = next(parent.parameters()).device
    sq: dict[str, torch.Tensor] = {}
    with eval_mode(parent, target):
        for x in torch.split(inputs, batch_size):
            fp = probe_features(parent, spec, x.to(device), with_tokens=True)
            ft = probe_features(target, spec, x.to(next(target.parameters()).device), with_tokens=True)
            for g in spec.groups:
                d2 = torch.cdist(fp[g], ft[g].to(device)) ** 2  # [n_p, n_t]
                sq[g] = sq[g] + d2 if g in sq else d2
    return {g: sq[g].sqrt().cpu().numpy() for g in spec.groups}


def align_to_target(
    p_state: State, t_state: State, spec: AlignmentSpec, solver: str, reg: float,
    act_costs: dict[str, np.ndarray] | None = None, seconds: dict[str, float] | None = None,
) -> tuple[State, dict[str, torch.Tensor], dict[str, float]]:
    """Map a parent's state onto the target's neurons, group by group in forward order.

    Returns the aligned state (target-shaped), the rescaled map A [n_p, n_t] and
    the OT cost <T, M> of every group. ``act_costs`` replaces the weight cost.
    ``seconds``, when given, accumulates each group's wall time. The groups of an
    attention module (``spec.heads``) are solved together by ``head_block_plans``.
    """
    state = dict(p_state)  # tensors are replaced, never written in place
    heads = {g: (n, groups) for n, groups in spec.heads.values() for g in groups}
    solved: set[str] = set()
    plans, costs = {}, {}
    for g in spec.groups:
        if g in solved:  # solved with its attention module's other group
            continue
        start = time.perf_counter()
        n_heads, unit = heads.get(g, (1, (g,)))
        # Earlier groups are already mapped in ``state`` (the past correction).
        unit_costs = {u: act_costs[u] if act_costs is not None else weight_cost(state, t_state, spec, u, solved)
                      for u in unit}
        unit_plans = (head_block_plans(unit_costs, n_heads, solver, reg) if n_heads > 1
                      else {g: solve_transport(unit_costs[g], solver=solver, reg=reg)})  # [n_p, n_t]
        for u, plan in unit_plans.items():
            costs[u] = float((plan * unit_costs[u]).sum())
            a = plan / np.maximum(plan.sum(axis=0, keepdims=True), 1e-300)  # columns sum to 1
            plans[u] = torch.from_numpy(a)
            apply_plan(state, spec, u, plans[u])
            solved.add(u)
            if seconds is not None:
                seconds[u] = seconds.get(u, 0.0) + (time.perf_counter() - start) / len(unit)
    return state, plans, costs


def check_target(target: int, k: int, *, name: str = "target") -> int:
    """`target` as an index in [0, k); ConfigError unless it is an int in [-k, k).
    The one statement of the rule (`geometric_fuse`, and `FusionOptions` as `--target`)."""
    if isinstance(target, bool) or not isinstance(target, int) or not -k <= target < k:
        raise ConfigError(f"{name} {target!r} is not a parent index for {k} parents; use an int in [{-k}, {k - 1}]")
    return target % k


def check_alignment(alignment: str, *, name: str = "alignment") -> None:
    """ConfigError unless `alignment` is one of ALIGNMENTS (`geometric_fuse`, and `FusionOptions`)."""
    if alignment not in ALIGNMENTS:
        raise ConfigError(f"unknown {name} {alignment!r}; use one of {', '.join(ALIGNMENTS)}")


def geometric_fuse(
    models: Sequence[nn.Module],
    *,
    weights: Sequence[float] | None = None,
    target: int = -1,
    solver: str = "exact",
    reg: float = 0.01,
    alignment: str = "weights",
    inputs: torch.Tensor | None = None,
    spec: AlignmentSpec | None = None,
) -> GeometricFusion:
    r"""Fuse k >= 2 networks by aligning each one's neurons to a target's with OT, then averaging.

    For every group g (``alignment_spec``) in forward order and every non-target
    parent P, with all earlier groups of P already mapped onto the target:

    1. cost :math:`M \in \mathbb{R}^{n_P \times n_T}`: weight-based (``weight_cost``,
       unit-normalised incoming weights, Euclidean distance) or activation-based
       (``activation_costs`` over ``inputs``);
    2. plan :math:`T` = ``solve_transport(M)`` with uniform marginals;
    3. :math:`A = T \, \mathrm{diag}(1 / T^\top 1)` so each target neuron's
       coefficients sum to 1, applied to every axis of g in every tensor of P
       (weights, biases, batch-norm parameters and statistics):
       :math:`W'[\dots, j, \dots] = \sum_i A_{ij} W[\dots, i, \dots]`.

    Then :math:`\theta = \sum_k w_k \theta'_k`. Parents may differ in width: they
    are mapped onto the target's width (A is then not square).

    **ResNet circularity.** A residual stream's writers include the conv2 of its
    blocks, whose inputs are inner groups that read the stream itself. Weight
    mode breaks the cycle by using only the writers whose other grouped axes are
    already aligned: the stem for stage 0's stream, and the first block's
    shortcut and conv2 for later stages. There is no coordinate-descent refinement.

    Batch-norm running statistics of the result are only averaged; recompute
    them with ``recompute_batchnorm_stats`` before use.

    Parameters
    ----------
    models : sequence of k >= 2 nn.Module
        Networks from ``build_model``, same spec up to ``width``; or any networks
        with the same state-dict keys and shapes, with ``spec`` given.
    weights : sequence of k non-negative floats, optional
        Averaging weights, normalised; equal by default.
    target : int
        Index of the parent whose neurons (and width) the others are mapped onto.
    solver, reg : str, float
        See ``solve_transport``.
    alignment : str
        ``"weights"`` or ``"activations"`` (needs ``inputs``).
    inputs : torch.Tensor, shape [N, C, H, W], optional
        Training samples for ``alignment="activations"``.
    spec : AlignmentSpec, optional
        The networks' alignment groups; by default ``alignment_spec(models[target])``,
        which traces a network ofexp built. For any other network pass
        ``trace_alignment(model, example_input)``, checked with ``check_alignment_spec``.

    Returns
    -------
    GeometricFusion
    """
    start = time.perf_counter()
    specs = parent_specs(models, allow_width=True)
    k = len(specs)
    w = fusion_weights(weights, k)
    t = check_target(target, k)
    check_alignment(alignment)  # solver and reg: solve_transport's own check
    if alignment == "activations" and not (isinstance(inputs, torch.Tensor) and len(inputs) > 0):
        raise ConfigError("alignment='activations' needs inputs=<tensor [N, C, H, W] of training samples>")
    spec = spec if spec is not None else alignment_spec(models[t])
    device = next(models[t].parameters()).device
    states = [{key: v.to(device) for key, v in m.state_dict().items()} for m in models]
    for s in states:
        check_covers(spec, s)
    aligned = {t: states[t]}
    plans: dict[str, list[torch.Tensor]] = {g: [] for g in spec.groups}
    costs = {g: 0.0 for g in spec.groups}
    group_seconds: dict[str, float] = {}
    for i in (i for i in range(k) if i != t):
        act = activation_costs(models[i], models[t], spec, inputs) if alignment == "activations" else None
        aligned[i], p_plans, p_costs = align_to_target(states[i], states[t], spec, solver, reg, act, group_seconds)
        for g in spec.groups:
            plans[g].append(p_plans[g])
            costs[g] += p_costs[g]
    # The target goes first so that integer buffers (num_batches_tracked) come from it.
    order = [t] + [i for i in range(k) if i != t]
    fused = _with_state(models[t], average_states([aligned[i] for i in order], [w[i] for i in order]))
    others = [aligned[i] for i in range(k) if i != t]
    return GeometricFusion(fused, plans, costs, time.perf_counter() - start, others, group_seconds,
                           _aligned_modules(models, others, t), spec)


def _with_state(template: nn.Module, state: State) -> nn.Module:
    """A copy of ``template`` (the target: its architecture and width) holding ``state``'s tensors."""
    out = copy.deepcopy(template)
    out.load_state_dict(state, assign=True)
    return out


def _aligned_modules(models: Sequence[nn.Module], aligned: list[State], t: int) -> list[nn.Module]:
    """The parents in input order, each non-target one rebuilt from its aligned state dict."""
    rest = iter(aligned)
    return [model if i == t else _with_state(models[t], next(rest)).eval() for i, model in enumerate(models)]
