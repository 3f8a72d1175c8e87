"""Alignment groups as data: which axes of which tensors must be permuted together.

An ``AlignmentSpec`` maps each state-dict key to the group of each of its axes
(``None`` for an axis that is never permuted, ``()`` for scalars). Two networks
that differ by a relabelling of the neurons of every group compute the same
function; fusion searches for that relabelling (or a soft version of it).

A group's *writers* are the tensors whose axis 0 is the group (they produce its
neurons: conv / linear weight and bias, batch-norm parameters and buffers); its
*readers* carry the group on another axis (the next layer's input axis).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn


Factor = tuple[str | None, int]  # (group or None, size)
Segment = tuple[Factor, ...]  # factors in row-major order: index = ((i0 * n1) + i1) * n2 + ...
Layout = tuple[Segment, ...]  # segments concatenated along the axis
Axis = str | Layout | None
Axes = tuple[Axis, ...]


def axis_groups(axis: Axis) -> list[str]:
    """The groups one axis entry holds: itself if a name, its factors' groups if a layout."""
    if axis is None:
        return []
    if isinstance(axis, str):
        return [axis]
    return [g for seg in axis for g, _ in seg if g is not None]


def _axis_size(axis: Axis, n: int) -> int:
    """Length of an axis the entry describes (``n``, the tensor's, for a plain group)."""
    if isinstance(axis, tuple):
        return sum(math.prod(size for _, size in seg) for seg in axis)
    return n


@dataclass(frozen=True)
class AlignmentSpec:
    """Group of every axis of every tensor of a network.

    Attributes
    ----------
    axes : dict[str, tuple[Axis, ...]]
        State-dict key -> group per axis, in forward (state-dict) order. An axis
        entry is a group name, ``None`` (never permuted), or a ``Layout`` for a
        block-structured axis: concatenated segments (``cat``), each a row-major
        product of factors (``flatten`` of channels with spatial positions).
    probes : dict[str, tuple[str, ...]]
        Group -> names of the modules whose outputs hold the group's neurons on
        axis 1; activation-based alignment reads them. May be empty.
    heads : dict[str, tuple[int, tuple[str, ...]]]
        Attention module -> (h, its groups): each group is h blocks (heads) of
        size/h neurons; a permutation of such a group may only move whole heads,
        all of the module's groups alike, and permute within each head.
    token_probes : dict[str, tuple[tuple[str, str], ...]]
        Group -> (module, where) pairs that show its neurons on the last axis of token
        tensors [B, S, n] (``TOKEN_PROBES``): activation alignment reads them beside ``probes``.
    groups : tuple[str, ...]
        Derived: group names in order of first appearance, i.e. forward order.
    writers, readers : dict[str, tuple[str, ...]]
        Derived: per group, the keys with the group on axis 0 / on another axis.
    """

    axes: dict[str, Axes]
    probes: dict[str, tuple[str, ...]] = field(default_factory=dict)
    heads: dict[str, tuple[int, tuple[str, ...]]] = field(default_factory=dict)
    token_probes: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)
    groups: tuple[str, ...] = field(init=False, repr=False, compare=False)
    writers: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)
    readers: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        writers: dict[str, list[str]] = {}
        readers: dict[str, list[str]] = {}
        for key, axes in self.axes.items():
            for i, g in ((i, g) for i, ax in enumerate(axes) for g in axis_groups(ax)):
                writers.setdefault(g, [])
                readers.setdefault(g, [])
                bucket = writers[g] if i == 0 else readers[g]
                if key not in bucket:
                    bucket.append(key)
        for g, w in writers.items():
            if not w:
                raise ValueError(
                    f"alignment spec: group {g!r} is read by {readers[g][0]!r} but written by no tensor; "
                    "give every group a writer (a tensor with the group on axis 0)"
                )
        for module, (n, groups) in self.heads.items():
            unknown = [g for g in groups if g not in writers]
            if unknown or n < 1:
                raise ValueError(f"alignment spec: heads of {module!r} name {unknown[0] if unknown else n!r}, "
                                 "which is not a group with a writer (or not a head count >= 1)")
        object.__setattr__(self, "groups", tuple(writers))
        object.__setattr__(self, "writers", {g: tuple(v) for g, v in writers.items()})
        object.__setattr__(self, "readers", {g: tuple(v) for g, v in readers.items()})


def check_covers(spec: AlignmentSpec, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Raise ValueError unless ``spec`` describes exactly the tensors of ``state_dict``.

    Checks: the same keys on both sides, one group entry per tensor axis, and
    one size for all axes of a group.
    """
    problems = [f"{k!r} is not in the spec" for k in state_dict if k not in spec.axes]
    problems += [f"{k!r} is in the spec but not in the state dict" for k in spec.axes if k not in state_dict]
    sizes: dict[str, tuple[str, int]] = {}
    for key, axes in spec.axes.items():
        if key not in state_dict:
            continue
        shape = tuple(state_dict[key].shape)
        if len(axes) != len(shape):
            problems.append(f"{key!r} has {len(shape)} axes but the spec names {len(axes)}")
            continue
        for ax, n in zip(axes, shape):
            if _axis_size(ax, n) != n:
                problems.append(f"{key!r} has {n} entries on an axis whose layout spans {_axis_size(ax, n)}")
                continue
            factors = [(g, size) for seg in ax for g, size in seg] if isinstance(ax, tuple) else [(ax, n)]
            for g, size in factors:
                if g is None:
                    continue
                first = sizes.setdefault(g, (key, size))
                if first[1] != size:
                    problems.append(f"group {g!r} has size {first[1]} in {first[0]!r} but {size} in {key!r}")
    for module, (n, groups) in spec.heads.items():
        problems += [f"group {g!r} of {sizes[g][1]} neurons does not split into {n} heads of {module!r}"
                     for g in groups if g in sizes and sizes[g][1] % n]
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ValueError(
            "alignment spec does not match the state dict: " + "; ".join(problems[:5]) + more
            + "; fix alignment_spec() for this architecture"
        )


def group_sizes(spec: AlignmentSpec, state_dict: Mapping[str, torch.Tensor]) -> dict[str, int]:
    """Number of neurons of each group in ``state_dict``, in forward order."""
    sizes = {}
    for g in spec.groups:
        key = spec.writers[g][0]
        axis = spec.axes[key][0]
        factors = [f for seg in axis for f in seg] if isinstance(axis, tuple) else [(axis, state_dict[key].shape[0])]
        sizes[g] = int(next(size for name, size in factors if name == g))
    return sizes


def permutation_units(spec: AlignmentSpec) -> list[tuple[str, ...]]:
    """The groups in forward order, as the units a permutation moves together: an attention
    module's groups (which share their head permutation) form one unit, every other group its own."""
    tied = {g: groups for _, groups in spec.heads.values() for g in groups}
    units: list[tuple[str, ...]] = []
    for g in spec.groups:
        unit = tied.get(g, (g,))
        if unit not in units:
            units.append(unit)
    return units


def random_permutations(spec: AlignmentSpec, sizes: Mapping[str, int], generator: torch.Generator,
                        unit: tuple[str, ...] | None = None) -> dict[str, torch.Tensor]:
    """A random symmetry of the network: a permutation per group of ``unit`` (all units by default).

    A group of attention heads (``spec.heads``) gets a block permutation: new head j is old head
    pi[j] (pi shared by the module's groups), its dimensions reordered by the group's own draw per head.
    """
    heads = {g: n for n, groups in spec.heads.values() for g in groups}
    perms: dict[str, torch.Tensor] = {}
    for members in [unit] if unit is not None else permutation_units(spec):
        n_heads = heads.get(members[0], 1)
        if n_heads == 1:
            perms.update({g: torch.randperm(sizes[g], generator=generator) for g in members})
            continue
        order = torch.randperm(n_heads, generator=generator)  # [h]: shared by the unit's groups
        for g in members:
            d = sizes[g] // n_heads
            perms[g] = torch.cat([int(h) * d + torch.randperm(d, generator=generator) for h in order])  # [h * d]
    return perms


def map_axis(t: torch.Tensor, axis: int, plan: torch.Tensor, perm: torch.Tensor | None = None) -> torch.Tensor:
    """``t'[..., j, ...] = sum_i plan[i, j] t[..., i, ...]`` along ``axis``.

    Parameters
    ----------
    t : torch.Tensor
        Any tensor with ``t.shape[axis] == n``.
    axis : int
        The axis to map.
    plan : torch.Tensor, shape [n, m]
        Column j holds the coefficients of the old neurons that make new neuron j.
    perm : torch.Tensor, shape [n], optional
        ``_as_permutation(plan)``, when the caller has it already.

    Returns
    -------
    torch.Tensor
        ``t`` with ``axis`` resized to m.
    """
    if t.shape[axis] != plan.shape[0]:
        raise ValueError(
            f"map_axis: axis {axis} of a {tuple(t.shape)} tensor does not match a {tuple(plan.shape)} plan"
        )
    perm = _as_permutation(plan) if perm is None else perm
    if perm is not None:  # a 0/1 permutation: gathering is exact and much cheaper than a matmul
        return _gather(t, axis, perm.to(t.device))
    moved = torch.movedim(t, axis, -1)  # [..., n]
    return torch.movedim(moved @ plan.to(t.device, t.dtype), -1, axis)  # [..., m] -> back in place


def _gather(t: torch.Tensor, axis: int, perm: torch.Tensor) -> torch.Tensor:
    """``t`` with ``axis`` reordered by ``perm`` [n]."""
    if axis == 0 or t.ndim == 1:
        return torch.index_select(t, 0, perm)
    # index_select on an inner axis of a conv weight [o, n, kh, kw] walks tiny strided
    # runs and is ~2x slower than selecting whole [n * kh * kw] columns of a 2-D view.
    inner = t.shape[axis + 1:].numel()
    cols = (perm[:, None] * inner + torch.arange(inner, device=t.device)).reshape(-1)  # [n * inner]
    outer = t.shape[:axis].numel()
    return torch.index_select(t.reshape(outer, -1), 1, cols).view(t.shape)


def _as_permutation(plan: torch.Tensor) -> torch.Tensor | None:
    """``perm`` with ``plan[perm[j], j] = 1`` if ``plan`` [n, n] is a 0/1 permutation matrix, else None."""
    if plan.ndim != 2 or plan.shape[0] != plan.shape[1]:
        return None
    perm = plan.argmax(dim=0)  # [n]
    if not torch.equal(plan[perm, torch.arange(len(perm))], torch.ones(len(perm), dtype=plan.dtype)):
        return None
    if int(torch.count_nonzero(plan)) != len(perm):
        return None
    return perm


def apply_plan(state: dict[str, torch.Tensor], spec: AlignmentSpec, group: str, plan: torch.Tensor) -> None:
    """Map every axis of ``group`` in every tensor of ``state`` with ``plan`` [n, m], in place.

    The same operation serves out-axes (writers) and in-axes (readers): neuron j
    of the result is ``sum_i plan[i, j]`` times neuron i wherever it appears.
    """
    perm = _as_permutation(plan)  # checked once for all of the group's tensors
    # a tensor can write and read one group (a residual stream's square 1x1 conv): map it once
    for key in dict.fromkeys(spec.writers[group] + spec.readers[group]):
        t = state[key]
        for axis, g in enumerate(spec.axes[key]):
            if g == group:
                t = map_axis(t, axis, plan, perm)
            elif isinstance(g, tuple) and group in axis_groups(g):
                t = _map_layout(t, axis, g, group, plan, perm)
        state[key] = t


def _map_layout(t: torch.Tensor, axis: int, layout: Layout, group: str, plan: torch.Tensor,
                perm: torch.Tensor | None) -> torch.Tensor:
    """``map_axis`` on every factor of ``group`` inside a block-structured axis of ``t``."""
    if plan.shape[0] != plan.shape[1]:
        raise ValueError(f"group {group!r} sits in a block-structured axis (cat or flatten), which needs parents "
                         f"of one width; got a {tuple(plan.shape)} map")
    pieces, start = [], 0
    for seg in layout:
        sizes = [n for _, n in seg]
        piece = t.narrow(axis, start, math.prod(sizes))  # [..., prod(sizes), ...]
        start += math.prod(sizes)
        if any(g == group for g, _ in seg):
            piece = piece.reshape(*t.shape[:axis], *sizes, *t.shape[axis + 1:])  # [..., *sizes, ...]
            for j, (g, _) in enumerate(seg):
                if g == group:
                    piece = map_axis(piece, axis + j, plan, perm)
            piece = piece.reshape(*t.shape[:axis], -1, *t.shape[axis + 1:])
        pieces.append(piece)
    return torch.cat(pieces, dim=axis)


def permutation_plan(perm: torch.Tensor) -> torch.Tensor:
    """0/1 matrix P [n, n] with ``P[perm[j], j] = 1``: new neuron j is old neuron perm[j]."""
    n = perm.numel()
    return torch.eye(n)[:, perm]  # [n, n]


def permute_model(model: nn.Module, perms: Mapping[str, Sequence[int] | torch.Tensor],
                  spec: AlignmentSpec | None = None) -> nn.Module:
    """A copy of ``model`` whose neuron j of each group g is the old neuron ``perms[g][j]``.

    The copy computes the same function as ``model`` (eval mode): this is the
    symmetry that fusion undoes. Groups not in ``perms`` are left as they are.
    ``spec`` defaults to ``alignment_spec(model)``, which needs a network ofexp built.
    """
    if spec is None:
        from ofexp.fusion.trace import alignment_spec  # trace imports this module

        spec = alignment_spec(model)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    check_covers(spec, state)
    sizes = group_sizes(spec, state)
    for g, perm in perms.items():
        if g not in sizes:
            raise ValueError(f"permute_model: unknown group {g!r}; valid groups are {', '.join(sizes)}")
        perm = torch.as_tensor(perm, dtype=torch.long)
        if not torch.equal(torch.sort(perm).values, torch.arange(sizes[g])):
            raise ValueError(
                f"permute_model: perms[{g!r}] is not a permutation of 0..{sizes[g] - 1}; pass one"
            )
        apply_plan(state, spec, g, permutation_plan(perm))
    out = copy.deepcopy(model)
    out.load_state_dict(state)
    return out
