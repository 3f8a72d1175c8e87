"""Granulated Kendall τ: known answers on hand-made studies (a measure that orders every group's widths
as the accuracy does gives ψ = 1, a reversed one −1, a constant one is skipped and counted), the
permutation p-value, and the note when too few groups make any value indistinguishable from chance."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ofexp.metrics.granulated import (ALL_AXES, GRANULATED_COLUMNS, best_p, granulated_table, permutation_p,
                                      wide_values)

WIDTHS = (0.25, 0.5, 1.0)


def _study(seeds: int, kinds=("parent_1", "naive_fused"), measures=None) -> pd.DataFrame:
    """Long rows of a width study whose accuracy rises with width in every (kind, seed), with
    some noise between groups so that groups are not copies of one another."""
    rng = np.random.default_rng(1)
    rows = []
    for kind, seed, width in itertools.product(kinds, range(1, seeds + 1), WIDTHS):
        accuracy = 0.5 + 0.3 * width + 0.01 * rng.random()
        values = {"accuracy": accuracy, "good": 10 * width + seed, "reversed": -width + 0.1 * seed,
                  "constant": 7.0, **({} if measures is None else measures(kind, seed, width))}
        rows += [(kind, seed, width, name, value) for name, value in values.items()]
    return pd.DataFrame(rows, columns=["model_kind", "seed", "width", "measure", "value"])


def _table(long: pd.DataFrame, axes=("width",)) -> pd.DataFrame:
    return granulated_table(wide_values(long, axes), "accuracy", axes).set_index(["axis", "measure"])


def test_perfect_reversed_and_constant_measures():
    table = _table(_study(seeds=3))
    assert list(table.reset_index().columns) == GRANULATED_COLUMNS
    good, reversed_, constant = (table.loc[("width", m)] for m in ("good", "reversed", "constant"))
    assert good["value"] == 1.0 and reversed_["value"] == -1.0
    assert (good["groups"], good["skipped"], good["models"]) == (6, 0, 18)  # 2 kinds × 3 seeds, 3 widths each
    assert math.isnan(constant["value"]) and constant["groups"] == 0 and constant["skipped"] == 6
    assert constant["note"].startswith("undefined")
    # 6 groups of 3: |ψ| = 1 has null probability 2·(1/6)^6 = 4e-5; p is at the permutation floor 1/10,001
    assert good["p_value"] < 5e-4 and reversed_["p_value"] < 5e-4
    assert good["note"] == "" and ("width", "accuracy") not in table.index  # the quantity is not its own measure


def test_mean_over_groups_skips_constant_groups_and_matches_scipy():
    # seed 1: the measure is constant over widths (skipped); seeds 2, 3: scipy's τ of hand-picked orders
    orders = {1: [5.0, 5.0, 5.0], 2: [1.0, 3.0, 2.0], 3: [3.0, 2.0, 1.0]}
    long = _study(seeds=3, kinds=("parent_1",),
                  measures=lambda kind, seed, width: {"mixed": orders[seed][WIDTHS.index(width)]})
    row = _table(long).loc[("width", "mixed")]
    expected = np.mean([stats.kendalltau(orders[s], [1, 2, 3])[0] for s in (2, 3)])  # accuracy rises with width
    assert row["value"] == pytest.approx(expected) and (row["groups"], row["skipped"], row["models"]) == (2, 1, 6)
    assert row["note"].startswith("not meaningful")  # 2 groups of 3: best p = 2/36 ≥ 0.05


def test_too_few_groups_is_not_meaningful():
    one_seed = _table(_study(seeds=1, kinds=("parent_1",))).loc[("width", "good")]
    assert one_seed["value"] == 1.0 and one_seed["note"].startswith("not meaningful")
    assert one_seed["p_value"] == pytest.approx(1 / 3, abs=0.02)  # two of the 3! orders have |τ| = 1
    assert best_p([3, 3]) == pytest.approx(2 / 36) and best_p([3, 3, 3]) < 0.05


def test_permutation_p_of_a_chance_level_statistic_is_one():
    # groups whose τ are +1 and −1: ψ = 0, which every permutation reaches or exceeds in size
    groups = [(np.array([1.0, 2.0]), np.array([1.0, 2.0])), (np.array([2.0, 1.0]), np.array([1.0, 2.0]))]
    assert permutation_p(groups, 0.0) == 1.0


def test_permutation_p_equals_the_exact_null_distribution():
    # 2 groups of 3: ψ's exact null is the mean of two independent draws from the 6 permutation τ's
    x, y = np.array([1.0, 3.0, 2.0]), np.array([1.0, 2.0, 3.0])
    taus = [stats.kendalltau(x[list(p)], y)[0] for p in itertools.permutations(range(3))]
    psi = stats.kendalltau(x, y)[0]
    exact = np.mean([abs((a + b) / 2) >= abs(psi) - 1e-12 for a in taus for b in taus])
    assert permutation_p([(x, y), (x, y)], psi) == pytest.approx(exact, abs=0.015)


def test_psi_is_the_mean_over_axes():
    # a second axis: each model again at depth 1, more accurate, where "good" rises and "reversed" rises too
    shallow = _study(seeds=3, kinds=("parent_1",)).assign(depth=0)
    deep = shallow.assign(depth=1, value=shallow["value"] + np.where(shallow["measure"] == "accuracy", 0.1, 1.0))
    table = _table(pd.concat([shallow, deep]), axes=("width", "depth"))
    assert table.loc[("depth", "good"), "value"] == 1.0 and table.loc[("depth", "reversed"), "value"] == 1.0
    for measure in ("good", "reversed"):
        per_axis = [table.loc[(a, measure), "value"] for a in ("width", "depth")]
        assert table.loc[(ALL_AXES, measure), "value"] == pytest.approx(np.mean(per_axis))
        assert math.isnan(table.loc[(ALL_AXES, measure), "p_value"])


def test_a_missing_axis_is_refused():
    with pytest.raises(ValueError, match="'width'"):
        wide_values(_study(seeds=1).drop(columns="width"), ("width",))
