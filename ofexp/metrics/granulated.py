"""Granulated Kendall τ (Jiang et al. 2020, "Fantastic Generalization Measures and Where to Find Them").

A plain Kendall τ over every model of a study mixes models that differ in many ways; a
measure can rank them well only because it tracks one hyperparameter that also moves the
generalisation quantity. The granulated coefficient asks, one hyperparameter axis at a time,
whether the measure orders models that differ *only* in that axis as the generalisation
quantity orders them.

The models are indexed by their axes (here: width, seed and model kind). For an axis a,
a *group* is one setting of every other axis (a seed and a model kind) and holds the models
that differ only in a (the k_g widths of that seed and kind). With x the measure and y the
generalisation quantity (the study's accuracy metric),

    τ_g = Kendall τ-b(x, y) over the k_g models of group g     (scipy.stats.kendalltau)
    ψ_a = (1 / G) Σ_g τ_g                                        over the G groups where τ_g is defined
    Ψ   = (1 / A) Σ_a ψ_a                                        over the A axes the study varies

A group where x or y is constant (or that has fewer than 2 models with both values) has no τ:
it is skipped and counted (`skipped`), never read as 0. With one varied axis, Ψ = ψ_a.

p-value of ψ_a: a permutation test over the groups. H0: within each group, the measure's
values are exchangeable across the axis' settings (the measure says nothing about the
quantity once the other axes are fixed). Under H0 each group's τ is that of a uniformly
random permutation of its x against its y, independently of the other groups. Each group's
k_g! permutation τ values are listed (k_g ≤ 8; larger groups are sampled), PERMUTATIONS
draws of ψ are made by picking one per group (numpy default_rng(PERMUTATION_SEED)), and
p = (1 + #{|ψ*| ≥ |ψ_a|}) / (1 + PERMUTATIONS), two-sided and never 0. Ψ over several axes
gets no p-value (its axes' groups overlap, so their τ are not independent).

Not meaningful: when even a measure that ordered every group perfectly (τ_g = 1) could not
reach p < ALPHA, i.e. 2 Π_g 1/k_g! ≥ ALPHA (one group of 3 widths: 1/3; two: 1/18; three:
1/108), the row keeps its value but says so in its note: too few groups to tell the measure
from chance.
"""
from __future__ import annotations

import itertools
import math
import warnings
from typing import Sequence

import numpy as np
import pandas as pd

GRANULATED_COLUMNS = ["axis", "measure", "value", "p_value", "groups", "skipped", "models", "note"]
ALL_AXES = "Ψ"  # the axis column of the mean over axes
PERMUTATIONS = 10_000
PERMUTATION_SEED = 0
ALPHA = 0.05
_ENUMERATED = 8  # groups up to this size list all k! permutations; larger ones are sampled


def kendall(x: np.ndarray, y: np.ndarray) -> float:
    """scipy's Kendall τ-b of x[k], y[k]; NaN when either is constant or k < 2 (no warning)."""
    from scipy import stats  # here, not at the top: a step that imports the report computes no τ

    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(stats.kendalltau(x, y)[0])


def group_taus(groups: Sequence[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    """τ_g of each group's (x[k_g], y[k_g]): [G], NaN where undefined."""
    return np.array([kendall(x, y) for x, y in groups], dtype=float)


def _null_taus(x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """τ of x permuted against y, over every permutation (k ≤ _ENUMERATED) or PERMUTATIONS random ones."""
    if len(x) <= _ENUMERATED:
        orders = np.array(list(itertools.permutations(range(len(x)))))
    else:
        orders = np.array([rng.permutation(len(x)) for _ in range(PERMUTATIONS)])
    return np.array([kendall(x[order], y) for order in orders])


def permutation_p(groups: Sequence[tuple[np.ndarray, np.ndarray]], psi: float,
                  resamples: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> float:
    """Two-sided permutation p-value of ψ = mean τ_g over `groups` (the defined ones only)."""
    rng = np.random.default_rng(seed)
    draws = np.zeros(resamples)
    for x, y in groups:
        null = _null_taus(x, y, rng)  # every value defined: x and y are not constant
        draws += null[rng.integers(len(null), size=resamples)]
    draws /= len(groups)
    extreme = np.abs(draws) >= abs(psi) - 1e-12  # ties with the observed value count as extreme
    return float((1 + extreme.sum()) / (1 + resamples))


def best_p(sizes: Sequence[int]) -> float:
    """The smallest two-sided p a perfect ordering of groups of these sizes can get: 2 Π 1/k_g!."""
    return min(1.0, 2.0 * math.prod(1.0 / math.factorial(k) for k in sizes))


def granulated_kendall(values: pd.DataFrame, measure: str, target: str, axis: str, others: list[str]) -> tuple:
    """One GRANULATED_COLUMNS row: ψ of `measure` against `target` along `axis`.

    `values` is wide: one row per model, a column per axis (`axis`, and `others`: the axes
    held fixed within a group) and one per measure. Models missing either value are left out.
    """
    groups, skipped = [], 0
    for _, frame in values.groupby(others, sort=True) if others else [((), values)]:
        pair = frame[[measure, target]].dropna()
        x, y = pair[measure].to_numpy(float), pair[target].to_numpy(float)
        if math.isnan(kendall(x, y)):
            skipped += 1
        else:
            groups.append((x, y))
    models = sum(len(x) for x, _ in groups)
    if not groups:
        return (axis, measure, math.nan, math.nan, 0, skipped, 0,
                f"undefined: no group of models differing only in {axis} has a τ (the measure or "
                "the quantity is constant, or a group has fewer than 2 models)")
    psi = float(np.mean(group_taus(groups)))
    note = ""
    if best_p([len(x) for x, _ in groups]) >= ALPHA:
        note = (f"not meaningful: {len(groups)} group(s) of {'/'.join(str(len(x)) for x, _ in groups)} models; "
                f"even a perfect ordering in every group would have p ≥ {ALPHA}")
    return (axis, measure, psi, permutation_p(groups, psi), len(groups), skipped, models, note)


def granulated_table(values: pd.DataFrame, target: str, axes: Sequence[str]) -> pd.DataFrame:
    """ψ of every measure along each of `axes`, then (with 2+ axes) Ψ, the mean over axes.

    `values` is wide [models, axis columns + measure columns]; `values.attrs["measures"]`
    lists its measure columns (target included). Returns GRANULATED_COLUMNS rows; a Ψ row's
    groups/skipped/models are sums over its axes and it has no p-value (module docstring).
    """
    measures = values.attrs["measures"]
    fixed = [c for c in values.columns if c not in measures]  # every axis: the varied one and the others
    rows = [granulated_kendall(values, m, target, axis, [c for c in fixed if c != axis])
            for m in measures if m != target for axis in axes]
    table = pd.DataFrame(rows, columns=GRANULATED_COLUMNS)
    if len(axes) > 1:
        mean = [(ALL_AXES, m, frame["value"].mean(skipna=False), math.nan, frame["groups"].sum(),
                 frame["skipped"].sum(), frame["models"].sum(), "mean over axes; p-values are per axis")
                for m, frame in table.groupby("measure", sort=False)]
        table = pd.concat([table, pd.DataFrame(mean, columns=GRANULATED_COLUMNS)], ignore_index=True)
    return table


def wide_values(long: pd.DataFrame, axes: Sequence[str]) -> pd.DataFrame:
    """Long (model_kind, seed, *axes, measure, value) rows as one row per model, a column per measure,
    with attrs["measures"] naming the measure columns (the form `granulated_table` reads)."""
    index = [c for c in long.columns if c not in ("measure", "value")]
    missing = [a for a in axes if a not in index]
    if missing:
        raise ValueError(f"granulated τ: no column {missing[0]!r} in the values")
    wide = long.pivot_table(index=index, columns="measure", values="value", aggfunc="first").reset_index()
    wide.columns.name = None
    wide.attrs["measures"] = list(dict.fromkeys(long["measure"]))
    return wide
