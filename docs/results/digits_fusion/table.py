"""Print docs/fusion.md's "Fusion quality on digits" table and its three-parent sentence from
the committed quality.csv alone (written by tests/fusion/quality.py --csv; README.md beside it
gives the commands).

    python docs/results/digits_fusion/table.py

One row per (configuration, seed) of the default recipe with two parents: the parents' test
accuracy, then each fusion's, to three decimals; bold marks the best fusion of the row (every
one that ties at three decimals). Then the figures the section's prose quotes, one a line, each
as the page writes it; the recipe table (narrow VGG11 under each recipe) with its figures; and the
Sinkhorn paragraph's figures; last, the interpolation barriers and alignment diagnostics of one
geometric fuse run (VGG11 width 0.25, seed 1), read from its study's `ofexp export` in
fuse_run/export/. tests/docs/test_digits_fusion_table.py compares this output with the page.
"""
from __future__ import annotations

from pathlib import Path

import pandas as pd

CSV = Path(__file__).resolve().parent / "quality.csv"
FUSE_RUN_EXPORT = Path(__file__).resolve().parent / "fuse_run" / "export"
# the default recipe when the numbers were made (ofexp.training.make_recipe("default")); the
# table is about it, the other recipes are the page's recipe table
DEFAULT_RECIPE = {"epochs": 10, "lr": 0.1, "weight_decay": 0.0005}
FUSIONS = ("naive", "geometric_weights", "geometric_activations", "activations_repair")
ARCH_NAMES = {"mlp": "MLP", "vgg11": "VGG11", "resnet18": "ResNet18"}
HEADER = ("| model | seed | parents | naive | geometric, weights | geometric, activations | activations + REPAIR |\n"
          "|---|---|---|---|---|---|---|")


def configuration_name(arch: str, width: float, bias: bool, batchnorm: bool) -> str:
    return ", ".join([ARCH_NAMES[arch], f"width {width:g}"] + ["bias"] * bias + ["BN"] * batchnorm)


def default_recipe(frame: pd.DataFrame) -> pd.DataFrame:
    """The rows of the default recipe fused with the exact solver (the Sinkhorn runs are apart)."""
    keep = frame["solver"] == "exact"
    for column, value in DEFAULT_RECIPE.items():
        keep &= frame[column] == value
    return frame[keep]


def row(group: pd.DataFrame) -> list[str]:
    """The cells of one (configuration, seed): parents, then the fusions with the best in bold."""
    accuracy = group.set_index("model")["accuracy"]
    parents = sorted((m for m in accuracy.index if m.startswith("parent_")), key=lambda m: int(m.split("_")[1]))
    fused = {m: f"{accuracy[m]:.3f}" for m in FUSIONS}
    best = max(fused.values())
    return [" / ".join(f"{accuracy[p]:.3f}" for p in parents)] + [
        f"**{v}**" if v == best else v for v in fused.values()]


def table(frame: pd.DataFrame) -> str:
    two = default_recipe(frame[frame["parents"] == 2]).copy()
    two["order"] = two["arch"].map(list(ARCH_NAMES).index)
    lines = [HEADER]
    keys = ["order", "width", "bias", "batchnorm", "seed"]
    for (_, width, bias, batchnorm, seed), group in two.sort_values(keys).groupby(keys, sort=False):
        name = configuration_name(group["arch"].iloc[0], width, bias, batchnorm)
        lines.append("| " + " | ".join([name, str(seed), *row(group)]) + " |")
    return "\n".join(lines)


def three_parents(frame: pd.DataFrame) -> str:
    """The page's sentence on three MLP parents (study seed 1: torch seeds 101, 102, 103)."""
    three = default_recipe(frame[(frame["parents"] == 3) & (frame["arch"] == "mlp") & (frame["seed"] == 1)])
    accuracy = three.set_index("model")["accuracy"]
    parents = " / ".join(f"{accuracy[f'parent_{i}']:.3f}" for i in (1, 2, 3))
    return (f"Three MLP parents (torch seeds 101, 102, 103): parents {parents}, naive {accuracy['naive']:.3f}, "
            f"geometric (activations) {accuracy['geometric_activations']:.3f}.")


def span(values: pd.Series, digits: int) -> str:
    low, high = (f"{v:.{digits}f}" for v in (values.min(), values.max()))
    return low if low == high else f"{low}–{high}"


def signed_span(values: pd.Series) -> str:
    low, high = (f"{v:+.3f}" for v in (values.min(), values.max()))
    return low if low == high else f"{low} to {high}"


def quoted_figures(frame: pd.DataFrame) -> list[str]:
    """The prose's figures (the section's "What this shows"), computed from the unrounded accuracies."""
    two = default_recipe(frame[frame["parents"] == 2])
    wide = two.pivot_table(index=["arch", "bias", "batchnorm", "seed"], columns="model", values="accuracy")
    gain = wide["geometric_activations"] - wide["geometric_weights"]
    repair = wide["activations_repair"] - wide["geometric_activations"]
    arch = wide.index.get_level_values("arch")
    bn = wide.index.get_level_values("batchnorm")
    vgg, mlp, res_bn, res = arch == "vgg11", arch == "mlp", (arch == "resnet18") & bn, (arch == "resnet18") & ~bn
    parents = wide[["parent_1", "parent_2"]]
    return [
        f"beats weight-based in {(gain > 0).sum()} of {len(gain)} rows",
        f"by {span(gain[vgg], 2)} on VGG11, {span(gain[res_bn], 2)} on ResNet18 with batch-norm, "
        f"{span(gain[res], 2)} on ResNet18 without it and {span(gain[mlp], 2)} on the MLP",
        f"collapses to {span(wide['naive'][vgg], 2)} while geometric fusion keeps "
        f"{span(wide['geometric_activations'][vgg], 3)} of the parents' {span(parents[vgg].stack(), 2)}",
        f"REPAIR adds {span(repair[vgg], 2)} on VGG11 and {span(repair[res], 2)} on ResNet18 without "
        f"batch-norm, {signed_span(repair[res_bn])} with it, and "
        f"{signed_span(repair[mlp])} on the MLP",
        f"With batch-norm it fuses to {span(wide['geometric_activations'][res_bn], 3)}",
        "on both seeds: " + " and ".join(f"{v:.3f}" for v in wide["geometric_activations"][vgg & ~wide.index
                                                                                     .get_level_values("bias")]),
    ]


# the recipe table: narrow VGG11 (width 0.25, no bias, no batch-norm) under each recipe,
# (epochs, lr, weight_decay); a row with two recipes shows them side by side, split by " / "
RECIPE_ROWS = {
    "lr 0.01, no weight decay, 10 epochs (the default before)": [(10, 0.01, 0.0)],
    "lr 0.01, no weight decay, 40 / 100 epochs": [(40, 0.01, 0.0), (100, 0.01, 0.0)],
    "lr 0.01, weight decay 5e-4": [(10, 0.01, 0.0005)],
    "lr 0.05, no weight decay": [(10, 0.05, 0.0)],
    "lr 0.05, weight decay 5e-4": [(10, 0.05, 0.0005)],
    "lr 0.05, weight decay 1e-3": [(10, 0.05, 0.001)],
    "lr 0.05, weight decay 5e-4, 20 epochs": [(20, 0.05, 0.0005)],
    "**lr 0.1, weight decay 5e-4 (default)**": [(10, 0.1, 0.0005)],
}
RECIPE_HEADER = "| recipe | seeds | geometric, activations (REPAIR) |\n|---|---|---|"


def narrow_vgg11(frame: pd.DataFrame, recipe: tuple[int, float, float], solver: str = "exact",
                 reg: float = 0.0) -> pd.DataFrame:
    epochs, lr, weight_decay = recipe
    rows = frame[(frame["solver"] == solver) & (frame["reg"] == reg)
                 & (frame["arch"] == "vgg11") & (frame["width"] == 0.25) & ~frame["bias"] & ~frame["batchnorm"]
                 & (frame["parents"] == 2) & (frame["epochs"] == epochs) & (frame["lr"] == lr)
                 & (frame["weight_decay"] == weight_decay)]
    if rows.empty:
        sinkhorn = f", Sinkhorn reg {reg}" if solver == "sinkhorn" else ""
        raise SystemExit(f"error: {CSV.name} has no narrow VGG11 run with epochs {epochs}, lr {lr}, weight decay "
                         f"{weight_decay}{sinkhorn}; run quality.py with them (README.md gives the command)")
    return rows.pivot_table(index="seed", columns="model", values="accuracy")


def seeds_cell(seeds: list[int]) -> str:
    contiguous = seeds == list(range(seeds[0], seeds[-1] + 1))
    return f"{seeds[0]}–{seeds[-1]}" if contiguous and len(seeds) > 2 else ", ".join(map(str, seeds))


def recipe_table(frame: pd.DataFrame) -> str:
    lines = [RECIPE_HEADER]
    for label, recipes in RECIPE_ROWS.items():
        runs = [narrow_vgg11(frame, recipe) for recipe in recipes]
        values = " / ".join(", ".join(f"{v:.3f}" for v in run["geometric_activations"]) + " ("
                            + ", ".join(f"{v:.3f}" for v in run["activations_repair"]) + ")" for run in runs)
        bold = "**" if label.startswith("**") else ""
        lines.append(f"| {label} | {seeds_cell(sorted(runs[0].index))} | {bold}{values}{bold} |")
    return "\n".join(lines)


def recipe_figures(frame: pd.DataFrame) -> list[str]:
    """The recipe prose's parent accuracies: lr 0.01 for 10 epochs against lr 0.05 or more."""
    def parents(recipes) -> pd.Series:
        return pd.concat([narrow_vgg11(frame, r)[["parent_1", "parent_2"]].stack() for r in recipes])
    slow = [r for rows in RECIPE_ROWS.values() for r in rows if r[0] == 10 and r[1] == 0.01]
    fast = [r for rows in RECIPE_ROWS.values() for r in rows if r[1] >= 0.05]
    return [f"the parents still reach {span(parents(slow) * 100, 0)}%",
            f"(parents {span(parents(fast) * 100, 0)}%)"]


SINKHORN_REGS = (0.02, 0.05, 0.1, 0.2)
DEFAULT = RECIPE_ROWS["**lr 0.1, weight decay 5e-4 (default)**"][0]


def sinkhorn_figures(frame: pd.DataFrame) -> list[str]:
    """The page's Sinkhorn paragraph: narrow VGG11, default recipe, activation alignment at each
    reg against the exact solver, and what the fused nets tend to (the target, parent 2)."""
    def pair(run: pd.DataFrame, model: str) -> str:
        return " / ".join(f"{v:.3f}" for v in run[model])
    exact = narrow_vgg11(frame, DEFAULT)
    runs = {reg: narrow_vgg11(frame, DEFAULT, "sinkhorn", reg) for reg in SINKHORN_REGS}
    gave = [f"{reg:g} gave {pair(run, 'geometric_activations')}" for reg, run in runs.items()]
    by_weights = pd.concat([run["geometric_weights"] for run in runs.values()])
    return [f"exact {pair(exact, 'geometric_activations')}) reg " + ", ".join(gave[:-1]) + f" and {gave[-1]}",
            f"parent 2 itself has {pair(exact, 'parent_2')}",
            f"weight alignment gives {span(by_weights, 3)} at every reg"]


def fuse_run_figures(export: Path = FUSE_RUN_EXPORT) -> list[str]:
    """The geometric fuse run's loss and accuracy barriers (raw parents, aligned parents, target to
    fused net) and the range of its matched-neuron correlations and last convolution's spread."""
    runs = [m for m in sorted(export.glob("runs/*/metrics.csv"))
            if pd.read_csv(m)["key"].str.startswith("interp/").any()]
    if len(runs) != 1:
        raise SystemExit(f"error: {export} holds {len(runs)} fuse runs with interpolation curves, not 1; "
                         "export the one-seed geometric study again")
    metrics = pd.read_csv(runs[0]).drop_duplicates("key", keep="last").set_index("key")["value"]

    def barrier(curve: str, what: str) -> str:
        return f"{metrics[f'interp/{curve}/{what}_barrier']:.2f}"

    correlations = metrics[metrics.index.str.startswith("match_correlation/")]
    return [f"the loss barrier between the parents is {barrier('parents_raw', 'loss')} raw (accuracy barrier "
            f"{barrier('parents_raw', 'accuracy')}), {barrier('parents_aligned', 'loss')} after alignment (accuracy "
            f"barrier {barrier('parents_aligned', 'accuracy')}), and {barrier('parent_fused', 'loss')} between the "
            "target and the fused net.",
            f"on VGG11 seed 1 matched channels correlate {correlations.min():.2f}–{correlations.max():.2f} and the "
            f"last conv's spread falls to {metrics['std_ratio/features.18']:.2f} of the parents'"]


def main() -> None:
    frame = pd.read_csv(CSV)
    print(table(frame))
    print()
    print(three_parents(frame))
    print()
    print("\n".join(quoted_figures(frame)))
    print()
    print(recipe_table(frame))
    print()
    print("\n".join(recipe_figures(frame)))
    print()
    print("\n".join(sinkhorn_figures(frame)))
    print()
    print("\n".join(fuse_run_figures()))


if __name__ == "__main__":
    main()
