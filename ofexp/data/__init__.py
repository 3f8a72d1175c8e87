"""Data sets as in-memory, normalised tensors split into train / val / test.

    splits = load_dataset(DataConfig(name="digits", image_size=32))
    splits.train_x  # [n_train, 1, 32, 32] float32
"""

from __future__ import annotations

from ofexp.data import registry
from ofexp.data.dataset import Dataset
from ofexp.data.splits import DataConfig, DatasetInfo, DataSplits
from ofexp.errors import DataError


def load_dataset(cfg: DataConfig) -> DataSplits:
    """Load cfg.name, decode it once, hold out cfg.val_fraction of train as val, and normalise.

    Data that a run recorded (`cfg.recorded_by`) is never downloaded; when it is not where
    the run says, the error names the run instead of offering a download.
    """
    if cfg.recorded_by is None:
        return _load(cfg)
    try:
        return _load(cfg)
    except DataError as err:
        problem = str(err).split("; ")[0]  # loaders' messages are "<problem>; <fix>"
        raise DataError(f"{problem}; that is where {cfg.recorded_by} recorded its data, and ofexp never downloads "
                        "data a run names: put the data back there, or work on the machine that has it") from None


def _load(cfg: DataConfig) -> DataSplits:
    return cfg.dataset.load(cfg)


def __getattr__(name: str):
    # DATASETS is read from the registry on first use, so that a module added to
    # registry.MODULES before then is one of the choices
    if name == "DATASETS":
        return registry.names()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["DATASETS", "Dataset", "DataConfig", "DatasetInfo", "DataSplits", "load_dataset"]
