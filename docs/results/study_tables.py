"""Read the committed study folders under docs/results/, and print a study's means table.

    python docs/results/study_tables.py docs/results/fashion_mnist_vgg11_5seeds

Every table and quoted figure of docs/fashion_mnist.md and the README that has committed
data behind it is computed here (and in fidelity_table.py, quoted_figures.py) from those
files alone: a study's `results.csv` (per-seed rows `<kind>_seed<k>`) and `summary.csv`
(mean, std, count per kind and metric). tests/docs/test_results_tables.py compares the
output with the text.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

RESULTS = Path(__file__).resolve().parent
TWO_SEEDS = RESULTS / "fashion_mnist_vgg11"  # study 71030209971f4310acc11c076f835b1f
FIVE_SEEDS = RESULTS / "fashion_mnist_vgg11_5seeds"  # study 162dab33480d40c49f245ece31d3504b
# the fidelity studies re-run for issue #26, each with an `ofexp export` of it (no weights) in export/
RESNET18_BN = RESULTS / "fidelity_resnet18_bn"  # main/, weights/, repair/
RESNET18_NO_BN = RESULTS / "fidelity_resnet18_nobn"  # main/, weights/, repair/
KINDS = ("parent_1", "parent_2", "ensemble", "naive_fused", "geometric_fused", "naive_finetuned",
         "geometric_finetuned")
MEANS_COLUMNS = ("accuracy", "generalisation_gap", "lipschitz", "hessian_top_eigenvalue", "hessian_trace",
                 "sharpness_flatness", "pac_bayes_flatness")


def per_seed(folder: Path, metric: str = "accuracy") -> pd.DataFrame:
    """One row per seed, one column per model kind: the study's per-seed `metric` values."""
    results = pd.read_csv(folder / "results.csv")
    rows = results[(results["Space"] != "correlation_space") & (results["Metric"] == metric)]
    parts = rows["Model"].str.extract(r"^(?P<kind>.+)_seed(?P<seed>\d+)$")
    frame = pd.DataFrame({"kind": parts["kind"], "seed": parts["seed"].astype(int), "value": rows["Value"].astype(float)})
    return frame.pivot(index="seed", columns="kind", values="value")


def parents(folder: Path) -> pd.Series:
    """Every parent's accuracy (parent_1 and parent_2 of every seed): the reference of each ratio."""
    table = per_seed(folder)
    return pd.concat([table["parent_1"], table["parent_2"]], ignore_index=True)


def ratio(folder: Path, kind: str) -> float:
    """A kind's mean accuracy over seeds divided by the parents' mean."""
    return float(per_seed(folder)[kind].mean() / parents(folder).mean())


def per_seed_ratios(folder: Path, kind: str) -> pd.Series:
    """Per seed: the kind's accuracy divided by the mean of that seed's two parents."""
    table = per_seed(folder)
    return table[kind] / ((table["parent_1"] + table["parent_2"]) / 2)


def fuse_diagnostics(folder: Path, metric: str, kind: str = "geometric_fused") -> pd.DataFrame:
    """One row per seed, one column per layer group: the fuse run's `metric` (match_correlation or
    std_ratio), read from the study's committed `ofexp export` folder (export/runs/<run ID>/metrics.csv)."""
    steps = pd.read_csv(folder / "steps.csv", dtype={"run_id": str})
    rows = {}
    for step in steps[(steps["kind"] == kind) & (steps["stage"] == "fuse")].itertuples():
        metrics = pd.read_csv(folder / "export" / "runs" / step.run_id / "metrics.csv")
        metrics = metrics[metrics["key"].str.startswith(f"{metric}/")]
        rows[int(step.seed)] = dict(zip(metrics["key"].str.removeprefix(f"{metric}/"), metrics["value"]))
    return pd.DataFrame.from_dict(rows, orient="index").sort_index()


def summary(folder: Path) -> pd.DataFrame:
    return pd.read_csv(folder / "summary.csv").set_index(["Kind", "Metric"])


def number(value: float) -> str:
    """A measure's mean in a means table: 4 significant digits."""
    return "" if pd.isna(value) else f"{value:.4g}"


def means_table(folder: Path) -> str:
    """The Markdown table of a study's means over seeds (accuracy ± std), as docs/fashion_mnist.md shows it."""
    table = summary(folder)
    lines = ["| model | " + " | ".join(MEANS_COLUMNS) + " |", "|---" * (len(MEANS_COLUMNS) + 1) + "|"]
    for kind in KINDS:
        cells = []
        for metric in MEANS_COLUMNS:
            if (kind, metric) not in table.index:
                cells.append("")
                continue
            row = table.loc[(kind, metric)]
            cells.append(f"{row['mean']:.4f} ± {row['std']:.4f}" if metric == "accuracy" else number(row["mean"]))
        lines.append(f"| {kind} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a study folder under docs/results/")
    print(means_table(parser.parse_args().folder))


if __name__ == "__main__":
    main()
