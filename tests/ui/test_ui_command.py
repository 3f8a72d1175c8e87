"""`ofexp ui` serves the MLflow UI on the store ofexp logs to, and says where to open it."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port, run_cli_in_process, wait_for_health

BIN = Path(sys.executable).parent


def _experiment_names(url: str) -> set[str]:
    request = urllib.request.Request(f"{url}/api/2.0/mlflow/experiments/search", method="POST",
                                     data=json.dumps({"max_results": 100}).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return {e["name"] for e in json.load(response)["experiments"]}


def _serving(url: str) -> bool:
    try:
        urllib.request.urlopen(f"{url}/health", timeout=5).close()
        return True
    except OSError:
        return False


@pytest.mark.slow
def test_ui_serves_the_store_ofexp_uses(tmp_path):
    """Without MLFLOW_TRACKING_URI, ofexp's store is ./mlflow.db, and that is what the UI opens.

    (With MLFLOW_TRACKING_URI set, `ofexp ui` reads the same variable through
    MLflow; one UI start costs 30-90 s here, so only the default is started.)
    """
    import mlflow

    store = "default"
    db = tmp_path / "mlflow.db"
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "MLFLOW_RUN_ID")}
    # An experiment only this store holds, so the UI's answer proves which store it opened.
    mlflow.MlflowClient(f"sqlite:///{db}").create_experiment(f"only-here-{store}")

    port = free_port()
    process = subprocess.Popen([str(BIN / "ofexp"), "ui", "--port", str(port)], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_health(url, process, what="ofexp ui")
        assert f"only-here-{store}" in _experiment_names(url)
        # SIGTERM to `ofexp ui` alone (as `kill` sends it) stops the server and all its workers
        process.send_signal(signal.SIGTERM)
        _, stderr = process.communicate(timeout=60)
        assert process.returncode == 128 + signal.SIGTERM, stderr
        assert not _serving(url), "the MLflow UI is still serving after ofexp ui was stopped"
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.communicate()
    assert f"open {url}" in stderr, stderr


def test_ui_on_a_tracking_server_points_at_it(capsys):
    result = run_cli_in_process(["ui"], "http://tracking.example:5000", capsys)
    assert result.returncode == 0
    assert "open http://tracking.example:5000" in result.stdout + result.stderr
