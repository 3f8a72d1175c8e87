"""A stop signal is never lost and never hangs the process: SIGTERM and Ctrl-C raise in the
main thread even when Python runs their handler inside a finalizer (where a raised exception
is dropped) or inside thread-pool code (where it could leave a worker the interpreter waits
for at exit), and a stopped process ends even if a thread would keep it alive.

Each case is a small script in a fresh interpreter: the handlers ofexp's CLI installs
(`stop_on_termination_signals`), a signal sent to the main thread at one such place, and
what the code after it saw. A fresh process keeps a stray signal away from pytest's.
"""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRELUDE = """
import signal, sys, threading, time, weakref
from ofexp.errors import Terminated
from ofexp.signals import exit_after_stop, stop_on_termination_signals

def send_later(signum, after_s):
    timer = threading.Timer(after_s, signal.pthread_kill, (threading.main_thread().ident, signum))
    timer.daemon = True
    timer.start()

def receive_now(signum):  # in a finalizer: the handler runs here, inside it
    signal.raise_signal(signum)
    for _ in range(1000):
        pass

class Finalized:
    def __init__(self, signum):
        self.signum = signum
    def __del__(self):
        receive_now(self.signum)

stop_on_termination_signals()
"""


def _run(script: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", PRELUDE + textwrap.dedent(script)], capture_output=True,
                          text=True, timeout=timeout)


def _outcome(script: str) -> tuple[str, str]:
    """(what the script printed, its stderr), after checking that it exited normally."""
    done = _run(script)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip(), done.stderr


# A stop that lands in a finalizer: Python prints and drops an exception raised there.
FINALIZERS = {
    "__del__": "obj = Finalized(SIGNUM); del obj",
    "weakref callback": "obj = type('Plain', (), {})(); weakref.finalize(obj, receive_now, SIGNUM); del obj",
}
STOPS = {"SIGTERM": ("signal.SIGTERM", "Terminated"), "Ctrl-C": ("signal.SIGINT", "KeyboardInterrupt")}


@pytest.mark.parametrize("where", FINALIZERS)
@pytest.mark.parametrize("stop", STOPS)
def test_a_stop_that_lands_in_a_finalizer_still_stops_the_command(stop, where):
    signum, raised = STOPS[stop]
    out, err = _outcome(f"""
        try:
            {FINALIZERS[where].replace("SIGNUM", signum)}
            time.sleep(30)  # the command's next work: without the stop it would carry on here
            print("carried on")
        except BaseException as exc:
            print("stopped by", type(exc).__name__)
        time.sleep(0.5)  # a second, stray delivery would end the process here
        print("one stop")
    """)
    assert out.splitlines() == [f"stopped by {raised}", "one stop"]
    assert "Traceback" not in err  # the dropped one is not printed either


def test_a_sigterm_inside_threading_code_is_raised_once_the_code_is_left():
    # raised inside threading's or concurrent.futures' code, it could leave a pool's worker
    # unregistered, for the interpreter to wait on forever at exit
    out, _ = _outcome("""
        try:
            send_later(signal.SIGTERM, 0.1)
            threading.Event().wait(0.5)  # shorter than the deferral bound: it ends undisturbed
            print("left the wait")
            time.sleep(30)
            print("carried on")
        except Terminated:
            print("stopped")
    """)
    assert out.splitlines() == ["left the wait", "stopped"]


def test_a_sigterm_still_ends_a_long_wait_inside_threading_code():
    out, _ = _outcome("""
        start = time.monotonic()
        try:
            send_later(signal.SIGTERM, 0.1)
            threading.Event().wait(60)  # a driver waiting on its workers must still be stoppable
            print("waited it out")
        except Terminated:
            print(f"stopped after {time.monotonic() - start:.2f}")
    """)
    assert out.startswith("stopped after "), out
    # not before the deferral bound (2 s after the signal at 0.1 s); a loaded machine may add a little
    assert 2.05 <= float(out.split()[-1]) < 10


def test_ofexp_code_called_from_thread_pool_code_is_stopped_at_once():
    # a `--jobs` seed process runs all of ofexp under concurrent.futures: only the code ofexp
    # calls puts a stop off, not ofexp's callers
    out, _ = _outcome("""
        from concurrent.futures import Future
        from concurrent.futures.thread import _WorkItem

        ofexp_code = {"__name__": "ofexp.pipeline.demo", "time": time}
        exec("def step():\\n    time.sleep(30)", ofexp_code)
        work = _WorkItem(Future(), ofexp_code["step"], (), {})  # runs it here, in the main thread
        start = time.monotonic()
        send_later(signal.SIGTERM, 0.1)
        work.run()
        print(type(work.future.exception()).__name__, "deferred" if time.monotonic() - start > 1.5 else "at once")
    """)
    assert out == "Terminated at once"


def test_the_process_ends_after_a_stop_even_if_a_thread_would_keep_it_alive():
    done = _run("""
        threading.Thread(target=time.sleep, args=(3600,)).start()  # the interpreter waits for it at exit
        print("stopping", flush=True)
        exit_after_stop(143, grace_s=1)
    """)
    assert (done.returncode, done.stdout) == (143, "stopping\n"), done.stderr
