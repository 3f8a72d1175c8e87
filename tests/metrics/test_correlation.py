"""Correlation space: scipy's coefficients and p-values per model kind and pooled, bootstrap intervals,
NaN with a note when undefined, a note when n < 3, no warnings."""
from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from ofexp.metrics.correlation import (CORRELATION_COLUMNS, CORRELATIONS, POOLED, bootstrap_interval, correlate,
                                       correlation_table, resampled_coefficients)

SCIPY = {"kendall": stats.kendalltau, "pearson": stats.pearsonr, "spearman": stats.spearmanr}


def _long(kind: str, accuracy: list[float], **measures: list[float]) -> pd.DataFrame:
    rows = [(kind, seed, "accuracy", v) for seed, v in enumerate(accuracy, start=1)]
    for name, values in measures.items():
        rows += [(kind, seed, name, v) for seed, v in enumerate(values, start=1)]
    return pd.DataFrame(rows, columns=["model_kind", "seed", "measure", "value"])


ACC_A, LIP_A = [0.9, 0.8, 0.95, 0.7], [3.0, 4.0, 2.5, 4.1]
ACC_B, LIP_B = [0.5, 0.6, 0.4, 0.55], [1.0, 0.5, 2.0, 0.7]


def test_coefficients_and_p_values_equal_scipy_per_kind():
    values = pd.concat([_long("parent_1", ACC_A, lipschitz=LIP_A), _long("naive_fused", ACC_B, lipschitz=LIP_B)])
    table = correlation_table(values, "accuracy", pooled=False)
    assert list(table.columns) == CORRELATION_COLUMNS
    assert len(table) == 2 * len(CORRELATIONS)  # target itself is not correlated with itself
    for kind, acc, lip in (("parent_1", ACC_A, LIP_A), ("naive_fused", ACC_B, LIP_B)):
        got = table[table.model_kind == kind].set_index("method")
        for method, fn in SCIPY.items():
            expected = fn(lip, acc)
            assert got.loc[method, "value"] == pytest.approx(expected[0])
            assert got.loc[method, "p_value"] == pytest.approx(expected[1])
    assert (table["n"] == 4).all() and (table["note"] == "").all()


def test_pooled_rows_correlate_every_model_with_scipys_values():
    values = pd.concat([_long("parent_1", ACC_A, lipschitz=LIP_A), _long("naive_fused", ACC_B, lipschitz=LIP_B)])
    table = correlation_table(values, "accuracy")
    pooled = table[table.model_kind == POOLED].set_index("method")
    assert len(table) == 3 * len(CORRELATIONS) and len(pooled) == len(CORRELATIONS)
    assert (pooled["n"] == 2 * 4).all(), "pooled n = kinds × seeds"
    for method, fn in SCIPY.items():
        expected = fn(LIP_A + LIP_B, ACC_A + ACC_B)
        assert pooled.loc[method, "value"] == pytest.approx(expected[0])
        assert pooled.loc[method, "p_value"] == pytest.approx(expected[1])
    # a (kind, seed) without the measure's value drops out of the pooled pairs, as per kind
    values = values[~((values.model_kind == "naive_fused") & (values.measure == "lipschitz") & (values.seed == 3))]
    assert (correlation_table(values, "accuracy").query("model_kind == @POOLED")["n"] == 7).all()


def test_the_interval_contains_the_coefficient_and_is_the_same_every_time():
    x, y = [3.0, 4.0, 2.5, 4.1, 3.3, 2.9], [0.9, 0.8, 0.95, 0.7, 0.85, 0.8]
    first, again = correlate(x, y), correlate(x, y)
    assert first == again
    for method, c in first.items():
        assert -1.0 <= c.ci_low <= c.value <= c.ci_high <= 1.0, (method, c)
        assert c.ci_low < c.ci_high, (method, c)


def test_the_interval_is_the_percentiles_of_scipys_coefficients_over_seeded_resamples():
    x, y = np.array([3.0, 4.0, 2.5, 4.1, 4.0]), np.array([0.9, 0.8, 0.95, 0.7, 0.9])  # ties in both
    counts = np.random.default_rng(7).multinomial(5, [0.2] * 5, size=300)
    got = bootstrap_interval(x, y, resamples=300, seed=7)
    for method, fn in SCIPY.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # constant resamples: scipy warns and gives nan; they are dropped
            values = np.array([fn(np.repeat(x, c), np.repeat(y, c))[0] for c in counts])
        expected = np.percentile(values[np.isfinite(values)], [2.5, 97.5])
        assert got[method] == pytest.approx(tuple(np.clip(expected, -1, 1)), abs=1e-12), method


def test_resampled_coefficients_equal_scipys_on_each_resample():
    rng = np.random.default_rng(3)
    x, y = rng.integers(0, 4, size=7).astype(float), rng.normal(size=7)  # ties in x
    counts = rng.multinomial(7, [1 / 7] * 7, size=50)
    got = resampled_coefficients(x, y, counts.astype(float))
    for method, fn in SCIPY.items():
        for b, c in enumerate(counts):
            xs, ys = np.repeat(x, c), np.repeat(y, c)
            if np.ptp(xs) == 0 or np.ptp(ys) == 0:
                assert math.isnan(got[method][b])
            else:
                assert got[method][b] == pytest.approx(fn(xs, ys)[0], abs=1e-12), (method, c)


def test_two_seeds_keep_the_value_with_a_note_and_no_interval():
    table = correlation_table(_long("parent_1", [0.9, 0.8], lipschitz=[1.0, 2.0]), "accuracy")
    per_kind = table[table.model_kind == "parent_1"]
    assert per_kind["value"].abs().tolist() == pytest.approx([1.0] * 3) and (per_kind["n"] == 2).all()
    assert per_kind["note"].str.contains("not meaningful: n = 2").all()
    assert per_kind["ci_low"].isna().all() and per_kind["ci_high"].isna().all()
    three = correlation_table(_long("parent_1", [0.9, 0.8, 0.85], lipschitz=[1.0, 2.0, 1.1]), "accuracy")
    assert (three["note"] == "").all() and three["ci_low"].notna().all()


def test_constant_and_short_series_give_nan_with_a_note_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any scipy warning leaking out fails the test
        constant = correlate([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
        constant_target = correlate([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
        short = correlate([1.0], [0.3])
        two = correlate([1.0, 2.0], [0.3, 0.1])
    for result, word in ((constant, "measure is constant"), (constant_target, "prediction metric is constant"),
                         (short, "at least 2")):
        for c in result.values():
            assert math.isnan(c.value) and math.isnan(c.p_value) and math.isnan(c.ci_low) and word in c.note
    assert all(c.value == pytest.approx(-1.0) for c in two.values())


def test_seeds_missing_a_value_are_dropped_pairwise():
    values = _long("parent_1", [0.9, 0.8, 0.7], lipschitz=[1.0, 2.0, 3.0])
    values = values[~((values.measure == "lipschitz") & (values.seed == 2))]  # seed 2 lost its lipschitz value
    table = correlation_table(values, "accuracy", pooled=False).set_index("method")
    assert (table["n"] == 2).all()
    assert table.loc["pearson", "value"] == pytest.approx(-1.0)


def test_a_missing_target_is_a_note_not_a_crash():
    values = _long("parent_1", [], lipschitz=[1.0, 2.0])
    table = correlation_table(values, "generalisation_gap")
    assert set(table["model_kind"]) == {"parent_1", POOLED}
    assert table["value"].isna().all() and table["note"].str.contains("generalisation_gap").all()


def test_mismatched_series_are_refused():
    with pytest.raises(ValueError, match="one length"):
        correlate([1.0, 2.0], [1.0])
