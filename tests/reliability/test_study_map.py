"""`ofexp report` checks each steps.csv row against the run it names (issue #27, item 7).

A study's steps.csv maps (seed, kind, stage) to runs. Edited, it would show one model's values
under another's name: swapping the parent_1 and naive_fused evaluate rows made naive_fused show
the parent's accuracy, with exit 0. One real one-seed naive study in a SQLite store; each case
writes an edited map over the study's and asks for its report.
"""
from __future__ import annotations

import io

import pandas as pd
import pytest
from mlflow import MlflowClient

from conftest import run_artifact_bytes, run_cli_in_process

EXPERIMENT = "study-map"
TINY = ["--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu",
        "--measures", "prediction", "--preset", "quick", "--method", "naive", "--experiment-name", EXPERIMENT]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    import contextlib

    uri = f"sqlite:///{tmp_path_factory.mktemp('study-map')}/mlflow.db"
    from conftest import using_tracking_uri
    from ofexp.cli import main

    out = io.StringIO()
    with using_tracking_uri(uri), contextlib.redirect_stdout(out):
        main(["study", *TINY, "--seeds", "1"])
    study_id = out.getvalue().strip().splitlines()[-1]
    original = run_artifact_bytes(MlflowClient(uri), study_id, "steps.csv").decode()
    return uri, study_id, original


def _report_with(study, capsys, edit) -> tuple[int, str]:
    uri, study_id, original = study
    steps = pd.read_csv(io.StringIO(original), dtype={"run_id": str})
    client = MlflowClient(uri)
    client.log_text(study_id, edit(steps.copy()).to_csv(index=False), "steps.csv")
    try:
        result = run_cli_in_process(["report", study_id], uri, capsys)
    finally:
        client.log_text(study_id, original, "steps.csv")
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    return result.returncode, result.stderr


def _row(steps: pd.DataFrame, kind: str, stage: str) -> int:
    return steps.index[(steps["kind"] == kind) & (steps["stage"] == stage)][0]


def _swap(steps: pd.DataFrame, a: tuple[str, str], b: tuple[str, str]) -> pd.DataFrame:
    i, j = _row(steps, *a), _row(steps, *b)
    steps.loc[i, "run_id"], steps.loc[j, "run_id"] = steps.loc[j, "run_id"], steps.loc[i, "run_id"]
    return steps


def _one_error(code: int, stderr: str, study_id: str) -> str:
    assert code == 1, stderr[-2000:]
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    assert f"study run {study_id}'s steps.csv row" in lines[0] or f"study run {study_id}'s steps.csv lists" in lines[0]
    assert "the map was changed after the study wrote it" in lines[0]
    return lines[0]


def test_swapped_evaluate_rows_are_refused(study, capsys):
    # the issue's case: naive_fused then showed parent_1's accuracy
    code, stderr = _report_with(study, capsys, lambda s: _swap(s, ("parent_1", "evaluate"), ("naive_fused", "evaluate")))
    line = _one_error(code, stderr, study[1])
    assert "row seed 1 parent_1 evaluate names run" in line and "which measured run" in line


def test_swapped_parents_with_their_evaluations_are_refused(study, capsys):
    # a consistent relabelling: each evaluation still follows its model, but parent_1 is parent_2
    def edit(steps):
        steps = _swap(steps, ("parent_1", "train"), ("parent_2", "train"))
        return _swap(steps, ("parent_1", "evaluate"), ("parent_2", "evaluate"))

    line = _one_error(*_report_with(study, capsys, edit), study[1])
    assert "row seed 1 parent_1 train names run" in line and "which trained with seed 102, not 101" in line


def test_a_row_naming_a_run_of_another_stage_is_refused(study, capsys):
    def edit(steps):
        steps.loc[_row(steps, "naive_fused", "fuse"), "run_id"] = steps.loc[_row(steps, "parent_1", "train"), "run_id"]
        return steps

    line = _one_error(*_report_with(study, capsys, edit), study[1])
    assert "row seed 1 naive_fused fuse names run" in line and "which is a train run" in line


def test_a_deleted_row_is_refused(study, capsys):
    code, stderr = _report_with(study, capsys, lambda s: s.drop(index=_row(s, "naive_fused", "evaluate")))
    line = _one_error(code, stderr, study[1])
    assert "lists 5 steps, but the study made 6" in line


def test_the_untouched_map_reports(study, capsys):
    code, stderr = _report_with(study, capsys, lambda s: s)
    assert code == 0, stderr[-2000:]
