"""`ofexp ui` serves the MLflow UI on the store ofexp logs to, and says where to open it."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, run_cli_in_process, serves

BIN = Path(sys.executable).parent


def _experiment_names(url: str) -> set[str]:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search", method="POST",
                                     data=json.dumps({"max_results": 100}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {e["name"] for e in json.load(response)["experiments"]}


def _start_ui(root: Path, port: int) -> tuple[subprocess.Popen, Path]:
    """`ofexp ui --port PORT` in `root`, on its ./mlflow.db; stderr goes to root/ui.err."""
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    log = root / "ui.err"
    with open(log, "w") as stderr:
        process = subprocess.Popen([str(BIN / "ofexp"), "ui", "--port", str(port)], cwd=root, env=env,
                                   stdout=subprocess.PIPE, stderr=stderr, text=True, start_new_session=True)
    return process, log


def _link_once_served(process: subprocess.Popen, log: Path, url: str, timeout: float = 300) -> str:
    """Wait for the printed link; the page must answer the moment it is printed."""
    deadline = time.monotonic() + timeout
    while "open http" not in log.read_text():
        assert process.poll() is None, f"ofexp ui ended: {log.read_text()}"
        assert time.monotonic() < deadline, f"no link within {timeout} s: {log.read_text()}"
        time.sleep(0.05)
    with urllib.request.urlopen(f"{url}/", timeout=5) as page:  # within 50 ms of the link
        assert "ofexp ui: model-training mode" in page.read().decode()
    return log.read_text()


def _stop(process: subprocess.Popen, signum: int) -> float:
    """Send `signum` to `ofexp ui` alone (as `kill` or Ctrl-C would); seconds until it exited."""
    start = time.monotonic()
    process.send_signal(signum)
    process.wait(timeout=60)
    return time.monotonic() - start


def _kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "Ctrl-C"])
def test_ui_serves_the_store_ofexp_uses_once_it_says_so_quietly_and_stops_within_2_s(tmp_path, signum):
    """Without MLFLOW_TRACKING_URI, ofexp's store is ./mlflow.db, and that is what the UI opens.

    Its stderr holds ofexp's own lines only: no deprecation warnings, no INFO lines.
    (With MLFLOW_TRACKING_URI set, `ofexp ui` reads the same variable through MLflow.)
    """
    import mlflow

    # An experiment only this store holds, so the UI's answer proves which store it opened.
    mlflow.MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}").create_experiment("only-here")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process, log = _start_ui(tmp_path, port)
    try:
        _link_once_served(process, log, url)
        assert "only-here" in _experiment_names(url)
        seconds = _stop(process, signum)
        assert seconds < 2, f"ofexp ui took {seconds:.1f} s to stop"
        assert process.returncode == (128 + signal.SIGTERM if signum == signal.SIGTERM else 130), log.read_text()
        assert not serves(url), "the MLflow UI is still serving after ofexp ui was stopped"
    finally:
        _kill_group(process)
        process.communicate()
    lines = log.read_text().splitlines()
    assert [line.split(" ")[0] for line in lines] == ["starting", "MLflow", "MLflow"], lines
    assert f"open {url}/#/experiments?workflowType=machine_learning" in lines[1]
    assert lines[2] == "MLflow UI stopped"


@pytest.mark.slow
def test_a_sigkilled_ui_takes_its_server_with_it(tmp_path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    process, log = _start_ui(tmp_path, port)
    try:
        _link_once_served(process, log, url)
        process.kill()
        process.wait()
        deadline = time.monotonic() + 5
        while serves(url):
            assert time.monotonic() < deadline, "the MLflow UI still serves 5 s after ofexp ui was SIGKILLed"
            time.sleep(0.1)
    finally:
        _kill_group(process)
        process.communicate()


def test_a_busy_port_is_refused_in_one_line_before_anything_starts(tmp_path, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli_in_process(["ui", "--port", str(port)], f"sqlite:///{tmp_path / 'mlflow.db'}", capsys)
    assert result.returncode != 0
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith(f"error: port {port} is already in use"), result.stderr
    assert "--port" in result.stderr


def test_ui_on_a_tracking_server_points_at_it(capsys):
    result = run_cli_in_process(["ui"], "http://tracking.example:5000", capsys)
    assert result.returncode == 0
    assert "open http://tracking.example:5000" in result.stdout + result.stderr
