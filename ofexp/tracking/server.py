"""Is the tracking server there? A quick probe, so that outages get a clear message, fast.

MLflow itself retries every failed request with exponential backoff
(MLFLOW_HTTP_REQUEST_MAX_RETRIES, MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR; ofexp's CLI sets
7 and 1: sleeps of 1, 2, 4 ... 64 s, about 2 minutes in all), which rides out a server
restart in the middle of a run. These helpers decide what happens around that: refuse
to start against a server that does not answer at all, and, once MLflow has given up,
say which run was left RUNNING instead of waiting minutes more to mark it FAILED.
"""
from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request
from contextlib import redirect_stdout
from typing import Callable, Protocol

import mlflow

from ofexp.errors import TrackingServerError

PROBE_TIMEOUT_S = 5.0


def experiment_page(ui_base: str, experiment_id: str | None) -> str:
    """The MLflow UI page of an experiment's runs table (or of the experiment list).

    MLflow 3's UI opens in its GenAI mode, on an experiment's traces overview, unless the
    address asks for the model-training mode (`workflowType=machine_learning`): ofexp's
    links ask for it, so they land on the runs.
    """
    path = f"experiments/{experiment_id}" if experiment_id else "experiments"
    return f"{ui_base.rstrip('/')}/#/{path}?workflowType=machine_learning"


def is_remote(uri: str) -> bool:
    """Whether `uri` is a tracking server reached over HTTP (not a local file or SQLite store)."""
    return uri.startswith(("http://", "https://"))


def server_answers(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether anything answers HTTP at `uri` (GET /health; any HTTP status counts as an answer)."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # it answered, e.g. 401 behind an auth proxy: MLflow's own call will say more
    except (OSError, ValueError):
        return False


class _Process(Protocol):
    def poll(self) -> int | None: ...


def wait_until_answering(url: str, process: _Process, timeout_s: float, what: str,
                         last_words: Callable[[], str] = lambda: "") -> None:
    """Return once a server just started as `process` answers at `url` (server_answers).

    TrackingServerError "<what> did not start<last_words()>" if `process` ends first, or
    "<what> did not answer <url> within N s" once `timeout_s` has passed.
    """
    deadline = time.monotonic() + timeout_s
    while not server_answers(url, timeout=1.0):
        if process.poll() is not None:
            raise TrackingServerError(f"{what} did not start{last_words()}")
        if time.monotonic() > deadline:
            raise TrackingServerError(f"{what} did not answer {url} within {timeout_s:.0f} s")
        time.sleep(0.1)


def check_server(uri: str, attempts: int = 3, pause_s: float = 1.0) -> None:
    """Raise TrackingServerError naming `uri` unless it answers within `attempts` probes."""
    if not is_remote(uri):
        return
    for attempt in range(attempts):
        if server_answers(uri):
            return
        if attempt + 1 < attempts:
            time.sleep(pause_s)
    raise TrackingServerError(f"the tracking server {uri} does not answer; start it, or point "
                              "MLFLOW_TRACKING_URI at a running server (unset it for a local ./mlflow.db)")


def forget_active_run() -> None:
    """Drop the active run from this process without waiting on an unreachable server.

    `mlflow.end_run` pops the run first and then tells the server; with retries off,
    telling an absent server fails at once, and the run stays RUNNING there.
    """
    saved = os.environ.get("MLFLOW_HTTP_REQUEST_MAX_RETRIES")
    os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = "0"
    try:
        with redirect_stdout(sys.stderr):
            mlflow.end_run("FAILED")
    except Exception:  # noqa: BLE001 - the server is gone; the run is popped all the same
        pass
    finally:
        if saved is None:
            os.environ.pop("MLFLOW_HTTP_REQUEST_MAX_RETRIES", None)
        else:
            os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] = saved
