"""Correlation space (docs/design.md §5): how well each measure tracks the prediction metric across seeds.

For every model kind (parent_1, parent_2, naive_fused, geometric_fused, ...) and every
measure, the measure's values over the seeds are paired with the prediction metric's
values over the same seeds, and Kendall τ(-b), Pearson r and Spearman ρ are computed with
`scipy.stats`, with scipy's two-sided p-value (H0: no association) and the number n of
pairs. The same is done once more over every model of the study together (model_kind
"pooled": n = kinds × seeds pairs), where differences between kinds count as well as
differences between seeds.

Each defined coefficient with n ≥ 3 also gets a 95 % percentile bootstrap interval:
B = 1000 resamples of the n pairs with replacement, drawn by numpy's default_rng seeded
with 0 (deterministic; the same draws for every row of a given n), the coefficient
recomputed on each (vectorised over the resamples; the same values as scipy's), resamples
in which either series is constant (no coefficient) left out, and the 2.5th and 97.5th
percentiles taken. (scipy.stats.bootstrap is not used: it would call kendalltau once per
resample, tenths of a second per row against milliseconds here, and it cannot leave
the constant resamples out.)
With n this small the interval is rough, and the percentile interval need not contain
the coefficient when the resampled values are skewed.

A pair of series that cannot be correlated (fewer than 2 seeds, or a constant series)
gets NaN and a note saying why, never an exception or a scipy warning. A defined
coefficient from fewer than 3 pairs is ±1 by construction: it is kept, with a note.
"""
from __future__ import annotations

import functools
import math
import warnings
from typing import NamedTuple, Sequence

import numpy as np
import pandas as pd

# name -> the scipy.stats function (by name) whose result's items are (coefficient, p-value).
# scipy.stats (about 0.4 s) is imported when a coefficient is computed: every evaluate step
# imports this module's constants through the report, and computes none.
CORRELATIONS: dict[str, str] = {
    "kendall": "kendalltau",
    "pearson": "pearsonr",
    "spearman": "spearmanr",
}
# The first six are those of older correlations.csv files; the statistics come after them,
# so that a reader by position or by name of an older file reads a newer one the same way.
CORRELATION_COLUMNS = ["method", "measure", "model_kind", "value", "n", "note", "p_value", "ci_low", "ci_high"]
POOLED = "pooled"  # model_kind of the correlations over every model of a study
MEANINGFUL_N = 3  # with fewer pairs a defined coefficient is ±1 whatever the data
BOOTSTRAP_RESAMPLES = 1000
BOOTSTRAP_SEED = 0
CONFIDENCE = 0.95


class Correlation(NamedTuple):
    """One coefficient with its p-value and bootstrap interval; NaN where undefined, `note` saying why."""

    value: float
    p_value: float = math.nan
    ci_low: float = math.nan
    ci_high: float = math.nan
    note: str = ""


def correlate(x: Sequence[float], y: Sequence[float]) -> dict[str, Correlation]:
    """{method: Correlation} of two equally long series x[n], y[n].

    value and p_value are scipy's; ci_low/ci_high the percentile bootstrap interval
    (`bootstrap_interval`, n ≥ 3 only). The note is "" for a defined coefficient from
    n ≥ 3 pairs; otherwise it says why the value is NaN (fewer than 2 points, a constant
    series, a non-finite value) or why it means nothing (n = 2).
    """
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)  # [n], [n]
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"correlate: series of shapes {a.shape} and {b.shape}; pass two 1-D series of one length")
    note = _undefined_reason(a, b)
    if note:
        return {method: Correlation(math.nan, note=note) for method in CORRELATIONS}
    interval = bootstrap_interval(a, b) if len(a) >= MEANINGFUL_N else {}
    small = "" if len(a) >= MEANINGFUL_N else (f"not meaningful: n = {len(a)} pairs make it ±1 by construction "
                                               f"({MEANINGFUL_N} or more are needed)")
    from scipy import stats  # see CORRELATIONS

    out = {}
    for method, function in CORRELATIONS.items():
        # scipy warns (and returns NaN) on degenerate input; the checks above catch the
        # known cases, and anything left is reported as a note rather than leaked.
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = getattr(stats, function)(a, b)
        value, p_value = float(result[0]), float(result[1])
        if math.isfinite(value):
            low, high = interval.get(method, (math.nan, math.nan))
            out[method] = Correlation(value, p_value, low, high, small)
        else:
            reason = str(caught[0].message).splitlines()[0] if caught else "scipy returned no value"
            out[method] = Correlation(math.nan, note=f"undefined: {reason}")
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


def bootstrap_interval(x: np.ndarray, y: np.ndarray, resamples: int = BOOTSTRAP_RESAMPLES,
                       seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> dict[str, tuple[float, float]]:
    """{method: (low, high)}: the percentile bootstrap interval of each coefficient of x[n], y[n].

    A resample of the n pairs with replacement is its counts: c[b, a] is how often pair a
    is drawn in resample b, c[B, n] ~ Multinomial(n, 1/n each), from numpy's
    default_rng(seed). Resamples where either series is constant have no coefficient and
    are dropped; of the others' coefficients (`resampled_coefficients`) the
    (1 − confidence)/2 and (1 + confidence)/2 quantiles are the interval, clipped to
    [-1, 1]. NaN, NaN when no resample has a coefficient.
    """
    coefficients = resampled_coefficients(x, y, _resample_counts(len(x), resamples, seed))
    tail = 100 * (1 - confidence) / 2
    out = {}
    for method, values in coefficients.items():
        values = values[np.isfinite(values)]
        if len(values) == 0:
            out[method] = (math.nan, math.nan)
            continue
        low, high = np.clip(np.percentile(values, [tail, 100 - tail]), -1.0, 1.0)
        out[method] = (float(low), float(high))
    return out


@functools.lru_cache(maxsize=64)
def _resample_counts(n: int, resamples: int, seed: int) -> np.ndarray:
    """counts[B, n] ~ Multinomial(n, 1/n each) from default_rng(seed): the same for every call with these
    arguments (so drawn once per n and kept; read-only)."""
    counts = np.random.default_rng(seed).multinomial(n, np.full(n, 1.0 / n), size=resamples).astype(float)
    counts.flags.writeable = False
    return counts


def resampled_coefficients(x: np.ndarray, y: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """{method: r[B]}: each coefficient of the resamples of x[n], y[n] given by counts[B, n].

    Resample b holds pair a counts[b, a] times. With S_x[a, e] = sign(x_a − x_e):
    kendall τ-b = cᵀ(S_x⊙S_y)c / √(cᵀ|S_x|c · cᵀ|S_y|c), i.e. (concordant − discordant) /
    √((n₀ − n₁)(n₀ − n₂)) over the resample's pairs, ties included, as scipy's kendalltau;
    pearson r = Σ c x̃ỹ / √(Σ c x̃² Σ c ỹ²) with x̃ = x − (c·x)/Σc, as scipy's pearsonr;
    spearman ρ = pearson of the resample's average ranks, R_x[b, a] = Σ_e c[b, e][x_e < x_a]
    + (Σ_e c[b, e][x_e = x_a] + 1)/2, as scipy's spearmanr. NaN where a series is constant.
    """
    sx, sy = np.sign(x[:, None] - x[None, :]), np.sign(y[:, None] - y[None, :])  # [n, n] each

    def quad(matrix: np.ndarray) -> np.ndarray:  # cᵀ M c per resample: [B]
        return ((counts @ matrix) * counts).sum(axis=1)

    pairs_x, pairs_y = quad(np.abs(sx)), quad(np.abs(sy))  # untied pairs: exact integers, 0 iff constant
    varied = (pairs_x > 0) & (pairs_y > 0)  # [B]
    # R[b, a] = Σ_e c[b, e]([v_e < v_a] + [v_e = v_a]/2) + 1/2: one product with the matrix of those brackets
    ranks = [counts @ ((v[None, :] < v[:, None]) + 0.5 * (v[None, :] == v[:, None])).T + 0.5
             for v in (x, y)]  # [B, n] each
    with np.errstate(invalid="ignore", divide="ignore"):
        out = {"kendall": quad(sx * sy) / np.sqrt(pairs_x * pairs_y),
               "pearson": _weighted_pearson(x[None, :], y[None, :], counts),
               "spearman": _weighted_pearson(ranks[0], ranks[1], counts)}
    return {method: np.where(varied, values, np.nan) for method, values in out.items()}


def _weighted_pearson(x: np.ndarray, y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Pearson r of x, y [B or 1, n] with weights w[B, n], per row: [B]."""
    total = w.sum(axis=1, keepdims=True)
    xc = x - (w * x).sum(axis=1, keepdims=True) / total  # [B, n]
    yc = y - (w * y).sum(axis=1, keepdims=True) / total
    return (w * xc * yc).sum(axis=1) / np.sqrt((w * xc * xc).sum(axis=1) * (w * yc * yc).sum(axis=1))


def correlation_table(values: pd.DataFrame, target: str, pooled: bool = True) -> pd.DataFrame:
    """Correlation of every measure with `target`, per model kind, then pooled over all kinds.

    `values` is long: one row per (model_kind, seed, measure) with columns
    `model_kind`, `seed`, `measure`, `value`. For each kind, each measure other than
    `target` is paired with `target` over the seeds where both have a value (n pairs);
    with `pooled`, once more over every (model_kind, seed) where both have a value
    (model_kind POOLED, n ≤ kinds × seeds). Returns columns CORRELATION_COLUMNS, one row
    per (method, measure, model_kind); undefined coefficients are NaN with a note.
    """
    rows = []
    for kind, frame in values.groupby("model_kind", sort=False):
        wide = frame.pivot_table(index="seed", columns="measure", values="value", aggfunc="first")  # [seeds, measures]
        rows += _rows(wide, list(dict.fromkeys(frame["measure"])), target, kind)
    if pooled and len(values):
        wide = values.pivot_table(index=["model_kind", "seed"], columns="measure", values="value",
                                  aggfunc="first")  # [kinds × seeds, measures]
        rows += _rows(wide, list(dict.fromkeys(values["measure"])), target, POOLED)
    return pd.DataFrame(rows, columns=CORRELATION_COLUMNS)


def _rows(wide: pd.DataFrame, measures: list[str], target: str, kind: str) -> list[tuple]:
    """CORRELATION_COLUMNS rows of each measure (but `target`) of `wide` [models, measures] with `target`."""
    rows = []
    for measure in (m for m in measures if m != target):
        missing = target if target not in wide else measure if measure not in wide else ""
        if missing:
            n = 0
            note = f"undefined: no '{missing}' values for {kind}"
            result = {m: Correlation(math.nan, note=note) for m in CORRELATIONS}
        else:
            pairs = wide[[measure, target]].dropna()  # [models with both, 2]
            n = len(pairs)
            result = correlate(pairs[measure].to_numpy(), pairs[target].to_numpy())
        for method, c in result.items():
            rows.append((method, measure, kind, c.value, n, c.note, c.p_value, c.ci_low, c.ci_high))
    return rows
