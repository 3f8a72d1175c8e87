"""Geometric fusion speed: `python -m bench --only fusion [--quick]`.

Ours is `ofexp.fusion.geometric_fuse` (weight-based alignment, exact solver: a
linear assignment per group where the plan is a permutation). The baseline is
the same fusion with POT's `ot.emd` (network simplex) for every group, the
definition the shortcut must reproduce; both run in this process on the same
two randomly initialised parents (no bias, no batch-norm), alternately, on one
torch thread.
"""
from __future__ import annotations

import os
import statistics
import sys

import numpy as np
import ot
import torch

from bench.common import Result, one_thread, time_pair
from ofexp.fusion import alignment_spec, geometric_fuse
from ofexp.fusion.geometric import weight_cost
from ofexp.fusion.groups import apply_plan
from ofexp.fusion.naive import average_states
from ofexp.models import ModelSpec, build_model

TARGETS = {"vgg11": 0.25, "resnet18": 1.0}  # seconds of fusion at width 1, from the fusion issue


def _parents(arch: str, width: float) -> list[torch.nn.Module]:
    spec = ModelSpec(arch, 10, 3, 32, width=width)
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(build_model(spec).eval())
    return models


def _emd_fuse(models: list[torch.nn.Module]) -> dict[str, torch.Tensor]:
    """Baseline: align models[0] onto models[1] group by group with ot.emd, then average."""
    spec = alignment_spec(models[1].spec)
    state, target = dict(models[0].state_dict()), models[1].state_dict()
    solved: set[str] = set()
    for g in spec.groups:
        cost = weight_cost(state, target, spec, g, solved)  # [n, n]
        n, m = cost.shape
        plan = ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), cost, numItermax=10_000_000)
        apply_plan(state, spec, g, torch.from_numpy(plan / plan.sum(axis=0, keepdims=True)))
        solved.add(g)
    return average_states([target, state], [0.5, 0.5])


def _one(arch: str, width: float, repeats: int) -> Result:
    models = _parents(arch, width)
    ours_s, base_s, ours, base = time_pair(lambda: geometric_fuse(models, alignment="weights"),
                                           lambda: _emd_fuse(models), repeats)
    fused = ours.model.state_dict()
    diff = max((fused[k].float() - base[k].float()).abs().max().item() for k in fused)
    # Per group and total from the function's own clock (ours_s also counts building the result).
    groups = {g: round(s, 5) for g, s in ours.group_seconds.items()}
    target = TARGETS[arch] if width == 1 else None
    return Result(
        name=f"fusion {arch} width {width:g}", ours="geometric_fuse (weights, exact: assignment)",
        baseline="same fusion, ot.emd for every group", ours_s=ours_s, baseline_s=base_s,
        target=f"ours <= {target} s" if target else "",
        passed=None if target is None else statistics.median(ours_s) <= target,
        notes={"fusion_seconds_total": round(ours.seconds, 4), "seconds_per_group": groups,
               "groups": len(groups), "max_abs_diff_vs_baseline": diff,
               # Timings on a shared machine mean little without the load they were taken under.
               "torch_threads": torch.get_num_threads(), "load_average_1min": round(os.getloadavg()[0], 1)},
    )


def run(quick: bool, repeats: int) -> list[Result]:
    widths = (0.5,) if quick else (1.0,)
    with one_thread():  # fusion's few large GEMMs and assignments gain little from a second thread
        results = [_one(arch, w, repeats) for arch in ("vgg11", "resnet18") for w in widths]
    for r in results:
        per_group = ", ".join(f"{g} {s * 1e3:.1f} ms" for g, s in r.notes["seconds_per_group"].items())
        print(f"[bench] {r.name}: total {r.notes['fusion_seconds_total'] * 1e3:.1f} ms; {per_group}", file=sys.stderr)
    return results
