"""Starting, tagging and ending the MLflow run of one ofexp step.

This package is the only place in ofexp that talks to MLflow.
"""
from __future__ import annotations

import os
import subprocess
import sys
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Iterator, Mapping

import mlflow
from mlflow.exceptions import MlflowException

from ofexp import __version__
from ofexp.errors import ConfigError, OfexpError

STAGES = ("train", "fuse", "evaluate", "study")
TAG_STAGE = "ofexp.stage"
TAG_VERSION = "ofexp.version"
TAG_FAILURE = "ofexp.failure_reason"
TAG_PARENTS = "ofexp.parent_run_ids"
TAG_MODEL_RUN = "ofexp.model_run_id"
TAG_LAUNCHER = "ofexp.launcher_run_id"
TAG_LOGGED_MODEL = "ofexp.logged_model_id"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_NOTE = "mlflow.note.content"
DEFAULT_EXPERIMENT = "ofexp"

# `mlflow run` hands its own run to the command through this variable. ofexp
# makes its step run a child of that "launcher" run instead of reusing it: the
# launcher already holds the entry point's raw parameters (e.g. lr=""), and
# MLflow forbids changing a param, so the resolved values need a run of their own.
_launcher_run_id: str | None = os.environ.pop("MLFLOW_RUN_ID", None)


def tracking_uri() -> str:
    """The tracking URI in use: MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db)."""
    return mlflow.get_tracking_uri()


def configure_tracking(experiment_name: str | None = None) -> str:
    """Select the experiment for the runs that follow and check the store answers.

    Returns the experiment ID. The name defaults to MLFLOW_EXPERIMENT_NAME, then
    "ofexp". Under `mlflow run` the launcher run's experiment is used.
    """
    try:
        if _launcher_run_id and not experiment_name:
            experiment_id = mlflow.get_run(_launcher_run_id).info.experiment_id
            return mlflow.set_experiment(experiment_id=experiment_id).experiment_id
        name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        return mlflow.set_experiment(name).experiment_id
    except MlflowException as exc:
        raise OfexpError(
            f"cannot use the tracking store {tracking_uri()}: {_first_line(exc)}; "
            "check MLFLOW_TRACKING_URI and that the server is running"
        ) from exc


def git_commit() -> str | None:
    """The commit of the ofexp source tree, when it is a git checkout."""
    src = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def base_tags(stage: str) -> dict[str, str]:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; use one of {', '.join(STAGES)}")
    tags = {TAG_STAGE: stage, TAG_VERSION: __version__}
    commit = git_commit()
    if commit:
        tags[TAG_GIT_COMMIT] = commit
    return tags


@contextmanager
def stage_run(
    stage: str,
    *,
    run_name: str,
    params: Mapping[str, object] | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """Run the body inside a new MLflow run of `stage`; end it FINISHED or FAILED.

    The run is nested under the active run (a study) or the `mlflow run`
    launcher, if any. An exception marks the run FAILED (KILLED for Ctrl-C) with
    its one-line reason in the `ofexp.failure_reason` tag, then propagates.
    """
    all_tags = {**base_tags(stage), **(tags or {})}
    parent = mlflow.active_run()
    parent_id = parent.info.run_id if parent else _launcher_run_id
    if parent_id and not parent:
        all_tags[TAG_LAUNCHER] = parent_id
    run = mlflow.start_run(
        run_name=run_name, tags=all_tags, description=description,
        nested=parent is not None, parent_run_id=None if parent else parent_id,
    )
    try:
        if params:
            mlflow.log_params({k: _param_str(v) for k, v in params.items()})
        yield run
    except BaseException as exc:
        status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
        try:
            mlflow.set_tag(TAG_FAILURE, _first_line(exc) or type(exc).__name__)
        finally:
            _end_run(status)
        raise
    else:
        _end_run("FINISHED")


def _end_run(status: str) -> None:
    # MLflow prints "View run ... at: URL" on stdout when it ends a run on a server;
    # ofexp's stdout carries only run IDs, so the links go to stderr with the progress.
    with redirect_stdout(sys.stderr):
        mlflow.end_run(status)


def set_description(text: str) -> None:
    """Replace the active run's description (the note shown in the UI)."""
    mlflow.set_tag(TAG_NOTE, text)


def _param_str(value: object) -> str:
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def log_metrics(metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None) -> None:
    """Log a batch of metrics to the active run in one call (one request to a server)."""
    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step, model_id=model_id)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def set_tags(tags: Mapping[str, str]) -> None:
    mlflow.set_tags(dict(tags))


def active_run_id() -> str:
    run = mlflow.active_run()
    if run is None:
        raise RuntimeError("no active MLflow run")
    return run.info.run_id
