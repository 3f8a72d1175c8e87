"""CIFAR-10 and CIFAR-100 through torchvision's own classes, decoded once into tensors."""

from __future__ import annotations

import os
import tarfile
import urllib.error

import torch
from torch import Tensor

from ofexp.data.dataset import DEFAULT_DATA_DIR, Dataset
from ofexp.data.splits import DataConfig, DataSplits, finish_splits
from ofexp.errors import DataError

# torchvision's class per data set, imported when one loads (the registry reads this module).
# A test may put a subclass here that knows its own files' md5s.
CIFAR_CLASSES: dict[str, type] = {}

# docs/design.md §3: the report's published per-dataset normalisation.
CIFAR_STATS = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761)),
}


def _open(cls: type, root: str, train: bool, download: bool):
    """Construct the torchvision data set, turning 'missing' and 'offline' into one-line DataErrors."""
    try:
        return cls(root=root, train=train, download=download)
    # RuntimeError: files missing or failing md5; URLError/OSError: offline; TarError: a cut-off download
    except (RuntimeError, OSError, urllib.error.URLError, tarfile.TarError) as err:
        where = os.path.join(root, cls.base_folder)
        how = f"put {cls.base_folder} under DATA_DIR={root} (--data-dir)"
        if download:
            reason = f"the download failed ({str(err).splitlines()[0] if str(err) else type(err).__name__})"
            raise DataError(f"{where} is missing and {reason}; {how} or go online") from None
        raise DataError(f"{where} is missing or incomplete; {how} or go online and pass --download") from None


def _to_tensors(ds) -> tuple[Tensor, Tensor]:
    """uint8 NHWC numpy images → float [n, 3, 32, 32] in [0, 1], labels → int64 [n]."""
    # reorder while still uint8: the copy is 4× cheaper than on floats
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # [n, 3, 32, 32]
    y = torch.tensor(ds.targets, dtype=torch.int64)  # [n]
    return x, y


def _torchvision_class(name: str) -> type:
    from torchvision.datasets import CIFAR10, CIFAR100

    return {"cifar10": CIFAR10, "cifar100": CIFAR100}[name]


def load_cifar(cfg: DataConfig) -> DataSplits:
    """Load cfg.name ("cifar10" or "cifar100") from cfg.data_dir (default ./data), downloading if allowed."""
    cls = CIFAR_CLASSES.get(cfg.name) or _torchvision_class(cfg.name)
    root = cfg.resolved_data_dir
    train_ds = _open(cls, root, train=True, download=cfg.download)
    # the train call already fetched everything, so the test call never needs the network
    test_ds = _open(cls, root, train=False, download=False)
    train_x, train_y = _to_tensors(train_ds)
    test_x, test_y = _to_tensors(test_ds)
    return finish_splits(
        cfg,
        train_x,
        train_y,
        test_x,
        test_y,
        num_classes=len(train_ds.classes),
        source=os.path.abspath(os.path.join(root, cls.base_folder)),
    )


DATASETS = tuple(
    Dataset(name, "downloads to --data-dir", load_cifar, channels=3, raw_size=32, resized=False,
            stats=CIFAR_STATS[name], default_data_dir=DEFAULT_DATA_DIR, downloads=True)
    for name in ("cifar10", "cifar100")
)
