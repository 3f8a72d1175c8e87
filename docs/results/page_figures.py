"""The figures docs/study.md and docs/commands.md quote, recomputed from the committed files beside them.

    PYTHONPATH=. python docs/results/page_figures.py

Like quoted_figures.py (docs/fashion_mnist.md, README.md), each figure is a sentence of a page with
its numbers as `{}` and the function that computes them: the study.md progress-estimate table and
its step times from study_estimates/step_times.csv, the recipe figures of commands.md from
digits_fusion/quality.csv. Prints each sentence as the data fills it in and whether the page holds
it; tests/docs/test_page_figures.py fails if one does not.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE / "study_estimates"))
from figures import Figure, missing, report  # noqa: E402
from estimates import TIMES, table  # noqa: E402

QUALITY = HERE / "digits_fusion" / "quality.csv"
FASHION_STUDY = "Fashion-MNIST MLP, 1 epoch, 2 seeds"


def _span(values: pd.Series) -> str:
    """Whole seconds, as the prose gives them: one number when both ends round alike."""
    low, high = (f"{round(v)}" for v in (values.min(), values.max()))
    return low if low == high else f"{low}–{high}"


def _fashion_steps() -> tuple[str, ...]:
    """The Fashion-MNIST study's first train step without its data loading, the next three train
    steps, and its first and last four evaluate steps."""
    steps = pd.read_csv(TIMES).query("study == @FASHION_STUDY")
    train = steps[steps["kind"] == "train"]
    evaluate = steps[steps["kind"] == "evaluate"]["seconds"]
    first = train.iloc[0]
    return (f"{round(first['seconds'] - first['loading'])}", _span(train["seconds"].iloc[1:4]),
            f"{round(first['loading'])}", _span(evaluate.iloc[:4]), _span(evaluate.iloc[-4:]))


def _recipe() -> tuple[str, ...]:
    """commands.md's `default` recipe: its parents' accuracy range over every architecture in
    quality.csv, and the narrow VGG11 fused with activations under it and under lr 0.01 without
    weight decay (10 epochs, two parents, exact solver)."""
    q = pd.read_csv(QUALITY)
    ten = q[(q["epochs"] == 10) & (q["parents"] == 2) & (q["solver"] == "exact")]
    default = ten[(ten["lr"] == 0.1) & (ten["weight_decay"] == 0.0005)]
    parents = default[default["model"].str.startswith("parent_")]["accuracy"]
    vgg = ten[(ten["arch"] == "vgg11") & (ten["width"] == 0.25) & ~ten["batchnorm"] & ~ten["bias"]
              & (ten["model"] == "geometric_activations")]
    before = vgg[(vgg["lr"] == 0.01) & (vgg["weight_decay"] == 0.0)].sort_values("seed")["accuracy"]
    now = vgg[(vgg["lr"] == 0.1) & (vgg["weight_decay"] == 0.0005)].sort_values("seed")["accuracy"]
    return (f"{100 * parents.min():.1f}", f"{100 * parents.max():.1f}",
            *(f"{v:.3f}" for v in before), *(f"{v:.3f}" for v in now))


FIGURES = (
    Figure("docs/study.md", "{}", lambda: (table(),)),
    Figure("docs/study.md", "In the Fashion-MNIST study below, the first train step took {} s and the next three "
           "took {} s. - Loading the data happens once, inside the first step that needs it. Its time is printed "
           "(`study: the data took {} s to load, once; ...`)", lambda: _fashion_steps()[:3]),
    Figure("docs/study.md", "Fashion-MNIST's first four evaluate steps took {} s, and the last four took {} s.",
           lambda: _fashion_steps()[3:]),
    Figure("docs/commands.md", "On digits it trains MLP, VGG11 and ResNet18 to {}–{}% test accuracy, and the nets "
           "it trains fuse well (docs/results/digits_fusion/quality.csv; [fusion.md](fusion.md), \"The recipe "
           "decides whether fusion works\": narrow VGG11s fused by activations keep {} and {} accuracy with the "
           "earlier lr 0.01 and no weight decay, {} and {} with this recipe).", _recipe),
)


def check(root: Path = REPO) -> list[str]:
    """The computed sentences a page under `root` does not hold (empty: every figure matches)."""
    return missing(FIGURES, root)


if __name__ == "__main__":
    report(FIGURES, REPO)
