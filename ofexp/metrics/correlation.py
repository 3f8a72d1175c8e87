"""Correlation space (docs/design.md §5): how well each measure tracks the prediction metric across seeds.

For every model kind (parent_1, parent_2, naive_fused, geometric_fused, ...) and every
measure, the measure's values over the seeds are paired with the prediction metric's
values over the same seeds, and Kendall τ, Pearson r and Spearman ρ are computed with
`scipy.stats`. A pair of series that cannot be correlated (fewer than 2 seeds, or a
constant series) gets NaN and a note saying why, never an exception or a scipy warning.
"""
from __future__ import annotations

import math
import warnings
from typing import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

# name -> scipy function returning an object whose first item is the coefficient
CORRELATIONS: dict[str, Callable] = {
    "kendall": stats.kendalltau,
    "pearson": stats.pearsonr,
    "spearman": stats.spearmanr,
}
CORRELATION_COLUMNS = ["method", "measure", "model_kind", "value", "n", "note"]


def correlate(x: Sequence[float], y: Sequence[float]) -> dict[str, tuple[float, str]]:
    """{method: (coefficient, note)} of two equally long series x[n], y[n].

    The note is "" for a defined coefficient; otherwise the coefficient is NaN and the
    note says why (fewer than 2 points, a constant series, a non-finite value).
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)  # [n], [n]
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correlate: series of shapes {a.shape} and {b.shape}; pass two 1-D series of one length")
    note = _undefined_reason(a, b)
    if note:
        return {method: (math.nan, note) for method in CORRELATIONS}
    out = {}
    for method, fn in CORRELATIONS.items():
        # scipy warns (and returns NaN) on degenerate input; the checks above catch the
        # known cases, and anything left is reported as a note rather than leaked.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            value = float(fn(a, b)[0])
        if math.isfinite(value):
            out[method] = (value, "")
        else:
            reason = str(caught[0].message).splitlines()[0] if caught else "scipy returned no value"
            out[method] = (math.nan, f"undefined: {reason}")
    return out


def _undefined_reason(a: np.ndarray, b: np.ndarray) -> str:
    if len(a) < 2:
        return f"undefined: {len(a)} seed(s); a correlation needs at least 2 (3 or more are meaningful)"
    if not (np.isfinite(a).all() and np.isfinite(b).all()):
        return "undefined: a value is not finite"
    if np.all(a == a[0]):
        return "undefined: the measure is constant across seeds"
    if np.all(b == b[0]):
        return "undefined: the prediction metric is constant across seeds"
    return ""


def correlation_table(values: pd.DataFrame, target: str) -> pd.DataFrame:
    """Correlation of every measure with `target`, per model kind.

    `values` is long: one row per (model_kind, seed, measure) with columns
    `model_kind`, `seed`, `measure`, `value`. For each kind, each measure other than
    `target` is paired with `target` over the seeds where both have a value.
    Returns columns CORRELATION_COLUMNS (method, measure, model_kind, value, n, note),
    one row per (method, measure, model_kind); undefined coefficients are NaN with a note.
    """
    rows = []
    for kind, frame in values.groupby("model_kind", sort=False):
        wide = frame.pivot_table(index="seed", columns="measure", values="value", aggfunc="first")  # [seeds, measures]
        measures = [m for m in dict.fromkeys(frame["measure"]) if m != target]
        for measure in measures:
            if target not in wide:
                pairs = wide[[measure]].iloc[0:0]
                result = {m: (math.nan, f"undefined: no '{target}' values for {kind}") for m in CORRELATIONS}
            else:
                pairs = wide[[measure, target]].dropna()  # [seeds with both, 2]
                result = correlate(pairs[measure].to_numpy(), pairs[target].to_numpy())
            for method, (value, note) in result.items():
                rows.append((method, measure, kind, value, len(pairs), note))
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
