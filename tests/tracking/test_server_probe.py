"""The quick probe that tells "no server there" from "a server that answers", without MLflow's retries."""
from __future__ import annotations

import http.server
import threading
import time

import pytest

from conftest import free_port
from ofexp.errors import TrackingServerError
from ofexp.tracking.server import check_server, is_remote, server_answers


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
