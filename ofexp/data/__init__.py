"""Data sets as in-memory, normalised tensors split into train / val / test.

    splits = load_dataset(DataConfig(name="digits", image_size=32))
    splits.train_x  # [n_train, 1, 32, 32] float32
"""

from __future__ import annotations

from ofexp.data.splits import DATASETS, DataConfig, DatasetInfo, DataSplits
from ofexp.errors import ConfigError, DataError


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
    # imported here so digits-only users never pay for importing torchvision
    if cfg.name == "digits":
        from ofexp.data.digits import load_digits

        return load_digits(cfg)
    if cfg.name == "fashion_mnist":
        from ofexp.data.fashion_mnist import load_fashion_mnist

        return load_fashion_mnist(cfg)
    if cfg.name in ("cifar10", "cifar100"):
        from ofexp.data.cifar import load_cifar

        return load_cifar(cfg)
    if cfg.name == "imagefolder":
        from ofexp.data.imagefolder import load_imagefolder

        return load_imagefolder(cfg)
    raise ConfigError(f"unknown --dataset {cfg.name!r}; choose one of {', '.join(DATASETS)}")


__all__ = ["DATASETS", "DataConfig", "DatasetInfo", "DataSplits", "load_dataset"]
