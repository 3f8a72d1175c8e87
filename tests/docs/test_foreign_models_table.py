"""docs/results/foreign_models: the README's table is exactly what table.py makes of runs.csv."""
from __future__ import annotations

import importlib.util
from pathlib import Path

HERE = Path(__file__).resolve().parents[2] / "docs" / "results" / "foreign_models"
START, END = "<!-- table.py: start -->", "<!-- table.py: end -->"


def _table_module():
    spec = importlib.util.spec_from_file_location("foreign_models_table", HERE / "table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _readme_table() -> str:
    text = (HERE / "README.md").read_text()
    assert text.count(START) == 1 and text.count(END) == 1, f"README.md needs one {START} … {END} block"
    return text.split(START)[1].split(END)[0].strip()


def test_readme_table_is_what_table_py_prints_from_runs_csv():
    table = _table_module()
    assert _readme_table() == table.table(table.read_runs())


def test_a_changed_value_in_runs_csv_changes_the_table():
    table = _table_module()
    rows = table.read_runs()
    parent = next(r for r in rows if r["role"] == "parent")
    parent["test_accuracy"] = str(float(parent["test_accuracy"]) - 0.01)
    assert _readme_table() != table.table(rows)


def test_every_run_has_an_id_and_a_command_or_a_refusal():
    for row in _table_module().read_runs():
        assert row["command"], row
        assert row["run_id"] or row["note"], row
        assert row["role"] in ("parent", "naive", "geometric", "geometric+repair"), row


def test_ofexp_measures_each_parent_as_the_plain_script_did():
    # each fuse run re-measures its parents (metrics parent_<i>/accuracy) on the data ofexp feeds them
    # (--pixels unit --channels 3): equal to the script's own test accuracy, the input format is the same
    rows = _table_module().read_runs()
    parents: dict[str, list[str]] = {}
    for row in rows:
        if row["role"] == "parent":
            parents.setdefault(row["arch"], []).append(row["test_accuracy"])
    fused = [row for row in rows if row["role"] != "parent" and row["run_id"]]
    assert fused
    for row in fused:
        assert row["parents_measured_by_ofexp"] == " / ".join(parents[row["arch"]]), row
