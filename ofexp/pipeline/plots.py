"""The study's and the fuse run's figures (matplotlib, Agg backend): accuracy across seeds,
correlation heatmaps, interpolation curves, alignment diagnostics. Each function returns a
Figure; the runs log them as PNG artifacts."""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")  # no display: figures only become PNG artifacts
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402


def accuracy_figure(per_seed: pd.DataFrame, metric: str = "accuracy") -> Figure | None:
    """`metric` of each model kind (x) for every seed (one marker per seed), with the mean as a bar.

    `per_seed` has results.csv's per-seed rows (Model=<kind>_seed<k>). None if no row has `metric`.
    """
    rows = per_seed[per_seed["Metric"] == metric]
    if rows.empty:
        return None
    parts = rows["Model"].str.extract(r"^(?P<kind>.+)_seed(?P<seed>\d+)$")
    frame = pd.DataFrame({"kind": parts["kind"], "seed": parts["seed"].astype(int), "value": rows["Value"].astype(float)})
    kinds = list(dict.fromkeys(frame["kind"]))
    fig, ax = plt.subplots(figsize=(1.6 * len(kinds) + 2, 4))
    means = frame.groupby("kind", sort=False)["value"].mean().reindex(kinds)
    ax.bar(range(len(kinds)), means.to_numpy(), color="0.85", label="mean over seeds")
    for seed, group in frame.groupby("seed"):
        x = [kinds.index(k) for k in group["kind"]]
        ax.plot(x, group["value"].to_numpy(), "o", label=f"seed {seed}")
    ax.set_xticks(range(len(kinds)), kinds, rotation=15)
    ax.set_ylabel(metric)
    ax.set_title(f"{metric} per model kind across seeds")
    ax.legend(fontsize="small")
    fig.tight_layout()
    return fig


def correlation_heatmaps(correlations: pd.DataFrame) -> dict[str, Figure]:
    """One heatmap per correlation method: measures (rows) × model kinds (columns), undefined blank."""
    figures = {}
    for method, frame in correlations.groupby("method", sort=False):
        grid = frame.pivot_table(index="measure", columns="model_kind", values="value", aggfunc="first", dropna=False)
        grid = grid.reindex(index=list(dict.fromkeys(frame["measure"])), columns=list(dict.fromkeys(frame["model_kind"])))
        values = grid.to_numpy(dtype=float)  # [measures, kinds]
        fig, ax = plt.subplots(figsize=(1.5 * grid.shape[1] + 3, 0.4 * grid.shape[0] + 2))
        image = ax.imshow(np.ma.masked_invalid(values), cmap="coolwarm", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(grid.shape[1]), grid.columns, rotation=15)
        ax.set_yticks(range(grid.shape[0]), grid.index)
        for (i, j), value in np.ndenumerate(values):
            ax.text(j, i, "n/a" if np.isnan(value) else f"{value:.2f}", ha="center", va="center", fontsize=8)
        fig.colorbar(image, ax=ax, label=method)
        ax.set_title(f"{method} correlation with the prediction metric")
        fig.tight_layout()
        figures[method] = fig
    return figures


def interpolation_figure(curves: Mapping[str, Mapping[str, Sequence[tuple[float, float]]]]) -> Figure | None:
    """All interpolation curves in one figure: a panel per metric key ({key: {label: [(step, value)]}}),
    one line per fuse run. Keys with fewer than 2 points (scalars such as barriers) are left out."""
    panels = {key: lines for key, lines in curves.items() if any(len(points) > 1 for points in lines.values())}
    if not panels:
        return None
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5 * cols, 3 * rows), squeeze=False)
    for ax, (key, lines) in zip(axes.flat, panels.items()):
        for label, points in lines.items():
            steps, values = zip(*points)
            ax.plot(steps, values, marker=".", label=label)
        ax.set_title(key, fontsize="small")
        ax.set_xlabel("interpolation step")
    for ax in list(axes.flat)[len(panels):]:
        ax.set_visible(False)
    axes.flat[0].legend(fontsize="x-small")
    fig.tight_layout()
    return fig


def alignment_figure(diagnostics: Mapping[str, Mapping[str, float]], title: str = "") -> Figure:
    """Per layer group (forward order, top to bottom): matched-neuron correlation and the fused
    activations' spread relative to the parents' (``ofexp.fusion.alignment_diagnostics``)."""
    groups = list(diagnostics)
    y = np.arange(len(groups))
    fig, axes = plt.subplots(1, 2, figsize=(9, 1.2 + 0.3 * len(groups)), sharey=True)
    for ax, key, label in ((axes[0], "match_correlation", "matched-neuron correlation"),
                           (axes[1], "std_ratio", "fused spread / parents' spread")):
        ax.barh(y, [diagnostics[g][key] for g in groups], color="tab:blue")
        ax.axvline(1.0, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(label)
    axes[0].set_yticks(y, groups, fontsize="x-small")
    axes[0].invert_yaxis()
    if title:
        fig.suptitle(title, fontsize="small")
    fig.tight_layout()
    return fig


def close(figure: Figure) -> None:
    plt.close(figure)
