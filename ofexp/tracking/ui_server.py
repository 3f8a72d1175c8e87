"""`ofexp ui`'s server: the MLflow UI on ofexp's store, announced once it answers, ended with ofexp.

`mlflow ui` took 18-34 s to serve after ofexp printed its link, printed deprecation
warnings and INFO lines, took 13-20 s to stop, exited 0 after its own "Address already
in use", and kept serving when `ofexp ui` was SIGKILLed. Here the server is one process
(ui_app.py: uvicorn with one worker) started under a tether (tether.py), so that it ends
with `ofexp ui` however that ends; a busy port is refused before anything starts; the
link is printed once the server answers; the server's own output goes to a log file that
is shown only when it fails, unless `--verbose` asks for it.
"""
from __future__ import annotations

import errno
import os
import socket
import sys
import tempfile
from pathlib import Path
from typing import Callable

from ofexp.errors import ConfigError, TrackingServerError
from ofexp.tracking.server import wait_until_answering
from ofexp.tracking.tether import start_tethered

UI_APP = Path(__file__).with_name("ui_app.py")
HOST = "127.0.0.1"  # as `mlflow ui`: this machine only
START_TIMEOUT_S = 300.0  # a first start creates the store's tables: minutes on a loaded machine


def check_port_free(port: int, host: str = HOST) -> None:
    """ConfigError naming the port unless a server could listen on it now."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind((host, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise ConfigError(f"port {port} is already in use (another MLflow UI?); pass --port with a "
                                  f"free one, e.g. `ofexp ui --port {free_port_after(port, host)}`") from None
            raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror}); pass --port with another "
                              "port (1024-65535)") from None


def free_port_after(port: int, host: str = HOST) -> int:
    """The first port above `port` that is free now (a suggestion, not a reservation)."""
    for candidate in range(port + 1, min(port + 100, 65536)):
        with socket.socket() as probe:
            try:
                probe.bind((host, candidate))
                return candidate
            except OSError:
                continue
    return port + 1


def run_ui(store: str, port: int, metric_keys: list[str], verbose: bool, on_ready: Callable[[], None]) -> None:
    """Serve the UI for `store` on `port` until this process is stopped (KeyboardInterrupt or
    ofexp's Terminated, which end the server first); TrackingServerError if the server ends."""
    check_port_free(port)
    command = [sys.executable, str(UI_APP), "--store", store, "--host", HOST, "--port", str(port),
               *(arg for key in metric_keys for arg in ("--metric", key)), *(["--verbose"] if verbose else [])]
    env = {**os.environ} if verbose else {**os.environ, "PYTHONWARNINGS": "ignore"}
    with tempfile.TemporaryFile() as log:
        output = {} if verbose else {"stdout": log, "stderr": log}
        server = start_tethered(command, env=env, **output)
        try:
            wait_until_answering(f"http://{HOST}:{port}", server, START_TIMEOUT_S, "the MLflow UI server",
                                 lambda: _last_words(log))
            on_ready()
            server.process.wait()
            raise TrackingServerError(f"the MLflow UI server stopped{_last_words(log)}")
        finally:
            server.stop()


def _last_words(log) -> str:
    """': <the last line the server wrote>' from its log (empty with --verbose: it is on screen)."""
    log.flush()
    log.seek(0)
    lines = [line.strip() for line in log.read().decode(errors="replace").splitlines() if line.strip()]
    return f": {lines[-1][:300]} (re-run with --verbose for its whole output)" if lines else ""
