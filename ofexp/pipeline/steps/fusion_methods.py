"""The fusion methods, as a registry: each method owns its options, its params and its fuse function.

A method names the `FusionOptions` fields it reads (`options`). From that one list come
the fuse run's params, and so the step's identity (`cache.step_identity`): a run is
reused only by a step that agrees on every option the method reads, and an option it
does not read does not stop the reuse. The CLI's `--method` choices and help are the
registry's keys and help lines. Adding a method is one `FusionMethod` entry here (with
its fuse function), a test and a docs line; see docs/design.md, "One owner per name".

Every method's run also reads `COMMON_OPTIONS`: `recompute_bn` is applied to whatever
network a method returns (`pipeline/steps/fuse.py`), whatever the method.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import nn

from ofexp.data import DataSplits
from ofexp.fusion import geometric_fuse, naive_fuse

# Options every fuse run reads, whichever the method: the step applies them after the method.
COMMON_OPTIONS = ("recompute_bn",)


@dataclass(frozen=True)
class Fused:
    """What a method made: the network, and for an aligning method its alignment (plans,
    costs, aligned parents; `GeometricResult`) and the activation samples it aligned on."""

    model: nn.Module
    alignment: Any = None
    inputs: torch.Tensor | None = None


@dataclass(frozen=True)
class FusionMethod:
    """One fusion method: `--method NAME`, one fuse run per method.

    `options` are the FusionOptions fields it reads; `only_with` makes an option count only
    when another (an on/off option) is on, e.g. curve_samples only with interpolation.
    `aligns`: whether it matches neurons across the parents (it then needs the networks'
    traced structure, and may fuse parents of different widths).
    """

    name: str
    help: str
    options: tuple[str, ...]
    fuse: Callable[[Any, Sequence[nn.Module], DataSplits, Any], Fused]
    aligns: bool = False
    only_with: Mapping[str, str] = field(default_factory=dict)

    def params(self, opts: Any) -> dict[str, object]:
        """The params of this method's fuse run for `opts` (a FusionOptions): the options it reads."""
        read = [name for name in (*self.options, *COMMON_OPTIONS)
                if name not in self.only_with or getattr(opts, self.only_with[name])]
        return {name: _param_value(name, getattr(opts, name)) for name in read}


def _param_value(name: str, value: Any) -> object:
    if name == "fusion_weights":
        return ",".join(map(str, value)) if value else "equal"
    return value


def activation_inputs(splits: DataSplits, n: int, seed: int = 0) -> torch.Tensor:
    """A fixed sample of n training inputs, the same for every fusion of this data with this seed."""
    return splits.train_x[fixed_sample(len(splits.train_x), n, seed)]  # [n, C, H, W]


def fixed_sample(total: int, n: int, seed: int = 0) -> torch.Tensor:
    """n of range(total) drawn with `seed` (all of them, in order, when n ≥ total)."""
    if n >= total:
        return torch.arange(total)
    return torch.randperm(total, generator=torch.Generator().manual_seed(seed))[:n]


def _naive(opts: Any, models: Sequence[nn.Module], splits: DataSplits, structure: Any) -> Fused:
    return Fused(naive_fuse(models, weights=opts.fusion_weights))


def _geometric(opts: Any, models: Sequence[nn.Module], splits: DataSplits, structure: Any) -> Fused:
    inputs = activation_inputs(splits, opts.activation_samples, opts.activation_seed)
    result = geometric_fuse(models, weights=opts.fusion_weights, target=opts.target, solver=opts.solver,
                            reg=opts.reg, alignment=opts.alignment, inputs=inputs, spec=structure)
    return Fused(result.model, result, inputs)


FUSION_METHODS: dict[str, FusionMethod] = {method.name: method for method in (
    FusionMethod("naive", "average the weights", ("fusion_weights",), _naive),
    FusionMethod("geometric", "align neurons by optimal transport, then average",
                 ("fusion_weights", "alignment", "solver", "reg", "target", "repair", "interpolation",
                  "curve_samples", "activation_samples", "activation_seed"),
                 _geometric, aligns=True, only_with={"curve_samples": "interpolation"}),
)}
METHODS = tuple(FUSION_METHODS)
