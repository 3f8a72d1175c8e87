"""Starting, tagging and ending the MLflow run of one ofexp step.

This package is the only place in ofexp that talks to MLflow.
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Iterator, Mapping

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ofexp import __version__
from ofexp.errors import ConfigError, OfexpError, StoreFullError, TrackingServerError
from ofexp.options import param_str  # noqa: F401 - how a value is written as a param, for tracking's callers
from ofexp.signals import stops_held
from ofexp.tracking import launcher, server
from ofexp.tracking.names import (CLAIM_PARAM, DIGEST_ALGORITHM, STAGES, TAG_DIGESTS, TAG_EXPERIMENT_KIND, TAG_FAILURE, TAG_GIT_COMMIT, TAG_HOST,
                                  TAG_LAUNCHER, TAG_NOTE, TAG_PARENT_RUN, TAG_PID, TAG_RUN_NAME, TAG_STAGE, TAG_VERSION,
                                  TAG_WARNING_PREFIX)

DEFAULT_EXPERIMENT = "ofexp"



def tracking_uri() -> str:
    """The tracking URI in use: MLFLOW_TRACKING_URI, else MLflow's default (sqlite:///mlflow.db)."""
    return mlflow.get_tracking_uri()


def configure_tracking(experiment_name: str | None = None) -> str:
    """Select the experiment for the runs that follow and check the store answers.

    Returns the experiment ID. The name defaults to MLFLOW_EXPERIMENT_NAME, then
    "ofexp". Under `mlflow run` the launcher run's experiment is used.
    """
    _check_local_store_writable(tracking_uri())
    server.check_server(tracking_uri())
    try:
        if launcher.launcher_run_id() and not experiment_name:
            experiment_id = mlflow.get_run(launcher.launcher_run_id()).info.experiment_id
            return mlflow.set_experiment(experiment_id=experiment_id).experiment_id
        name = experiment_name or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT
        experiment = mlflow.set_experiment(name)
    except MlflowException as exc:
        raise store_error(exc) from exc
    _label_experiment(experiment)
    return experiment.experiment_id


# What the experiment is, for the UI and whoever reads it: model training, described. (MLflow
# 3.17's UI still opens its GenAI overview whatever the kind; the link `ofexp ui` prints asks
# for the runs table, see server.experiment_page.)
EXPERIMENT_KIND = "custom_model_development"
EXPERIMENT_DESCRIPTION = (
    "Model-fusion experiments made by ofexp: train, fuse, ensemble, evaluate and study runs. "
    "A study run is the parent of its steps: open it for results.csv, summary.csv, the plots "
    "and steps.csv (every step's run ID). Runs name their inputs by run ID (tags "
    "ofexp.parent_run_ids, ofexp.model_run_id).")


def _label_experiment(experiment) -> None:
    """Record the experiment's kind and a description, where it has none: never the user's own."""
    missing = {key: value for key, value in ((TAG_EXPERIMENT_KIND, EXPERIMENT_KIND), (TAG_NOTE, EXPERIMENT_DESCRIPTION))
               if key not in experiment.tags}
    try:
        for key, value in missing.items():
            mlflow.MlflowClient().set_experiment_tag(experiment.experiment_id, key, value)
    except MlflowException:
        pass  # cosmetic: a user who may not edit the experiment meets the real refusal when a run starts


def _check_local_store_writable(uri: str) -> None:
    """Refuse a SQLite store in a folder that cannot be written, before MLflow retries it for minutes."""
    if not uri.startswith("sqlite:///") or uri == "sqlite:///:memory:":
        return
    folder = Path(uri.removeprefix("sqlite:///")).expanduser().resolve().parent
    try:
        # A real write, not os.access: root passes access checks that the file system still refuses.
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as exc:
        raise ConfigError(
            f"cannot write the tracking store {uri} in {folder} ({exc.strerror or exc}); "
            "run ofexp from a writable folder or set MLFLOW_TRACKING_URI to a writable store or a server"
        ) from None
    database = Path(uri.removeprefix("sqlite:///")).expanduser()
    try:
        # opened for appending and closed unwritten: refused for a read-only or immutable file,
        # which MLflow would otherwise meet with an SQLAlchemy traceback on stderr
        with open(database, "ab"):
            pass
    except FileNotFoundError:
        pass  # MLflow creates it
    except OSError as exc:
        raise ConfigError(
            f"cannot write the tracking store {uri} ({exc.strerror or exc}: the file is read-only); make it "
            "writable (chmod u+w, or chattr -i) or set MLFLOW_TRACKING_URI to a writable store or a server"
        ) from None


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
    tags = {TAG_STAGE: stage, TAG_VERSION: __version__, TAG_DIGESTS: DIGEST_ALGORITHM}
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
    resume_run_id: str | None = None,
    adopt_launcher: bool = True,
) -> Iterator[mlflow.ActiveRun]:
    """Run the body inside a new MLflow run of `stage`; end it FINISHED or FAILED.

    The run is nested under the active run (a study), if any. Under `mlflow run`,
    the first top-level run is the run `mlflow run` made (see `launcher`), unless
    `adopt_launcher` is false; later ones are its children. An exception marks the
    run FAILED (KILLED for Ctrl-C) with its one-line reason in the
    `ofexp.failure_reason` tag, then propagates. With `resume_run_id`, the
    existing run is reopened instead (status back to RUNNING, an old failure
    reason removed); `params` are then not re-logged (MLflow forbids changing
    them), `tags` are updated.
    """
    # training is the long, resource-bound step: MLflow samples CPU, memory and GPU use beside it
    system_metrics = stage == "train"
    requested: Mapping[str, str] = {}
    if resume_run_id:
        run = _reopen_run(resume_run_id, tags, log_system_metrics=system_metrics)
    else:
        # host and PID on every stage's run, so `ofexp runs --stale` can tell a killed one from a live one
        all_tags = {**base_tags(stage), **process_tags(), **(tags or {})}
        parent = mlflow.active_run()
        adopted = launcher.take_launcher_run() if adopt_launcher and not parent else None
        if adopted:
            named = {**all_tags, TAG_RUN_NAME: run_name, **({TAG_NOTE: description} if description else {})}
            run = _reopen_run(adopted, named, log_system_metrics=system_metrics, keep_ofexp_name=True)
            requested = run.data.params
        else:
            parent_id = parent.info.run_id if parent else launcher.launcher_run_id()
            if parent_id and not parent:
                all_tags[TAG_LAUNCHER] = parent_id
            run = mlflow.start_run(
                run_name=run_name, tags=all_tags, description=description,
                nested=parent is not None, parent_run_id=None if parent else parent_id,
                log_system_metrics=system_metrics,
            )
    try:
        if params and not resume_run_id:
            logged = {k: param_str(v) for k, v in params.items()}
            mlflow.log_params(launcher.params_beside_request(requested, logged))
        yield run
    except BaseException as exc:
        full = store_full_error(exc, run, stage)
        with stops_held(raise_after=False):  # a second Ctrl-C must not leave the run RUNNING
            _record_failure(run.info.run_id, stage, full or exc)
        if full is not None:
            raise full from exc
        raise
    else:
        _end_run("FINISHED")


def store_full_error(exc: BaseException, run: Run, stage: str) -> StoreFullError | None:
    """One line for a write that found its device full, naming the store or folder; None for other errors."""
    if isinstance(exc, OSError) and exc.errno == errno.ENOSPC:
        where = f"the artifact store {run.info.artifact_uri}"
        if exc.filename and not str(exc.filename).startswith(run.info.artifact_uri.removeprefix("file://")):
            where = f"the folder {Path(str(exc.filename)).parent}"  # a temporary file, for one
    elif "database or disk is full" in str(exc):  # SQLite, through SQLAlchemy and MLflow
        where = f"the tracking store {tracking_uri()}"
    else:
        return None
    elsewhere = "point MLFLOW_TRACKING_URI at a store with room" if "tracking" in where else \
        "give the experiment another artifact location"
    return StoreFullError(f"no space left on the device of {where} ({stage} run {run.info.run_id}); free space "
                          f"there, or {elsewhere}, and run the step again; the run is marked FAILED")


def _record_failure(run_id: str, stage: str, exc: BaseException) -> None:
    """Mark the active run FAILED (KILLED for Ctrl-C) with its reason; if the server is gone, say so.

    Marking needs the server. When it no longer answers, the run stays RUNNING there, and
    this raises a TrackingServerError that names the run and how to pick it up again.
    """
    uri = tracking_uri()
    if server.is_remote(uri) and not server.server_answers(uri):
        server.forget_active_run()
        if isinstance(exc, TrackingServerError):
            return  # a nested run already said it
        pick_up = (f"`ofexp runs --stale` lists it and `ofexp train --resume {run_id}` continues it"
                   if stage == "train" else "re-run this step")
        raise TrackingServerError(
            f"lost the tracking server {uri} during {stage} run {run_id} ({first_line(exc)[:200]}); the run is "
            f"left RUNNING there: once the server is back, {pick_up}") from exc
    status = "KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED"
    try:
        mlflow.set_tag(TAG_FAILURE, first_line(exc) or type(exc).__name__)
    finally:
        _end_run(status)


def _end_run(status: str) -> None:
    # MLflow prints "View run ... at: URL" on stdout when it ends a run on a server;
    # ofexp's stdout carries only run IDs, so the links go to stderr with the progress.
    with redirect_stdout(sys.stderr):
        mlflow.end_run(status)


def active_run_id() -> str:
    """The ID of the run the current step logs into."""
    return mlflow.active_run().info.run_id


def set_description(text: str) -> None:
    """Replace the active run's description (the note shown in the UI)."""
    mlflow.set_tag(TAG_NOTE, text)


def param_flag(text: str | None, default: bool = False) -> bool:
    """An on/off param or tag read back (older runs wrote True/False)."""
    return default if text is None else text.strip().lower() == "true"


def same_param(logged: str | None, expected: str) -> bool:
    """Whether a logged param reads as `expected` (param_str's form), allowing the older True/False."""
    if logged is None:
        return False
    return logged == expected or (expected in ("true", "false") and logged.lower() == expected)


def store_error(exc: BaseException) -> OfexpError:
    """The one-line ofexp error for a failed tracking-store call (credentials, permissions,
    an unreachable server, a full disk), as every module that talks to the store raises it."""
    status = exc.get_http_status_code() if isinstance(exc, MlflowException) else None
    if status == 401:
        return TrackingServerError(
            f"the tracking server {tracking_uri()} refused the credentials (HTTP 401); set "
            "MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD to a user of that server")
    if status == 403:
        user = os.environ.get("MLFLOW_TRACKING_USERNAME") or "(none)"
        experiment = os.environ.get("MLFLOW_EXPERIMENT_NAME") or mlflow_active_experiment_name()
        on = f" on experiment {experiment!r}" if experiment else ""
        return TrackingServerError(
            f"user {user} lacks permission{on} on the tracking server {tracking_uri()} (HTTP 403: it may read, "
            "not write); ask its admin for EDIT permission, or set MLFLOW_TRACKING_USERNAME/"
            "MLFLOW_TRACKING_PASSWORD to another user")
    return OfexpError(f"cannot use the tracking store {tracking_uri()}: {first_line(exc)}; "
                      "check MLFLOW_TRACKING_URI and that the server is running")


def mlflow_active_experiment_name() -> str | None:
    """The name of the experiment ofexp selected, if any (no request is made when none is)."""
    from mlflow.tracking import fluent

    experiment_id = fluent._active_experiment_id
    if not experiment_id:
        return None
    try:
        return mlflow.MlflowClient().get_experiment(experiment_id).name
    except MlflowException:
        return None


def describe_tracking_error(exc: BaseException) -> str | None:
    """One line for an MLflow error a user can fix (credentials, permissions), else None.

    Requests inside a run (log_param, log_metric, set_terminated...) raise MLflow's own
    errors; a read-only user's first write used to end in a raw `403 != 200 ...`.
    """
    status = exc.get_http_status_code() if isinstance(exc, MlflowException) else None
    return str(store_error(exc)) if status in (401, 403) else None


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message, for one-line errors."""
    text = str(exc).strip()
    return text.splitlines()[0][:500] if text else ""


def log_metrics(metrics: Mapping[str, float], step: int | None = None, model_id: str | None = None,
                run_id: str | None = None) -> None:
    """Log a batch of metrics in one call (one request to a server) to the active run, or to
    `run_id` (needed from another thread: MLflow's active run is thread-local)."""
    values = {k: float(v) for k, v in metrics.items()}
    if run_id is None:
        mlflow.log_metrics(values, step=step, model_id=model_id)
        return
    # straight to log_batch: mlflow.log_metrics(run_id=...) first fetches the whole run (a 2nd request)
    now = int(time.time() * 1000)
    batch = [mlflow.entities.Metric(k, v, now, step or 0, model_id=model_id) for k, v in values.items()]
    mlflow.MlflowClient().log_batch(run_id, metrics=batch)


def log_text(text: str, artifact_file: str) -> None:
    mlflow.log_text(text, artifact_file)


def set_tags(tags: Mapping[str, str]) -> None:
    mlflow.set_tags(dict(tags))


_MAX_TAG_CHARS = 1000


def warning_tag(name: str, reason: str) -> tuple[str, str]:
    """The (key, value) of a warning tag for `name`: one line, at most 1000 characters."""
    line = " ".join(str(reason).split()) or "unknown problem"
    if len(line) > _MAX_TAG_CHARS:
        line = line[: _MAX_TAG_CHARS - 1] + "…"
    return f"{TAG_WARNING_PREFIX}{name}", line


# --- resuming and finding interrupted runs -------------------------------------------------

STALE_AFTER_S = 600.0


def _reopen_run(run_id: str, tags: Mapping[str, str] | None, log_system_metrics: bool = False,
                keep_ofexp_name: bool = False) -> mlflow.ActiveRun:
    """Reopen an existing run (status RUNNING again), update its tags, drop an old failure reason.

    With `keep_ofexp_name`, a run that an ofexp study driver made for this step keeps the name
    the driver gave it: a Slurm step's run carries `ofexp.stage` already; a Kubernetes step's,
    made by MLflow Projects, is nested under the study run.
    """
    existing = mlflow.MlflowClient().get_run(run_id)
    tags = dict(tags or {})
    if keep_ofexp_name and (TAG_STAGE in existing.data.tags or _nested_under_study(existing)):
        tags.pop(TAG_RUN_NAME, None)
    # MLflow refuses to reopen a run outside the process's active experiment (set by an
    # earlier command in a notebook or test), so make the run's own experiment active.
    mlflow.set_experiment(experiment_id=existing.info.experiment_id)
    run = mlflow.start_run(run_id=run_id, tags=tags, log_system_metrics=log_system_metrics)
    try:
        if TAG_FAILURE in run.data.tags:
            mlflow.MlflowClient().delete_tag(run_id, TAG_FAILURE)
    except BaseException:
        _end_run("FAILED")
        raise
    return run


def _nested_under_study(run: Run) -> bool:
    parent = run.data.tags.get(TAG_PARENT_RUN)
    if not parent:
        return False
    try:
        return mlflow.MlflowClient().get_run(parent).data.tags.get(TAG_STAGE) == "study"
    except MlflowException:  # a parent deleted since: no study named this run
        return False


def claim_run(run: Run) -> None:
    """Make this process the one owner of `run` (as read before deciding to resume it), or refuse.

    MLflow never lets a logged param change value, and its stores check that atomically.
    Every process that resumes the same state of the run (the same end of its last attempt,
    or the same lost owner) logs the same param `ofexp.claim.<that state>` with a token of
    its own: exactly one succeeds, the others get a ConfigError naming the owner. A later
    attempt (the run ended again) has a new state, so it can be claimed again.
    """
    client = mlflow.MlflowClient()
    run_id = run.info.run_id
    state = f"end{run.info.end_time}" if run.info.end_time else f"pid{run.data.tags.get(TAG_PID, 'unknown')}"
    key = f"{CLAIM_PARAM}{state}"
    token = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:12]}"
    try:
        try:
            client.log_param(run_id, key, token)
            return
        except MlflowException:
            owner = client.get_run(run_id).data.params.get(key)
    except MlflowException as exc:
        raise store_error(exc) from exc
    if owner == token:  # a retried request whose first try went through
        return
    host, pid, _ = (owner or "?:?:?").split(":", 2)
    raise ConfigError(f"run {run_id} is being resumed by process {pid} on {host} (param {key}); only one process "
                      "may resume a run: wait for that one, or stop it and resume again")


def process_tags() -> dict[str, str]:
    """Tags naming this host and process, so a later look can tell whether the run still lives."""
    return {TAG_HOST: socket.gethostname(), TAG_PID: str(os.getpid())}
