"""Errors a user can fix. The CLI prints them as one line, without a traceback."""

import signal
import threading


class OfexpError(Exception):
    """Base class: the message names the problem and the fix, on one line."""


class ConfigError(OfexpError, ValueError):
    """A bad option value or an inconsistent combination of options."""


class DataError(OfexpError):
    """A data set that cannot be found, read or downloaded."""


class RunLookupError(OfexpError):
    """A run ID that does not exist, is deleted, or is of the wrong stage."""


class ArtifactError(OfexpError):
    """An artifact that is missing, corrupt or unsafe to load."""


class IncompatibleModelsError(OfexpError):
    """Models that cannot be fused or compared (different specs or datasets)."""


class TrainingDivergedError(OfexpError):
    """Training produced a non-finite loss."""


class NonFiniteWeightsError(ArtifactError):
    """A network with NaN or infinite weights (read from a run, or just fused): whatever it
    computed would be logged as if it were a result."""


class TrackingServerError(OfexpError):
    """The tracking server does not answer, or stopped answering during a run."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (kill, timeout, a scheduler, docker stop): the CLI raises it in the main
    thread, so that every open run ends KILLED with this reason, as for Ctrl-C."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.exit_code = exit_code


def stop_on_termination_signals() -> dict:
    """Make SIGTERM and SIGHUP raise Terminated in the main thread, as Ctrl-C raises
    KeyboardInterrupt, so that runs end KILLED instead of being left RUNNING. A signal
    that is ignored (SIGHUP under nohup) stays ignored. Returns {signal: the handler it
    replaced}, for putting them back."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers (not, e.g., a test's worker thread)

    def stop(signum, frame):
        raise Terminated(signal.Signals(signum).name, 128 + signum)

    previous = {}
    for signum in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(signum) is not signal.SIG_IGN:
            previous[signum] = signal.signal(signum, stop)
    return previous
