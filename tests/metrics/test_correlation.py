"""Correlation space: scipy's coefficients per model kind, NaN with a note when undefined, no warnings."""
from __future__ import annotations

import math
import warnings

import pandas as pd
import pytest
from scipy import stats

from ofexp.metrics.correlation import CORRELATIONS, correlate, correlation_table


def _long(kind: str, accuracy: list[float], **measures: list[float]) -> pd.DataFrame:
    rows = [(kind, seed, "accuracy", v) for seed, v in enumerate(accuracy, start=1)]
    for name, values in measures.items():
        rows += [(kind, seed, name, v) for seed, v in enumerate(values, start=1)]
    return pd.DataFrame(rows, columns=["model_kind", "seed", "measure", "value"])


def test_coefficients_equal_scipy_per_kind():
    acc_a, lip_a = [0.9, 0.8, 0.95, 0.7], [3.0, 4.0, 2.5, 4.1]
    acc_b, lip_b = [0.5, 0.6, 0.4, 0.55], [1.0, 0.5, 2.0, 0.7]
    values = pd.concat([_long("parent_1", acc_a, lipschitz=lip_a), _long("naive_fused", acc_b, lipschitz=lip_b)])
    table = correlation_table(values, "accuracy")
    assert len(table) == 2 * len(CORRELATIONS)  # target itself is not correlated with itself
    for kind, acc, lip in (("parent_1", acc_a, lip_a), ("naive_fused", acc_b, lip_b)):
        got = table[table.model_kind == kind].set_index("method")["value"]
        assert got["kendall"] == pytest.approx(stats.kendalltau(lip, acc)[0])
        assert got["pearson"] == pytest.approx(stats.pearsonr(lip, acc)[0])
        assert got["spearman"] == pytest.approx(stats.spearmanr(lip, acc)[0])
    assert (table["n"] == 4).all() and (table["note"] == "").all()


def test_constant_and_short_series_give_nan_with_a_note_and_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any scipy warning leaking out fails the test
        constant = correlate([1.0, 1.0, 1.0], [0.1, 0.2, 0.3])
        constant_target = correlate([1.0, 2.0, 3.0], [0.5, 0.5, 0.5])
        short = correlate([1.0], [0.3])
    for result, word in ((constant, "measure is constant"), (constant_target, "prediction metric is constant"),
                         (short, "at least 2")):
        for value, note in result.values():
            assert math.isnan(value) and word in note


def test_seeds_missing_a_value_are_dropped_pairwise():
    values = _long("parent_1", [0.9, 0.8, 0.7], lipschitz=[1.0, 2.0, 3.0])
    values = values[~((values.measure == "lipschitz") & (values.seed == 2))]  # seed 2 lost its lipschitz value
    table = correlation_table(values, "accuracy").set_index("method")
    assert (table["n"] == 2).all()
    assert table.loc["pearson", "value"] == pytest.approx(-1.0)


def test_a_missing_target_is_a_note_not_a_crash():
    values = _long("parent_1", [], lipschitz=[1.0, 2.0])
    table = correlation_table(values, "generalisation_gap")
    assert table["value"].isna().all() and table["note"].str.contains("generalisation_gap").all()


def test_mismatched_series_are_refused():
    with pytest.raises(ValueError, match="one length"):
        correlate([1.0, 2.0], [1.0])
