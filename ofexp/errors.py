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


class TrackingServerError(OfexpError):
    """The tracking server does not answer, or stopped answering during a run."""
