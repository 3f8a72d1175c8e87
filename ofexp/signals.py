"""Stop signals as exceptions in the main thread, delivered where they do no harm.

SIGTERM and SIGHUP (kill, timeout, a scheduler, docker stop) raise `Terminated`, and Ctrl-C
raises KeyboardInterrupt, so that every open run ends KILLED with the reason instead of
being left RUNNING (docs/reliability.md). Python runs a signal handler between any two
bytecodes of the main thread, and two places there need care:

- Tracking-store writes and thread-pool bookkeeping. An exception raised inside them can
  leave a SQLite write transaction open (the write that marks the run KILLED then waits on
  it) or a pool worker unregistered (the interpreter waits for it at exit, forever). A stop
  that lands there is put off until the code is left, for at most STOP_DEFERRAL_S: waiting
  on a future, a lock or the network that long is a real wait, and ending it is safe.
- Finalizers and weakref callbacks, where Python prints and drops a raised exception: the
  stop would be lost and the command would carry on. A stop dropped so is signalled again.

And a stopped console command ends within a grace period, whatever thread is left.
"""
from __future__ import annotations

import os
import signal
import sys
import threading
import time
from contextlib import contextmanager
from typing import Callable, Iterator

from ofexp.errors import Terminated

_DEFERRING_MODULES = ("threading", "queue", "weakref", "concurrent.futures", "sqlite3", "sqlalchemy",
                      "mlflow.store")
STOP_DEFERRAL_S = 2.0
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
_first_deferred: dict[int, float] = {}
_pending: set[int] = set()  # stops signalled again and not raised yet
_holding = 0  # depth of stops_held blocks
_exiting = False  # exit_after_stop was called: the process is ending after a stop
_held: list[int] = []  # stops that arrived inside them


def stop_on_termination_signals() -> Callable[[], None]:
    """Install the stop handlers for SIGTERM, SIGHUP and SIGINT in the main thread; a signal
    that is ignored (SIGHUP under nohup) stays ignored. Returns a function that puts the
    previous handlers (and `sys.unraisablehook`) back."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None  # only the main thread may set handlers (not, e.g., a test's worker thread)
    previous = {signum: signal.signal(signum, _raise_stop) for signum in _STOP_SIGNALS
                if signal.getsignal(signum) is not signal.SIG_IGN}
    previous_hook = sys.unraisablehook

    def signal_dropped_stop_again(unraisable) -> None:
        signum = _stop_signal(unraisable.exc_value)
        if signum is not None and signal.getsignal(signum) is _raise_stop:
            _signal_again(signum, after_s=0.01)
        else:
            previous_hook(unraisable)

    sys.unraisablehook = signal_dropped_stop_again

    def restore() -> None:
        for signum, handler in previous.items():
            if not _exiting:  # after exit_after_stop, further stops stay ignored until the process ends
                signal.signal(signum, handler)
        sys.unraisablehook = previous_hook

    return restore


def exit_after_stop(code: int, grace_s: float = 10.0) -> None:
    """`sys.exit(code)` after a stop, bounded: if the interpreter's shutdown has not ended the
    process `grace_s` later (a thread or a lock the stop left waiting, which it would wait for
    forever), end it with `code` anyway. The runs are marked KILLED by then."""
    def force() -> None:
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os._exit(code)

    # the command has said it stopped and marked its runs: a further Ctrl-C during the interpreter's
    # shutdown would only print a traceback from whatever finalizer it lands in
    global _exiting
    _exiting = True
    for signum in _STOP_SIGNALS:
        if signal.getsignal(signum) is _raise_stop:
            signal.signal(signum, signal.SIG_IGN)
    watchdog = threading.Timer(grace_s, force)
    watchdog.daemon = True  # runs on while the interpreter waits for the other threads
    watchdog.start()
    sys.exit(code)


@contextmanager
def stops_held(*, raise_after: bool = True) -> Iterator[None]:
    """Hold the stops that arrive inside the block until it has run to its end.

    For code a stop must not cut in two: submitting a job and recording it (`raise_after`:
    the stop is raised once the block is done), and the cleanup of a stop already under way
    (`raise_after=False`: cancelling jobs, marking runs KILLED). A second Ctrl-C there used
    to abandon the first one's cleanup; now it waits for it, and adds nothing, since the
    command is already stopping. Main thread only (signal handlers run there).
    """
    global _holding
    if threading.current_thread() is not threading.main_thread():
        yield  # a stop lands in the main thread, never here: nothing to hold
        return
    _holding += 1
    try:
        yield
    finally:
        _holding -= 1
    if _holding == 0 and _held:
        signum = _held[0]
        _held.clear()
        if raise_after:
            _raise_now(signum)


def _raise_stop(signum: int, frame) -> None:
    if _holding:
        _held.append(signum)
        return
    now = time.monotonic()
    if _in_deferring_code(frame) and now - _first_deferred.setdefault(signum, now) < STOP_DEFERRAL_S:
        _signal_again(signum, after_s=0.02)
        return
    _first_deferred.pop(signum, None)
    _raise_now(signum)


def _raise_now(signum: int) -> None:
    _pending.discard(signum)  # a stop is raised once: timers still out for it send nothing
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    raise Terminated(signal.Signals(signum).name, 128 + signum)


def _stop_signal(exc: BaseException | None) -> int | None:
    if isinstance(exc, Terminated):
        return exc.signum
    return signal.SIGINT if type(exc) is KeyboardInterrupt else None


def _in_deferring_code(frame) -> bool:
    """Whether the interrupted `frame` is in code of _DEFERRING_MODULES that ofexp called: the
    frames from it down to the innermost ofexp frame count, ofexp's own callers do not (a
    `--jobs` seed process runs all of ofexp under concurrent.futures)."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == "ofexp" or module.startswith("ofexp."):
            return False
        if any(module == name or module.startswith(name + ".") for name in _DEFERRING_MODULES):
            return True
        frame = frame.f_back
    return False


def _signal_again(signum: int, after_s: float) -> None:
    """Send `signum` to the main thread from another thread, `after_s` later. Sent from the main
    thread, Python would run the handler at once, where it is now."""
    _pending.add(signum)
    main = threading.main_thread().ident

    def resend() -> None:
        if signum in _pending:
            signal.pthread_kill(main, signum)

    timer = threading.Timer(after_s, resend)
    timer.daemon = True
    timer.start()
