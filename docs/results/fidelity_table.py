"""Print the fidelity table's rows (docs/fashion_mnist.md) from the committed study folders alone.

    python docs/results/fidelity_table.py

Each row is one configuration, each column one of the paper's models, as test accuracy
mean ± std over the seeds and, in brackets, its ratio to the parents' mean. The values
are the per-seed `accuracy` rows of the committed `results.csv` of the configuration's
main study (the one with `--finetune-epochs 1`: parents, naive, geometric with
activations, the ensemble, both fine-tuned). A cell whose study's files were never
committed (the `--alignment weights` and `--repair` studies, every ResNet18 study: their
store is gone) prints as †: the docs keep the measured value with a † beside it, and
tests/docs/test_results_tables.py checks every other cell against this output.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
from study_tables import FIVE_SEEDS, TWO_SEEDS, parents, per_seed  # noqa: E402

NOT_COMMITTED = "†"
COLUMNS = ("parents", "naive", "geometric, weights", "geometric, activations", "activations + REPAIR",
           "ensemble", "naive + fine-tuning", "geometric + fine-tuning")
# the table's column -> the model kind in the main study's results.csv (None: no committed study)
KIND = {"parents": "parent", "naive": "naive_fused", "geometric, weights": None,
        "geometric, activations": "geometric_fused", "activations + REPAIR": None, "ensemble": "ensemble",
        "naive + fine-tuning": "naive_finetuned", "geometric + fine-tuning": "geometric_finetuned"}
# the table's row name -> the committed folder of its main study
ROWS = {"vgg11 w0.25, 10 epochs, seeds 1,2": TWO_SEEDS, "vgg11 w0.25, 10 epochs, seeds 1–5": FIVE_SEEDS}


def cell(folder: Path, column: str) -> str:
    kind = KIND[column]
    if kind is None:
        return NOT_COMMITTED
    reference = parents(folder)
    values = reference if kind == "parent" else per_seed(folder)[kind]
    text = f"{values.mean():.4f} ± {values.std(ddof=1):.4f}"
    return text if kind == "parent" else f"{text} ({values.mean() / reference.mean():.3f}×)"


def rows() -> dict[str, list[str]]:
    """{row name: its cells in COLUMNS order}, for every configuration with committed data."""
    return {name: [cell(folder, column) for column in COLUMNS] for name, folder in ROWS.items()}


def main() -> None:
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for name, cells in rows().items():
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"\n{NOT_COMMITTED}: no committed data (the study's files were never committed)")


if __name__ == "__main__":
    pd.set_option("display.width", 200)
    main()
