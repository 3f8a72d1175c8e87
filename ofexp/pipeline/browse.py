"""What the read-only commands show, and the tracking set-up every command starts with.

The CLI parses input and prints; everything it asks of the tracking server goes
through `ofexp.pipeline`, here for `ofexp report`, `compare`, `runs` and `ui`.
No MLflow type crosses into the CLI: tables are pandas frames, runs are IDs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pandas as pd

from ofexp import tracking
from ofexp.metrics.registry import ACCURACY_TO_PARENTS_KEY, TEST_ACCURACY_KEY, TEST_LOSS_KEY
from ofexp.pipeline.study.report import StudyTables, build_tables, study_steps
from ofexp.tracking import queries, running_runs
from ofexp.tracking.names import STAGES
from ofexp.tracking.runs import describe_tracking_error
from ofexp.tracking.server import experiment_page

__all__ = ["STAGES", "StudyReport", "UiAddress", "check_ui_port", "close_stale_runs", "compare_table",
           "describe_store_error", "running_runs_table", "serve_ui", "study_report", "ui_address", "use_experiment"]

# The runs table's metric columns in `ofexp ui`: what a train, fuse or evaluate run measured,
# and a fuse run's accuracy over its parents' mean
UI_METRIC_COLUMNS = (TEST_ACCURACY_KEY, TEST_LOSS_KEY, ACCURACY_TO_PARENTS_KEY)


def use_experiment(experiment_name: str | None) -> str:
    """Select the experiment the next runs log into (and check the store answers); its ID."""
    return tracking.configure_tracking(experiment_name)


def describe_store_error(exc: BaseException) -> str | None:
    """One line for an error of the tracking store, or None when `exc` is not one."""
    from mlflow.exceptions import MlflowException

    fixable = describe_tracking_error(exc)
    if fixable:
        return fixable
    if isinstance(exc, MlflowException):
        return f"MLflow: {' '.join(str(exc).split())[:400]}"
    return None


@dataclass(frozen=True)
class StudyReport:
    """A study rebuilt from the server: its steps and the tables built from their runs."""

    run_id: str
    name: str
    accuracy_metric: str
    steps: pd.DataFrame
    tables: StudyTables


def study_report(study_run_id: str) -> StudyReport:
    study = queries.get_run_data(study_run_id, stage="study")
    steps, runs = study_steps(study)
    metric = study.params.get("accuracy_metric", "accuracy")
    return StudyReport(study.run_id, study.name, metric, steps, build_tables(steps, runs, metric))


def compare_table(run_ids: tuple[str, ...]) -> pd.DataFrame:
    """Rows: run name, stage, status, then `param.<key>` and `metric.<key>` (sorted); one column per run."""
    columns = {}
    for run in queries.runs_by_id(run_ids).values():
        column = {"name": run.name, "stage": run.stage or "", "status": run.status}
        column.update({f"param.{k}": v for k, v in sorted(run.params.items())})
        column.update({f"metric.{k}": v for k, v in sorted(run.metrics.items())})
        columns[run.run_id] = column
    table = pd.DataFrame(columns)
    head = ["name", "stage", "status"]
    rest = sorted(i for i in table.index if i not in head)
    return table.reindex(head + rest)


def running_runs_table(experiment_name: str | None, stage: str | None, stale: bool,
                       older_than: float) -> pd.DataFrame:
    """RUNNING runs (only the stale ones with `stale`), one row each, with what picks each up again."""
    experiment_id = running_runs.experiment_id_for(experiment_name)
    found = [r for r in running_runs.running_runs(experiment_id, stage) if not stale or r.is_stale(older_than)]
    return pd.DataFrame([{
        "run_id": r.run_id, "name": r.name, "stage": r.stage, "last_epoch": r.last_epoch, "idle_s": round(r.idle_s),
        "process": "alive" if r.alive_here else "gone" if r.gone_here else "?", "next": r.resume_command,
    } for r in found], columns=["run_id", "name", "stage", "last_epoch", "idle_s", "process", "next"])


def close_stale_runs(run_ids: list[str], reason: str) -> None:
    for run_id in run_ids:
        running_runs.close_stale_run(run_id, reason)


@dataclass(frozen=True)
class UiAddress:
    store: str  # the tracking URI in use
    page: str  # the experiment's runs table
    on_server: bool  # the store is a tracking server: its own UI serves the page


def ui_address(port: int) -> UiAddress:
    """Where the MLflow UI shows ofexp's experiment: the server's page, or a local `mlflow ui` on `port`."""
    uri = tracking.tracking_uri()
    experiment_id = running_runs.existing_experiment_id()
    on_server = uri.startswith(("http://", "https://"))
    return UiAddress(uri, experiment_page(uri if on_server else f"http://127.0.0.1:{port}", experiment_id), on_server)


def check_ui_port(port: int) -> None:
    """ConfigError unless the UI could listen on `port` now."""
    from ofexp.tracking.ui_server import check_port_free

    check_port_free(port)


def serve_ui(address: UiAddress, port: int, verbose: bool, on_ready: Callable[[], None]) -> None:
    """Serve the MLflow UI on the local store until stopped (ofexp/tracking/ui_server.py)."""
    from ofexp.tracking.ui_server import run_ui

    run_ui(address.store, port, list(UI_METRIC_COLUMNS), verbose, on_ready)
