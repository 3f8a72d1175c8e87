"""`ofexp ui`: seconds from the command to a page that answers, and from SIGTERM to a free port (issue #25).

"ours" is `ofexp ui` of this working tree (one uvicorn process under a tether, link printed
once the page answers); the baseline is what `ofexp ui` ran before, `mlflow ui
--backend-store-uri ... --port ...` in its own process group, stopped as ofexp stopped it
(SIGTERM to the group). The baseline's start leaves out the ofexp process that printed its
link, so it favours the baseline. Both serve the same SQLite store, whose tables exist
already, alternately, in this same run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.common import Result

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as page:
            return page.status == 200
    except OSError:
        return False


def _cycle(command: list[str], cwd: Path, url: str) -> tuple[float, float]:
    """Start `command`; seconds until `url` answers, then seconds from SIGTERM until it no longer does."""
    env = {**{k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}, "PYTHONPATH": str(ROOT)}
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                               start_new_session=True)
    try:
        while not _answers(url):
            if process.poll() is not None:
                raise RuntimeError(f"{command[:3]} ended before serving")
            time.sleep(0.05)
        started = time.perf_counter() - start
        stop = time.perf_counter()
        os.killpg(process.pid, signal.SIGTERM)  # `ofexp ui` gets it as from `kill`; `mlflow ui` as ofexp sent it
        process.wait(timeout=120)
        while _answers(url):
            time.sleep(0.02)
        return started, time.perf_counter() - stop
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait()


def run(quick: bool, repeats: int) -> list[Result]:
    import mlflow

    repeats = 1 if quick else repeats
    starts: dict[str, list[float]] = {"ours": [], "base": []}
    stops: dict[str, list[float]] = {"ours": [], "base": []}
    with tempfile.TemporaryDirectory(prefix="ofexp-bench-ui-") as tmp:
        store = f"sqlite:///{Path(tmp) / 'mlflow.db'}"
        mlflow.MlflowClient(store).create_experiment("ofexp")  # both start on a store with its tables
        for _ in range(repeats):
            port = _free_port()
            url = f"http://127.0.0.1:{port}/"
            for side, command in (("ours", [sys.executable, "-m", "ofexp", "ui", "--port", str(port)]),
                                  ("base", [str(BIN / "mlflow"), "ui", "--backend-store-uri", store,
                                            "--port", str(port)])):
                started, stopped = _cycle(command, Path(tmp), url)
                starts[side].append(started)
                stops[side].append(stopped)
    start = Result("ui: command to a page that answers", "ofexp ui (one process)", "mlflow ui (4 workers)",
                   starts["ours"], starts["base"])
    stop = Result("ui: SIGTERM to a free port", "ofexp ui (tethered group)", "mlflow ui (its group)",
                  stops["ours"], stops["base"], target="ours <= 2 s")
    stop.passed = stop.ours_median <= 2
    return [start, stop]
