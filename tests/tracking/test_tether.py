"""Tethered servers end with the process that started them (ofexp/tracking/tether.py).

The commands here stand in for a server: a process that starts a worker of its own and
runs until stopped. The last test starts a real `mlflow server` through the test suite's
own fixture code, in a Python process that is then SIGKILLed, as a CI timeout kills pytest.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import serves
from ofexp.tracking.tether import group_alive, start_tethered

TESTS = Path(__file__).resolve().parents[1]
# A "server" with a worker: the worker outlives its parent unless its whole group is ended.
SERVER_WITH_WORKER = ("import subprocess, sys, time; "
                      "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); "
                      "print('ready', flush=True); time.sleep(600)")


def _group_size(pgid: int) -> int:
    sizes = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            state, _ppid, pgrp = stat.read_text().rpartition(")")[2].split()[:3]
        except OSError:
            continue
        sizes += int(pgrp) == pgid and state != "Z"
    return sizes


def _wait_until(condition, timeout_s: float) -> float:
    """Seconds until condition() held; AssertionError after timeout_s."""
    start = time.monotonic()
    while not condition():
        assert time.monotonic() - start < timeout_s, f"not within {timeout_s} s"
        time.sleep(0.05)
    return time.monotonic() - start


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="counts a group's processes in /proc (Linux)")
def test_a_sigkilled_starter_takes_the_command_and_its_workers_with_it():
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import subprocess, sys, time
        from ofexp.tracking.tether import start_tethered
        server = start_tethered([sys.executable, "-c", {SERVER_WITH_WORKER!r}], stdout=subprocess.PIPE)
        server.process.stdout.readline()  # 'ready': the worker is started
        print(server.pid, flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True)
    try:
        pgid = int(starter.stdout.readline())
        _wait_until(lambda: _group_size(pgid) == 3, 30)  # tether, "server", worker
        starter.kill()  # SIGKILL: no handler, no cleanup of its own
        starter.wait()
        assert _wait_until(lambda: not group_alive(pgid), 5) < 2
    finally:
        starter.kill()
        if "pgid" in locals():
            _kill(pgid)


def test_stop_ends_a_command_that_ignores_sigterm_after_the_grace_period():
    ignoring = "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"
    server = start_tethered([sys.executable, "-c", ignoring], grace_s=0.5, stdout=subprocess.PIPE)
    try:
        assert server.process.stdout.readline() == b"ready\n"
        start = time.monotonic()
        server.stop()
        assert time.monotonic() - start < 3
        assert not group_alive(server.pid)
    finally:
        server.kill()


def test_a_command_that_ends_by_itself_takes_its_workers_with_it():
    ends = ("import subprocess, sys; "
            "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(600)']); print('ready', flush=True)")
    server = start_tethered([sys.executable, "-c", ends], stdout=subprocess.PIPE)
    try:
        assert server.process.stdout.readline() == b"ready\n"
        _wait_until(lambda: server.poll() is not None, 10)
        assert _wait_until(lambda: not group_alive(server.pid), 5) < 2, "the worker outlived its server"
    finally:
        server.kill()


@pytest.mark.slow
def test_a_sigkilled_pytest_leaves_no_fixture_server(tmp_path):
    """tests/conftest.py's `mlflow server` (as the session fixture starts it) dies with its test process."""
    starter = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(TESTS)!r})
        from conftest import start_mlflow_server
        server = start_mlflow_server(Path({str(tmp_path)!r}))
        print(server.uri, server.process.pid, flush=True)
        time.sleep(600)
        """)], stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
    try:
        uri, pgid = starter.stdout.readline().split()
        assert serves(uri)
        starter.kill()
        starter.wait()
        assert _wait_until(lambda: not serves(uri), 10) < 5, f"{uri} still serves after its test process died"
        _wait_until(lambda: not group_alive(int(pgid)), 5)
    finally:
        starter.kill()
        if "pgid" in locals():
            _kill(int(pgid))


def _pythonpath() -> str:
    return os.pathsep.join(p for p in (str(TESTS.parent), os.environ.get("PYTHONPATH")) if p)


def _kill(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
