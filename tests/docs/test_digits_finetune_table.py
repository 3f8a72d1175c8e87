"""docs/fusion.md's "Fusion vs ensemble and fine-tuning" table, its description of the runs and the
figures its prose quotes are what docs/results/digits_finetune/table.py prints from the committed
study files (issue #26): changing a committed accuracy or param, or a cell of the page, makes the
check fail. No training: it reads files."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd

import page_drift

REPO = Path(__file__).resolve().parents[2]
FOLDER = Path("docs/results/digits_finetune")
PAGE = Path("docs/fusion.md")


def drift(root: Path) -> list[str]:
    return page_drift.drift(root, FOLDER / "table.py", PAGE, "results.csv")


def test_the_page_equals_what_the_committed_study_gives():
    assert drift(REPO) == []


def test_the_committed_results_are_the_exported_evaluate_runs():
    """results.csv and the export are one study: each evaluate step's run holds the accuracy results.csv has."""
    results = pd.read_csv(REPO / FOLDER / "results.csv").set_index(["Model", "Metric"])["Value"]
    steps = pd.read_csv(REPO / FOLDER / "steps.csv")
    evaluated = steps[steps["stage"] == "evaluate"]
    assert len(evaluated) == 14
    for _, step in evaluated.iterrows():
        metrics = pd.read_csv(REPO / FOLDER / "export" / "runs" / step["run_id"] / "metrics.csv")
        (logged,) = set(metrics[metrics["key"] == "prediction/accuracy"]["value"])
        assert results[(f"{step['kind']}_seed{step['seed']}", "accuracy")] == logged, step["run_id"]


def _copy(tmp_path: Path) -> Path:
    for part in (FOLDER, PAGE):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, tmp_path / part)
    return tmp_path


def test_a_changed_committed_accuracy_makes_the_check_fail(tmp_path):
    root = _copy(tmp_path)
    assert drift(root) == []
    path = root / FOLDER / "results.csv"
    frame = pd.read_csv(path)
    match = (frame["Model"] == "geometric_finetuned_seed2") & (frame["Metric"] == "accuracy")
    assert match.sum() == 1
    frame.loc[match, "Value"] = 0.99
    frame.to_csv(path, index=False)
    problems = drift(root)
    # the seed-2 and mean rows, and the prose's comparison with naive-finetuned and the ensemble
    assert any("| 2 |" in p and "lacks the computed row" in p for p in problems), problems
    assert any("| mean |" in p for p in problems), problems
    assert any("beats naive-finetuned in 2 of 2 seeds" in p for p in problems), problems


def test_a_changed_committed_param_makes_the_check_fail(tmp_path):
    root = _copy(tmp_path)
    steps = pd.read_csv(root / FOLDER / "steps.csv")
    tuned = steps[(steps["seed"] == 1) & (steps["kind"] == "naive_finetuned") & (steps["stage"] == "train")]
    (run_id,) = tuned["run_id"]
    path = root / FOLDER / "export" / "runs" / run_id / "run.json"
    run = json.loads(path.read_text(encoding="utf-8"))
    run["params"]["seed"] = "7"
    path.write_text(json.dumps(run), encoding="utf-8")
    problems = drift(root)
    assert len(problems) == 1 and "shuffle seed 7/100/200/200" in problems[0], problems


def test_a_changed_cell_of_the_page_makes_the_check_fail(tmp_path):
    root = _copy(tmp_path)
    page = root / PAGE
    (table,), _ = page_drift.printed(root, FOLDER / "table.py")
    row = table.splitlines()[2]  # seed 1
    cells = row.split(" | ")
    edited = " | ".join(cells[:4] + ["0.1111"] + cells[5:])  # its naive cell
    text = page.read_text(encoding="utf-8")
    assert text.count(row) == 1
    page.write_text(text.replace(row, edited), encoding="utf-8")
    problems = drift(root)
    assert any("lacks the computed row" in p for p in problems) and any("does not give" in p for p in problems)
