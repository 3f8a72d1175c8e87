"""Print the fidelity table's rows (docs/fashion_mnist.md) from the committed study folders alone.

    python docs/results/fidelity_table.py

Each row is one configuration, each column one of the paper's models, as test accuracy
mean ± std over the seeds and, in brackets, its ratio to the parents' mean. A configuration
has up to three studies (docs/fashion_mnist.md gives their commands): the main one with
`--finetune-epochs 1` (parents, naive, geometric with activations, the ensemble, both
fine-tuned), `--alignment weights` and `--repair`, the last two reusing the main study's
parents. Each cell reads the per-seed `accuracy` rows of its study's committed
`results.csv`. A study whose files were never committed (the first VGG11 weights and REPAIR
studies: their store is gone, issue #26) prints as —: the docs quote no value there, and
tests/docs/test_results_tables.py checks every cell against this output. Those studies were run
again, on two and on five seeds, and make their own "re-run" rows.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_tables import FIVE_SEEDS, RESULTS, TWO_SEEDS, parents, per_seed  # noqa: E402

NOT_COMMITTED = "—"


@dataclass(frozen=True)
class Configuration:
    """The committed folders of one configuration's studies (None: never committed)."""
    main: Path
    weights: Path | None
    repair: Path | None


def fidelity(name: str) -> Configuration:
    """A configuration re-run for issue #26: docs/results/<name>/{main,weights,repair}."""
    folder = RESULTS / name
    return Configuration(folder / "main", folder / "weights", folder / "repair")


COLUMNS = ("parents", "naive", "geometric, weights", "geometric, activations", "activations + REPAIR",
           "ensemble", "naive + fine-tuning", "geometric + fine-tuning")
# the table's column -> (the configuration's study, the model kind in its results.csv)
SOURCE = {"parents": ("main", "parent"), "naive": ("main", "naive_fused"),
          "geometric, weights": ("weights", "geometric_fused"),
          "geometric, activations": ("main", "geometric_fused"),
          "activations + REPAIR": ("repair", "geometric_fused"), "ensemble": ("main", "ensemble"),
          "naive + fine-tuning": ("main", "naive_finetuned"),
          "geometric + fine-tuning": ("main", "geometric_finetuned")}
ROWS = {
    "vgg11 w0.25, 10 epochs, seeds 1,2": Configuration(TWO_SEEDS, None, None),
    "vgg11 w0.25, 10 epochs, seeds 1–5": Configuration(FIVE_SEEDS, None, None),
    # the same two-seed study run again by commit 73506a4: another seed-1 parent_1 (0.9217, not 0.9186)
    "vgg11 w0.25, 10 epochs, seeds 1,2, re-run (73506a4)": fidelity("fidelity_vgg11"),
    # the five-seed studies run again by the same commit, reusing seeds 1 and 2 of the two-seed re-run
    "vgg11 w0.25, 10 epochs, seeds 1–5, re-run (73506a4)": fidelity("fidelity_vgg11_5seeds"),
    "resnet18 w0.125 BN, 5 epochs, seeds 1,2": fidelity("fidelity_resnet18_bn"),
    "resnet18 w0.125, no BN, 3 epochs, seeds 1,2": fidelity("fidelity_resnet18_nobn"),
}


def study_folder(configuration: Configuration, column: str) -> Path | None:
    folder = getattr(configuration, SOURCE[column][0])
    return folder if folder is not None and (folder / "results.csv").is_file() else None


def check_same_parents(configuration: Configuration) -> None:
    """The weights and REPAIR studies fuse the main study's parents: their accuracies must agree."""
    reference = parents(configuration.main)
    for other in (configuration.weights, configuration.repair):
        if other is not None and (other / "results.csv").is_file():
            if not parents(other).reset_index(drop=True).equals(reference.reset_index(drop=True)):
                raise SystemExit(f"error: {other} has other parents than {configuration.main}; "
                                 "a configuration's studies must reuse one set of trained parents")


def cell(configuration: Configuration, column: str) -> str:
    folder = study_folder(configuration, column)
    if folder is None:
        return NOT_COMMITTED
    kind = SOURCE[column][1]
    reference = parents(configuration.main)
    values = reference if kind == "parent" else per_seed(folder)[kind]
    text = f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    return text if kind == "parent" else f"{text} ({values.mean() / reference.mean():.3f}×)"


def rows() -> dict[str, list[str]]:
    """{row name: its cells in COLUMNS order}, for every configuration with a committed main study."""
    table = {}
    for name, configuration in ROWS.items():
        if (configuration.main / "results.csv").is_file():
            check_same_parents(configuration)
            table[name] = [cell(configuration, column) for column in COLUMNS]
    return table


def main() -> None:
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, cells in rows().items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{NOT_COMMITTED}: no committed data (the study's files were never committed); no value quoted")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
