"""The quick probe that tells "no server there" from "a server that answers", without MLflow's retries."""
from __future__ import annotations

import http.server
import subprocess
import sys
import threading
import time

import pytest

from conftest import free_port
from ofexp.errors import TrackingServerError
from ofexp.tracking.server import check_server, is_remote, server_answers, wait_until_answering


class _Refuses(http.server.BaseHTTPRequestHandler):
    """Answers every request 401, like a basic-auth server without credentials."""

    def do_GET(self):  # noqa: N802 - http.server's naming
        self.send_response(401)
        self.end_headers()

    def log_message(self, *args):  # keep the test output clean
        pass


@pytest.fixture
def answering_uri():
    server = http.server.HTTPServer(("127.0.0.1", 0), _Refuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_any_http_answer_counts_as_a_server(answering_uri):
    assert server_answers(answering_uri)
    check_server(answering_uri)  # no error: MLflow's own call will report the 401


def test_no_server_is_one_clear_error_naming_the_uri_within_seconds():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    assert not server_answers(uri)
    start = time.monotonic()
    with pytest.raises(TrackingServerError, match=uri.replace(".", r"\.")) as error:
        check_server(uri, attempts=2, pause_s=0.1)
    assert time.monotonic() - start < 15
    assert "\n" not in str(error.value) and "MLFLOW_TRACKING_URI" in str(error.value)


def test_local_stores_are_not_probed():
    assert not is_remote("sqlite:///mlflow.db") and not is_remote("file:///tmp/mlruns")
    check_server("sqlite:///nowhere/mlflow.db")  # nothing to reach: no error


def _python(code: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code])


def test_waiting_for_a_started_server_returns_once_it_answers(answering_uri):
    process = _python("import time; time.sleep(60)")  # stands for the server's process: still running
    try:
        start = time.monotonic()
        wait_until_answering(answering_uri, process, 30, "the test server")
        assert time.monotonic() - start < 5
    finally:
        process.kill()
        process.wait()


def test_a_server_that_exits_before_answering_is_one_error_with_its_last_words():
    uri = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    process = _python("raise SystemExit(3)")
    start = time.monotonic()
    with pytest.raises(TrackingServerError) as error:
        wait_until_answering(uri, process, 60, "the test server", lambda: f" (exit code {process.returncode})")
    assert str(error.value) == "the test server did not start (exit code 3)"
    assert time.monotonic() - start < 30  # not the whole 60 s: the exit is noticed


def test_a_running_server_that_never_answers_is_an_error_naming_the_address_after_the_timeout():
    uri = f"http://127.0.0.1:{free_port()}"
    process = _python("import time; time.sleep(60)")
    try:
        start = time.monotonic()
        with pytest.raises(TrackingServerError, match=f"the test server did not answer {uri} within 1 s"):
            wait_until_answering(uri, process, 1, "the test server")
        assert 1 <= time.monotonic() - start < 15
    finally:
        process.kill()
        process.wait()
