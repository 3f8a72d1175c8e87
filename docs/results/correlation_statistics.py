"""The correlation statistics docs/measures.md quotes, computed from a committed study folder alone.

    python docs/results/correlation_statistics.py pooled docs/results/fashion_mnist_vgg11_5seeds
    python docs/results/correlation_statistics.py per-kind docs/results/fashion_mnist_vgg11_5seeds
    python docs/results/correlation_statistics.py granulated docs/results/fashion_mnist_mlp_widths

Each reads the folder's per-seed rows (`results.csv` without its correlation rows, and
`prediction_metrics.csv`) and computes the statistics with the code `ofexp report` uses
(`ofexp.metrics.correlation.correlation_table`: scipy's coefficients and two-sided p-values,
percentile bootstrap intervals; `ofexp.pipeline.study.widths.granulated_width_table`: the granulated
Kendall τ along width with its permutation p-value), against the per-seed `accuracy`. It prints
a Markdown table; tests/docs/test_correlation_statistics.py checks that docs/measures.md holds
exactly that output. Older folders whose correlations.csv predates p-values and the pooled rows
(fashion_mnist_vgg11_5seeds) get them here from their logged values.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ofexp.metrics.correlation import POOLED, correlation_table
from ofexp.pipeline.study.widths import granulated_width_table

TARGET = "accuracy"
ALPHA = 0.05


def long_values(folder: Path) -> pd.DataFrame:
    """(model_kind, seed, measure, value) rows of every model of the study, accuracy included."""
    results = pd.read_csv(folder / "results.csv")
    frames = [results[results["Space"] != "correlation_space"], pd.read_csv(folder / "prediction_metrics.csv")]
    rows = pd.concat(frames, ignore_index=True)
    parts = rows["Model"].str.extract(r"^(?P<model_kind>.+)_seed(?P<seed>\d+)$")
    return pd.DataFrame({"model_kind": parts["model_kind"], "seed": parts["seed"].astype(int),
                         "measure": rows["Metric"], "value": rows["Value"].astype(float)})


def _p(p: float) -> str:
    return "nan" if pd.isna(p) else f"{p:.2g}" if p >= 0.001 else f"{p:.1e}"


def _v(value: float) -> str:
    return "nan" if pd.isna(value) else f"{round(value, 2) + 0.0:.2f}"


def pooled_table(folder: Path) -> str:
    """Kendall τ and Spearman ρ of each measure with accuracy over every model of the study."""
    table = correlation_table(long_values(folder), TARGET)
    pooled = table[table["model_kind"] == POOLED].set_index(["measure", "method"])
    lines = ["| measure | n | Kendall τ | p | 95 % CI | Spearman ρ | p |", "|---|---|---|---|---|---|---|"]
    for measure in dict.fromkeys(pooled.index.get_level_values("measure")):
        k, s = pooled.loc[(measure, "kendall")], pooled.loc[(measure, "spearman")]
        lines.append(f"| {measure} | {int(k['n'])} | {_v(k['value'])} | {_p(k['p_value'])} | "
                     f"[{_v(k['ci_low'])}, {_v(k['ci_high'])}] | {_v(s['value'])} | {_p(s['p_value'])} |")
    kendall = pooled.xs("kendall", level="method")
    return "\n".join([*lines, "", _significant(kendall["p_value"], "Kendall τ")])


def _significant(p_values: pd.Series, what: str) -> str:
    """Which of these p-values (indexed by name) are below ALPHA, and below ALPHA / their count (Bonferroni)."""
    p_values = p_values.dropna()
    bonferroni = ALPHA / len(p_values)
    below = [name for name, p in p_values.items() if p < ALPHA]
    strict = [name for name, p in p_values.items() if p < bonferroni]
    return (f"{what}: {len(below)} of {len(p_values)} with p < {ALPHA} ({', '.join(below) or 'none'}); "
            f"{len(strict)} below the Bonferroni threshold {ALPHA}/{len(p_values)} = {bonferroni:.2g} "
            f"({', '.join(strict) or 'none'}).")


def _cell(cells: pd.DataFrame, measure: str, kind: str) -> str:
    """'τ (p)'; '–' where the kind was not measured so, 'undefined' where τ is (a constant series)."""
    if (measure, kind) not in cells.index:
        return "–"
    value, p_value = cells.loc[(measure, kind), "value"], cells.loc[(measure, kind), "p_value"]
    return "undefined" if pd.isna(value) else f"{_v(value)} ({_p(p_value)})"


def per_kind_table(folder: Path) -> str:
    """Kendall τ (p) of each measure with accuracy per model kind across seeds, and how many p < ALPHA."""
    table = correlation_table(long_values(folder), TARGET, pooled=False)
    kendall = table[table["method"] == "kendall"]
    kinds = list(dict.fromkeys(kendall["model_kind"]))
    cells = kendall.set_index(["measure", "model_kind"])
    lines = [f"| measure | {' | '.join(kinds)} |", "|---" * (len(kinds) + 1) + "|"]
    for measure in dict.fromkeys(kendall["measure"]):
        row = [_cell(cells, measure, k) for k in kinds]
        lines.append(f"| {measure} | {' | '.join(row)} |")
    defined = kendall.dropna(subset=["value"])
    n = sorted(set(defined["n"].astype(int)))
    significant = int((defined["p_value"] < ALPHA).sum())
    below = defined[defined["p_value"] < ALPHA]
    lines += ["", f"{len(defined)} per-kind Kendall τ (n = {', '.join(map(str, n))} seeds each), "
              f"{significant} with p < {ALPHA} (about {ALPHA * len(defined):.0f} expected by chance alone): "
              + ", ".join(f"{r.measure} of {r.model_kind}" for r in below.itertuples()) + "."]
    return "\n".join(lines)


def granulated_table(folder: Path) -> str:
    """ψ along width of each measure with its permutation p and counts, beside the pooled τ."""
    values = long_values(folder)
    granulated = granulated_width_table(values, TARGET)
    if granulated is None:
        raise SystemExit(f"{folder} is not a study over several widths")
    pooled = correlation_table(values, TARGET)
    pooled = pooled[(pooled["model_kind"] == POOLED) & (pooled["method"] == "kendall")].set_index("measure")
    lines = ["| measure | ψ width | p | groups | skipped | models | pooled τ | p | n |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in granulated.itertuples():
        shown = "not meaningful" if row.note.startswith("not meaningful") else _v(row.value)
        whole = pooled.loc[row.measure]
        lines.append(f"| {row.measure} | {shown} | {_p(row.p_value)} | {row.groups} | {row.skipped} | {row.models} "
                     f"| {_v(whole['value'])} | {_p(whole['p_value'])} | {int(whole['n'])} |")
    meaningful = granulated[~granulated["note"].str.startswith("not meaningful")]
    return "\n".join([*lines, "", _significant(meaningful.set_index("measure")["p_value"], "ψ width"),
                       _significant(pooled["p_value"], "pooled τ")])


TABLES = {"pooled": pooled_table, "per-kind": per_kind_table, "granulated": granulated_table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=list(TABLES))
    parser.add_argument("folder", type=Path)
    args = parser.parse_args()
    print(TABLES[args.table](args.folder))


if __name__ == "__main__":
    main()
