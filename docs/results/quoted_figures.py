"""Every figure the docs quote in prose that committed data backs, recomputed from it.

    python docs/results/quoted_figures.py

Each figure is a sentence of the docs with its numbers left as `{}`, and the function that
computes them from the committed study folders (study_tables.py). The script prints each
sentence as the data fills it in and whether the doc holds it; tests/docs/test_results_tables.py
fails if one does not. The fuse runs' diagnostics (match_correlation, std_ratio) are read
from the studies' committed `ofexp export` folders; VGG11's come from its two-seed studies
re-run by commit 73506a4 (fidelity_vgg11). The first VGG11 weight-alignment and REPAIR
studies were never committed: the docs quote none of their values, only their re-runs'
(fidelity_vgg11, fidelity_vgg11_5seeds).
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from figures import Figure, missing, report  # noqa: E402
from study_tables import (FIVE_SEEDS, RESNET18_BN, RESNET18_NO_BN, RESULTS, TWO_SEEDS, fuse_diagnostics, parents, per_seed,  # noqa: E402
                          per_seed_ratios, ratio, summary)

REPO = Path(__file__).resolve().parents[2]
FASHION = "docs/fashion_mnist.md"
VGG11 = RESULTS / "fidelity_vgg11"  # main/, weights/, repair/: the two-seed studies re-run by commit 73506a4
VGG11_5 = RESULTS / "fidelity_vgg11_5seeds"  # the five-seed studies re-run by the same commit


def _ratio(folder: Path, kind: str) -> str:
    return f"{ratio(folder, kind):.3f}"


def _per_seed_range(folder: Path, kind: str) -> tuple[str, str]:
    ratios = per_seed_ratios(folder, kind)
    return f"{ratios.min():.3f}", f"{ratios.max():.3f}"


def _mean(folder: Path, kind: str) -> str:
    return f"{per_seed(folder)[kind].mean():.4f}"


def _two(value: float) -> str:
    """A diagnostic as the prose gives it: 2 decimals, with a typographic minus."""
    return f"{value:.2f}".replace("-", "\u2212")


def _diagnostic_range(folder: Path, metric: str) -> tuple[str, str]:
    """The smallest and largest value of a diagnostic over every layer group and seed."""
    values = fuse_diagnostics(folder, metric).to_numpy()
    return _two(values.min()), _two(values.max())


def _accuracies(folder: Path, kind: str = "geometric_fused") -> tuple[str, ...]:
    """A kind's accuracy per seed, 2 decimals."""
    return tuple(_two(v) for v in per_seed(folder)[kind])


def _span(low: str, high: str) -> str:
    """A range as the prose gives it, one number when both ends round alike."""
    return low if low == high else f"{low}–{high}"


def _groups(folder: Path, metric: str, seed: int, groups: tuple[str, ...]) -> tuple[str, ...]:
    """One seed's diagnostic at the named layer groups, 2 decimals."""
    row = fuse_diagnostics(folder, metric).loc[seed]
    return tuple(_two(row[g]) for g in groups)


def _last_stage(folder: Path, metric: str) -> tuple[str, str]:
    """The range of a diagnostic over the ResNet's last stage (layers.3.*) and every seed."""
    table = fuse_diagnostics(folder, metric)
    values = table[[c for c in table.columns if c.startswith("layers.3.")]].to_numpy()
    return _two(values.min()), _two(values.max())


# ResNet18 groups: the first block's inner channels, then each stage's residual stream (the stem's
# conv1 and the first block's conv2 of stages 2-4, where the shortcut changes width)
_FIRST_INNER = ("layers.0.0.conv1",)
_STREAMS = ("conv1", "layers.1.0.conv2", "layers.2.0.conv2", "layers.3.0.conv2")


# VGG11's groups: its eight convolutions, in depth order
_CONVS = tuple(f"features.{i}" for i in (0, 3, 6, 8, 11, 13, 16, 18))


def _conv_span(folder: Path, metric: str, seed: int, convs: tuple[str, ...]) -> str:
    """The range of one seed's diagnostic over the named convolutions, as the prose gives it."""
    values = fuse_diagnostics(folder, metric).loc[seed, list(convs)]
    return _span(_two(values.min()), _two(values.max()))


def _same_parents(*folders: Path) -> None:
    """Two studies' fusions compare only when they fuse the same parents (the VGG11 re-runs reuse them)."""
    tables = [per_seed(f)[["parent_1", "parent_2"]] for f in folders]
    if any(not t.equals(tables[0]) for t in tables[1:]):
        raise SystemExit(f"error: {' and '.join(str(f.relative_to(RESULTS)) for f in folders)} fuse other parents, "
                         "so the docs cannot compare their fusions; quote them apart or run them on the same parents")


def _points(accuracy: float) -> str:
    return f"{100 * accuracy:.1f}"


def _vgg11_repair() -> tuple[str, ...]:
    """REPAIR against activations alone: the spread it restores, its gain per seed, and the points
    still lost to the parents' mean."""
    _same_parents(VGG11 / "main", VGG11 / "repair")
    plain, repaired = per_seed(VGG11 / "main")["geometric_fused"], per_seed(VGG11 / "repair")["geometric_fused"]
    reference = parents(VGG11 / "main").mean()
    return (_span(*_diagnostic_range(VGG11 / "repair", "std_ratio")),
            *(_points(r - p) for p, r in zip(plain, repaired)),
            *(f"{v:.4f}" for pair in zip(plain, repaired) for v in pair),
            _ratio(VGG11 / "main", "geometric_fused"), _ratio(VGG11 / "repair", "geometric_fused"),
            _points(reference - repaired.mean()), _points(reference - plain.mean()))


def _seeds(seeds: list[int]) -> str:
    return f"{seeds[0]}–{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1)) else ", ".join(map(str, seeds))


def _vgg11_reproduced() -> tuple[str, ...]:
    """The five-seed re-run against the first five-seed study: how many parents came out the same,
    the one that did not (seed, then re-run and first accuracy) and the seeds whose every model did."""
    first, again = per_seed(FIVE_SEEDS), per_seed(VGG11_5 / "main")
    parents_of = ["parent_1", "parent_2"]
    same = (first[parents_of] == again[parents_of]).to_numpy()
    (seed, column), = [(first.index[i], parents_of[j]) for i, j in zip(*(~same).nonzero())]
    if column != "parent_1":
        raise SystemExit(f"error: the parent that differs is seed {seed}'s {column}; the docs name the first one")
    whole = [int(s) for s in first.index if (first.loc[s] == again.loc[s]).all()]
    return (str(int(same.sum())), str(same.size), str(seed), f"{again.loc[seed, column]:.4f}",
            f"{first.loc[seed, column]:.4f}", _seeds(whole))


def _vgg11_target() -> tuple[str, ...]:
    """The five-seed re-run against the 0.95x target, with the first five-seed study's activations."""
    ratios = {s: ratio(VGG11_5 / s, "geometric_fused") for s in ("repair", "weights", "main")}
    return (f"{ratios['repair']:.3f}", _mean(VGG11_5 / "repair", "geometric_fused"),
            f"{parents(VGG11_5 / 'main').mean():.4f}", f"{ratios['weights']:.3f}", f"{ratios['main']:.3f}",
            _ratio(FIVE_SEEDS, "geometric_fused"), *_per_seed_range(FIVE_SEEDS, "geometric_fused"),
            f"{0.95 - ratios['weights']:.3f}", f"{0.95 - ratios['main']:.3f}")


def _vgg11_weights() -> tuple[str, ...]:
    """Weight against activation alignment: in how many groups it matches worse on every seed, seed 1's
    correlations at the first and the fifth to seventh convolutions, and both fusions' ratios."""
    _same_parents(VGG11 / "main", VGG11 / "weights")
    weights = fuse_diagnostics(VGG11 / "weights", "match_correlation")
    activations = fuse_diagnostics(VGG11 / "main", "match_correlation")
    worse = int((weights < activations).all().sum())
    return (f"{worse} of {len(activations.columns)}",
            *(_two(t.loc[1, _CONVS[0]]) for t in (weights, activations)),
            *(_conv_span(VGG11 / s, "match_correlation", 1, _CONVS[4:7]) for s in ("weights", "main")),
            _ratio(VGG11 / "weights", "geometric_fused"), _ratio(VGG11 / "main", "geometric_fused"))


def _measure(folder: Path, kind: str, metric: str, digits: int) -> str:
    return f"{summary(folder).loc[(kind, metric), 'mean']:.{digits}g}"


FIGURES = (
    Figure(FASHION, "keeps **{}×** the parents' mean accuracy over five seeds ({} against {}; per seed {}–{}×)",
           lambda: (_ratio(FIVE_SEEDS, "geometric_fused"), _mean(FIVE_SEEDS, "geometric_fused"),
                    f"{parents(FIVE_SEEDS).mean():.4f}", *_per_seed_range(FIVE_SEEDS, "geometric_fused"))),
    Figure(FASHION, "| VGG11 geometric (one-shot) ≥ 0.95× | 5 seeds, re-run: **{}× with REPAIR** ({} against {}), "
           "{}× with weights, {}× with activations alone; the first five-seed study: {}× with activations alone "
           "(per seed {}–{}×) | met with REPAIR over five seeds; weight and activation alignment alone miss by {} "
           "and {} |", _vgg11_target),
    Figure(FASHION, "`--repair`, brings it to {}× in the five-seed re-run, and weight alignment gives {}× there",
           lambda: (_ratio(VGG11_5 / "repair", "geometric_fused"), _ratio(VGG11_5 / "weights", "geometric_fused"))),
    Figure(FASHION, "Training reproduced {} of the {} parents to the last digit, but not seed {}'s first one ({} "
           "against the first rows' {}), so the re-runs fuse other seed-1 parents and stay rows of their own; seeds {} "
           "of the five-seed re-run reproduce the first five-seed study's every accuracy.", _vgg11_reproduced),
    Figure(FASHION, "(geometric + fine-tuning {}× for VGG11)", lambda: (_ratio(TWO_SEEDS, "geometric_finetuned"),)),
    Figure(FASHION, "Hessian eigenvalue {} against the parents' {}–{})",
           lambda: (_measure(TWO_SEEDS, "naive_fused", "hessian_top_eigenvalue", 2),
                    _measure(TWO_SEEDS, "parent_2", "hessian_top_eigenvalue", 3),
                    _measure(TWO_SEEDS, "parent_1", "hessian_top_eigenvalue", 3))),
    Figure(FASHION, "(naive + fine-tuning: eigenvalue {})",
           lambda: (_measure(TWO_SEEDS, "naive_finetuned", "hessian_top_eigenvalue", 2),)),
    Figure(FASHION, "Naive averaging keeps {}×.", lambda: (_ratio(FIVE_SEEDS, "naive_fused"),)),
    # ResNet18 with batch-norm (docs/results/fidelity_resnet18_bn)
    Figure(FASHION, "| ResNet18 with batch-norm geometric ≥ 0.90× (the paper's ResNet18: about 0.83×) | {}× with "
           "activations ({} against {}); {}× with weights | met with activations (seed 1 {}×, seed 2 {}×); not with "
           "weights |",
           lambda: (_ratio(RESNET18_BN / "main", "geometric_fused"), _mean(RESNET18_BN / "main", "geometric_fused"),
                    f"{parents(RESNET18_BN / 'main').mean():.4f}", _ratio(RESNET18_BN / "weights", "geometric_fused"),
                    *(f"{r:.3f}" for r in per_seed_ratios(RESNET18_BN / "main", "geometric_fused")))),
    Figure(FASHION, "| naive far below both | VGG11 {}× (5 seeds), ResNet18 {}× | met |",
           lambda: (_ratio(FIVE_SEEDS, "naive_fused"), _ratio(RESNET18_BN / "main", "naive_fused"))),
    Figure(FASHION, "keeps every `std_ratio` at {}–{}, so REPAIR has nothing left to restore ({}× against {}×); its "
           "activation-matched neurons correlate only {}–{}",
           lambda: (*_diagnostic_range(RESNET18_BN / "main", "std_ratio"),
                    _ratio(RESNET18_BN / "repair", "geometric_fused"), _ratio(RESNET18_BN / "main", "geometric_fused"),
                    *_diagnostic_range(RESNET18_BN / "main", "match_correlation"))),
    Figure(FASHION, "Weight-based matching is worse still: its groups correlate {}–{}, the deepest ones near 0 (no "
           "better than chance), and the fused network keeps {} and {} accuracy",
           lambda: (*_diagnostic_range(RESNET18_BN / "weights", "match_correlation"),
                    *_accuracies(RESNET18_BN / "weights"))),
    # ResNet18 without batch-norm (docs/results/fidelity_resnet18_nobn)
    Figure(FASHION, "With activation alignment the fused networks keep {} and {} accuracy ({}×), and their "
           "`std_ratio` falls with depth, to {}–{} in the last stage (seed 1: the first block's inner channels {}, "
           "then the four stages' residual streams {}, {}, {} and {})",
           lambda: (*(f"{v:.3f}" for v in per_seed(RESNET18_NO_BN / "main")["geometric_fused"]),
                    _ratio(RESNET18_NO_BN / "main", "geometric_fused"),
                    *_last_stage(RESNET18_NO_BN / "main", "std_ratio"),
                    *_groups(RESNET18_NO_BN / "main", "std_ratio", 1, _FIRST_INNER + _STREAMS))),
    Figure(FASHION, "weakly matched neurons (correlation {}–{}) takes away",
           lambda: _diagnostic_range(RESNET18_NO_BN / "main", "match_correlation")),
    Figure(FASHION, "`--repair` sets every `std_ratio` back to {} and takes the two fusions to {} and {}: **{}×**",
           lambda: (_span(*_diagnostic_range(RESNET18_NO_BN / "repair", "std_ratio")),
                    *(f"{v:.3f}" for v in per_seed(RESNET18_NO_BN / "repair")["geometric_fused"]),
                    _ratio(RESNET18_NO_BN / "repair", "geometric_fused"))),
    Figure(FASHION, "Weight-based alignment matches worse still (correlations {}–{}, {}×)",
           lambda: (*_diagnostic_range(RESNET18_NO_BN / "weights", "match_correlation"),
                    _ratio(RESNET18_NO_BN / "weights", "geometric_fused"))),
    # VGG11's studies run again (docs/results/fidelity_vgg11): other parents than the table's first rows
    # ... and their fuse runs' diagnostics (seed 1, or both seeds where the prose says so)
    Figure(FASHION, "the matched neurons correlate {} in the first convolution, falling to {} in the fourth to sixth "
           "and rising again to {} and {} in the last two, and the fused activations keep {} of the spread at the "
           "first layer but only {}, {}, {} and {} over the last four",
           lambda: (*_groups(VGG11 / "main", "match_correlation", 1, _CONVS[:1]),
                    _conv_span(VGG11 / "main", "match_correlation", 1, _CONVS[3:6]),
                    *_groups(VGG11 / "main", "match_correlation", 1, _CONVS[6:]),
                    *_groups(VGG11 / "main", "std_ratio", 1, _CONVS[:1] + _CONVS[4:]))),
    Figure(FASHION, "On both seeds `--repair` restores every `std_ratio` to {} and gains {} and {} points ({} → {}, "
           "{} → {}; {}× → {}×), yet {} of the {} points the fusion loses to its parents remain", _vgg11_repair),
    Figure(FASHION, "Weight-based alignment matches worse in {} layer groups on both seeds, far more in the deep "
           "layers than in the first (seed 1: first convolution {} against {}, fifth to seventh {} against {}), yet "
           "fuses about as well ({}× against {}×)", _vgg11_weights),
    Figure("README.md", "geometric fusion keeps {}× the parents' accuracy with REPAIR, {}× with weight alignment, "
           "naive averaging {}×)", lambda: tuple(_ratio(VGG11_5 / s, k) for s, k in
                                                 (("repair", "geometric_fused"), ("weights", "geometric_fused"),
                                                  ("main", "naive_fused")))),
)


def check(root: Path = REPO) -> list[str]:
    """The computed sentences a page under `root` does not hold (empty: every figure matches)."""
    return missing(FIGURES, root)


if __name__ == "__main__":
    report(FIGURES, REPO)
