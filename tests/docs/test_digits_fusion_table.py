"""docs/fusion.md's "Fusion quality on digits" table, three-parent sentence and quoted figures are what
docs/results/digits_fusion/table.py prints from the committed quality.csv (issue #26): changing a
committed accuracy or a cell of the page makes the check fail. No training: it reads files."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

import page_drift

REPO = Path(__file__).resolve().parents[2]
FOLDER = Path("docs/results/digits_fusion")
PAGE = Path("docs/fusion.md")


def drift(root: Path) -> list[str]:
    return page_drift.drift(root, FOLDER / "table.py", PAGE, "quality.csv")


def test_the_page_equals_what_the_committed_csv_gives():
    assert drift(REPO) == []


def _copy(tmp_path: Path) -> Path:
    for part in (FOLDER, PAGE):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, tmp_path / part)
    return tmp_path


@pytest.mark.parametrize("where, new, found", [
    # a table cell (and the REPAIR gain the prose quotes)
    ({"arch": "vgg11", "bias": False, "lr": 0.1, "solver": "exact", "parents": 2, "seed": 1,
      "model": "activations_repair"}, 0.9, "row"),
    # the three-parent sentence
    ({"arch": "mlp", "parents": 3, "seed": 1, "model": "naive"}, 0.5, "Three MLP parents"),
    # a figure of the prose alone: a parent's accuracy within 0.98-0.99 at two decimals, at three moved
    ({"arch": "vgg11", "bias": True, "lr": 0.1, "solver": "exact", "parents": 2, "seed": 2, "model": "parent_1"},
     0.97, "of the parents'"),
    # a Sinkhorn fusion quoted in the prose
    ({"arch": "vgg11", "solver": "sinkhorn", "reg": 0.1, "seed": 2, "model": "geometric_activations"}, 0.99,
     "0.1 gave"),
    # a cell of the recipe table
    ({"arch": "vgg11", "lr": 0.05, "weight_decay": 0.001, "seed": 2, "model": "activations_repair"}, 0.5,
     "lr 0.05, weight decay 1e-3"),
])
def test_a_changed_committed_accuracy_makes_the_check_fail(tmp_path, where, new, found):
    root = _copy(tmp_path)
    assert drift(root) == []
    path = root / FOLDER / "quality.csv"
    frame = pd.read_csv(path)
    match = pd.Series(True, index=frame.index)
    for column, value in where.items():
        match &= frame[column] == value
    assert match.sum() == 1
    frame.loc[match, "accuracy"] = new
    frame.to_csv(path, index=False)
    problems = drift(root)
    assert any(found in p for p in problems), problems


def test_a_changed_cell_of_the_page_makes_the_check_fail(tmp_path):
    root = _copy(tmp_path)
    page = root / PAGE
    tables, _ = page_drift.printed(root, FOLDER / "table.py")
    row = tables[0].splitlines()[2]  # the first model's first seed
    cells = row.split(" | ")
    edited = " | ".join(cells[:3] + ["0.111"] + cells[4:])  # its naive cell
    text = page.read_text(encoding="utf-8")
    assert text.count(row) == 1
    page.write_text(text.replace(row, edited), encoding="utf-8")
    problems = drift(root)
    assert any("lacks the computed row" in p for p in problems) and any("does not give" in p for p in problems)


def test_a_changed_figure_of_the_prose_makes_the_check_fail(tmp_path):
    root = _copy(tmp_path)
    page = root / PAGE
    text = page.read_text(encoding="utf-8")
    assert text.count("0.57–0.63 on ResNet18") == 1
    page.write_text(text.replace("0.57–0.63 on ResNet18", "0.45–0.81 on ResNet18"), encoding="utf-8")
    assert drift(root) == [f"{PAGE} lacks the computed text 'by 0.42–0.77 on VGG11, 0.57–0.63 on ResNet18 with "
                           "batch-norm, 0.04–0.19 on ResNet18 without it and 0.04–0.10 on the MLP'"]


def test_a_recipe_without_committed_runs_is_refused(tmp_path):
    root = _copy(tmp_path)
    path = root / FOLDER / "quality.csv"
    frame = pd.read_csv(path)
    frame[frame["epochs"] != 100].to_csv(path, index=False)
    done = subprocess.run([sys.executable, str(root / FOLDER / "table.py")], capture_output=True, text=True,
                          cwd=root, timeout=60)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines() == [
        "error: quality.csv has no narrow VGG11 run with epochs 100, lr 0.01, weight decay 0.0; run quality.py "
        "with them (README.md gives the command)"]


def test_a_changed_barrier_of_the_fuse_run_makes_the_check_fail(tmp_path):
    root = _copy(tmp_path)
    (metrics,) = [m for m in (root / FOLDER / "fuse_run" / "export").glob("runs/*/metrics.csv")
                  if "interp/" in m.read_text(encoding="utf-8")]
    frame = pd.read_csv(metrics)
    frame.loc[frame["key"] == "interp/parents_raw/loss_barrier", "value"] = 2.5
    frame.to_csv(metrics, index=False)
    problems = drift(root)
    assert len(problems) == 1 and "2.50 raw" in problems[0], problems
