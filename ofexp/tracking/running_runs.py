"""Which runs are RUNNING, and whether their process still lives: `ofexp runs`, and the
notice `ofexp train` gives about a killed run with the same settings.

A run records the host and PID that run it (runs.process_tags); a RUNNING run whose
process is gone on this host, or that has been quiet for long, is stale.
"""
from __future__ import annotations

import os
import socket
import sys
import time
from contextlib import redirect_stdout
from dataclasses import dataclass
from typing import Mapping

import mlflow
from mlflow.exceptions import MlflowException

from ofexp.errors import ConfigError, OfexpError
from ofexp.tracking import server
from ofexp.tracking.names import TAG_FAILURE, TAG_HOST, TAG_PID, TAG_STAGE
from ofexp.tracking.runs import DEFAULT_EXPERIMENT, first_line, store_error, tracking_uri


def experiment_id_for(name: str | None) -> str:
    """The ID of an existing experiment (default as configure_tracking), without creating it."""
    name = name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
    server.check_server(tracking_uri())
    try:
        experiment = mlflow.MlflowClient().get_experiment_by_name(name)
    except MlflowException as exc:
        raise store_error(exc) from exc
    if experiment is None:
        raise ConfigError(f"no experiment named {name!r} on {tracking_uri()}; check --experiment-name")
    return experiment.experiment_id


def existing_experiment_id(name: str | None = None) -> str | None:
    """The ID of the experiment ofexp would log to (as configure_tracking names it), if it exists
    and the store answers; None otherwise. Creates nothing."""
    try:
        return experiment_id_for(name)  # probes a server first: one that is down answers at once
    except OfexpError:  # no such experiment, or no store to ask
        return None


def metric_steps(run_id: str, key: str) -> set[int]:
    """The steps at which a run has logged metric `key`."""
    return {m.step for m in mlflow.MlflowClient().get_metric_history(run_id, key)}


@dataclass(frozen=True)
class RunningRun:
    """A run whose status is RUNNING, with what tells a live run from a killed one."""

    run_id: str
    name: str
    params: dict
    last_epoch: int  # last epoch with logged metrics (0: none, and for stages without epochs)
    idle_s: float  # seconds since its last epoch's metrics (or its start)
    alive_here: bool  # its process still exists on this host
    gone_here: bool  # it was started on this host by a process that no longer exists
    stage: str = "train"

    @property
    def resume_command(self) -> str:
        """What picks the run's work up again: train runs resume in place, other steps are rerun."""
        if self.stage == "train":
            return f"ofexp train --resume {self.run_id}"
        if self.stage == "study":
            return "rerun the study (its finished steps are reused)"
        return f"rerun the {self.stage} step"

    def is_stale(self, older_than: float) -> bool:
        """Quiet for `older_than` seconds and not known to be alive on this host."""
        return not self.alive_here and self.idle_s >= older_than


def running_train_runs(experiment_id: str, epoch_metric: str = "val_loss") -> list[RunningRun]:
    """Every RUNNING train run of the experiment (server-side filter), newest first."""
    return running_runs(experiment_id, "train", epoch_metric)


def running_runs(experiment_id: str, stage: str | None = None, epoch_metric: str = "val_loss") -> list[RunningRun]:
    """Every RUNNING ofexp run of the experiment, of `stage` or of any stage, newest first."""
    client = mlflow.MlflowClient()
    which = f"tags.`{TAG_STAGE}` = '{stage}'" if stage else f"tags.`{TAG_STAGE}` != ''"
    query = f"attributes.status = 'RUNNING' and {which}"
    try:
        runs = client.search_runs([experiment_id], filter_string=query, max_results=1000,
                                  order_by=["attributes.start_time DESC"])
        return [_running_run(client, run, epoch_metric) for run in runs]
    except MlflowException as exc:
        raise OfexpError(f"cannot search runs on {tracking_uri()}: {first_line(exc)}") from exc


def experiment_name(experiment_id: str) -> str:
    return mlflow.MlflowClient().get_experiment(experiment_id).name


def _running_run(client: mlflow.MlflowClient, run, epoch_metric: str) -> RunningRun:
    stage = run.data.tags.get(TAG_STAGE, "")
    history = client.get_metric_history(run.info.run_id, epoch_metric) if stage == "train" else []
    last = max((m.timestamp for m in history), default=run.info.start_time or 0)
    alive, gone = process_state(run.data.tags)
    return RunningRun(
        run.info.run_id, run.info.run_name or "", dict(run.data.params),
        max((m.step for m in history), default=0), max(0.0, time.time() - last / 1000.0), alive, gone, stage,
    )


def close_stale_run(run_id: str, reason: str) -> None:
    """End a RUNNING run whose process is gone as KILLED, with `reason` as its failure reason."""
    client = mlflow.MlflowClient()
    try:
        client.set_tag(run_id, TAG_FAILURE, reason)
        with redirect_stdout(sys.stderr):  # MLflow's "View run" links, as in _end_run
            client.set_terminated(run_id, "KILLED")
    except MlflowException as exc:
        raise store_error(exc) from exc


def process_state(tags: Mapping[str, str]) -> tuple[bool, bool]:
    """(alive here, gone here) from the host and PID tags; (False, False) for another host."""
    if tags.get(TAG_HOST) != socket.gethostname() or not str(tags.get(TAG_PID, "")).isdigit():
        return False, False
    try:
        os.kill(int(tags[TAG_PID]), 0)
    except ProcessLookupError:
        return False, True
    except OSError:  # e.g. PermissionError: it exists, run by another user
        pass
    return True, False
