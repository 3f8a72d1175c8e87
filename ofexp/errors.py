"""Errors a user can fix. The CLI prints them as one line, without a traceback."""


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


class StoreFullError(OfexpError):
    """The device under a tracking or artifact store (or a folder ofexp writes) has no space left."""


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (kill, timeout, a scheduler, docker stop): raised in the main thread
    (`ofexp.signals`), so that every open run ends KILLED with this reason, as for Ctrl-C."""

    def __init__(self, signal_name: str, exit_code: int) -> None:
        super().__init__(f"stopped by {signal_name}")
        self.exit_code = exit_code
        self.signum = exit_code - 128
