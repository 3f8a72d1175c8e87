"""Print the foreign-models fusion table (README.md here) from runs.csv beside this script.

    python docs/results/foreign_models/table.py

runs.csv holds one row per MLflow run: the parents trained by
examples/train_plain.py (no ofexp) and the fuse runs ofexp made of each seed pair.
Each table row is one architecture; each cell is a test accuracy on the 10,000
Fashion-MNIST test images and, in brackets, its ratio to the parents' mean. A run
ofexp refused has no accuracy: its cell is the refusal, from the row's note.
Nothing but runs.csv is read (no MLflow), so the table can be checked in the tests.
"""
from __future__ import annotations

import csv
from pathlib import Path

RUNS = Path(__file__).with_name("runs.csv")
FUSED = ("naive", "geometric", "geometric+repair")
HEADER = ("model", "parents (each; mean)", "naive", "geometric", "geometric + REPAIR")


def read_runs(path: Path = RUNS) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _cell(row: dict[str, str] | None, parents_mean: float) -> str:
    if row is None:
        return "not run"
    if not row["test_accuracy"]:
        return f"refused: {row['note']}" if row["note"] else "no result"
    value = float(row["test_accuracy"])
    return f"{value:.4f} ({value / parents_mean:.3f}×)"


def table(rows: list[dict[str, str]]) -> str:
    """The Markdown table: one line per architecture, in the order of first appearance."""
    archs = list(dict.fromkeys(r["arch"] for r in rows))
    lines = ["| " + " | ".join(HEADER) + " |", "|---" * len(HEADER) + "|"]
    for arch in archs:
        mine = [r for r in rows if r["arch"] == arch]
        parents = [float(r["test_accuracy"]) for r in mine if r["role"] == "parent"]
        mean = sum(parents) / len(parents)
        by_role = {r["role"]: r for r in mine if r["role"] != "parent"}
        cells = [arch, " / ".join(f"{p:.4f}" for p in parents) + f"; {mean:.4f}"]
        cells += [_cell(by_role.get(role), mean) for role in FUSED]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    print(table(read_runs()))
