"""A stop signal is never lost and never hangs the process: SIGTERM and Ctrl-C raise in the
main thread even when Python runs their handler inside a finalizer (where a raised exception
is dropped) or inside thread-pool code (where it could leave a worker the interpreter waits
for at exit), and a stopped process ends even if a thread would keep it alive.

In-process: the handlers ofexp's CLI installs (`stop_on_termination_signals`), signals sent
to the main thread at those places, and the code after them.
"""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import weakref

import pytest

from ofexp.errors import Terminated
from ofexp.signals import exit_after_stop, stop_on_termination_signals


# --- a stop that lands in a finalizer --------------------------------------------------------

class _Finalized:
    pass


def _signal_inside_a_finalizer(signum: int) -> None:
    """Delete an object whose weakref callback receives `signum`, so Python runs the handler
    inside the callback, where an exception is printed and dropped."""
    def callback():
        signal.raise_signal(signum)
        for _ in range(1000):  # bytecodes for the handler to run on, still inside the callback
            pass

    obj = _Finalized()
    weakref.finalize(obj, callback)
    del obj


def _carry_on() -> None:
    time.sleep(30)  # the command's next work: a stop interrupts it within milliseconds


def test_a_sigterm_that_lands_in_a_finalizer_still_stops_the_command(capsys):
    restore = stop_on_termination_signals()
    try:
        with pytest.raises(Terminated) as stopped:
            _signal_inside_a_finalizer(signal.SIGTERM)
            _carry_on()  # without the re-raise the command would carry on here, and finish
    finally:
        restore()
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    assert "Traceback" not in capsys.readouterr().err  # the dropped one is not printed either


def test_a_ctrl_c_that_lands_in_a_finalizer_still_stops_the_command():
    restore = stop_on_termination_signals()
    try:
        with pytest.raises(KeyboardInterrupt):
            _signal_inside_a_finalizer(signal.SIGINT)
            _carry_on()
    finally:
        restore()


def test_restoring_puts_back_the_handlers_and_the_unraisable_hook():
    before = (signal.getsignal(signal.SIGTERM), sys.unraisablehook)
    stop_on_termination_signals()()
    assert (signal.getsignal(signal.SIGTERM), sys.unraisablehook) == before


# --- a stop that lands in thread-pool machinery -------------------------------------------------

def _send_later(signum: int, after_s: float) -> None:
    timer = threading.Timer(after_s, signal.pthread_kill, (threading.main_thread().ident, signum))
    timer.daemon = True
    timer.start()


def test_a_sigterm_inside_threading_code_is_raised_once_the_code_is_left():
    # raised inside threading's or concurrent.futures' code, it could leave a pool's worker
    # unregistered, for the interpreter to wait on forever at exit
    restore = stop_on_termination_signals()
    left_the_wait = False
    try:
        with pytest.raises(Terminated):
            _send_later(signal.SIGTERM, 0.1)
            threading.Event().wait(0.5)  # shorter than the deferral bound: it ends undisturbed
            left_the_wait = True
            _carry_on()
    finally:
        restore()
    assert left_the_wait


def test_a_sigterm_still_ends_a_long_wait_inside_threading_code():
    restore = stop_on_termination_signals()
    start = time.monotonic()
    try:
        with pytest.raises(Terminated):
            _send_later(signal.SIGTERM, 0.1)
            threading.Event().wait(60)  # a driver waiting on its workers must still be stoppable
    finally:
        restore()
    assert time.monotonic() - start < 30


def test_the_process_ends_after_a_stop_even_if_a_thread_would_keep_it_alive(tmp_path):
    script = tmp_path / "stopped.py"
    script.write_text(
        "import threading, time\n"
        "from ofexp.signals import exit_after_stop\n"
        "threading.Thread(target=time.sleep, args=(3600,)).start()  # the interpreter waits for it at exit\n"
        "print('stopping', flush=True)\n"
        "exit_after_stop(143, grace_s=1)\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stdout) == (143, "stopping\n"), done.stderr
