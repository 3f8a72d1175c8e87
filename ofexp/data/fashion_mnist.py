"""Fashion-MNIST (Xiao et al. 2017) through torchvision's own `FashionMNIST` class.

ofexp's real benchmark: 60,000 training and 10,000 test images of 28×28 grayscale
clothing, 10 balanced classes. Where the files are looked for, in order
(docs/data.md):

1. `--data-dir` in torchvision's layout (`DATA_DIR/FashionMNIST/raw/<name>`, unpacked);
2. `--data-dir` holding the four original `.gz` files;
3. the Debian/Ubuntu package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`);
4. torchvision's download into `--data-dir` (default ./data), when `--download` is on
   and the machine is online.

The `.gz` files of 2 and 3 are unpacked with torchvision's `extract_archive` into a
temporary folder that is deleted once the images are decoded, so reading them never
writes next to the user's data or into the package's folder.
"""

from __future__ import annotations

import os
import tempfile
import urllib.error
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.datasets import FashionMNIST
from torchvision.datasets.utils import extract_archive

from ofexp.data.splits import DataConfig, DataSplits, finish_splits
from ofexp.errors import DataError

PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = "/usr/share/datasets/fashion-mnist"
GZ_NAMES = tuple(name for name, _md5 in FashionMNIST.resources)  # train-images-idx3-ubyte.gz, ...
RAW_NAMES = tuple(name[: -len(".gz")] for name in GZ_NAMES)
# Images are resized in chunks, so only one chunk is ever both uint8-sized and float at 28×28.
RESIZE_CHUNK = 8192


def _has_all(folder: str, names: tuple[str, ...]) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in names)


def _raw_folder(root: str) -> str:
    return os.path.join(root, FashionMNIST.__name__, "raw")


def _read_both(root: str, download: bool = False) -> tuple[FashionMNIST, FashionMNIST]:
    """torchvision's train and test sets under `root` (its layout), downloading first if asked."""
    train = FashionMNIST(root=root, train=True, download=download)
    return train, FashionMNIST(root=root, train=False, download=False)


def _read_gz_folder(folder: str) -> tuple[FashionMNIST, FashionMNIST]:
    """Read the four original .gz files in `folder` through a throw-away torchvision root."""
    with tempfile.TemporaryDirectory(prefix="ofexp-fashion-mnist-") as root:
        raw = _raw_folder(root)
        os.makedirs(raw)
        for name in GZ_NAMES:
            extract_archive(os.path.join(folder, name), raw)
        return _read_both(root)  # FashionMNIST decodes into memory, so the folder may go


def _source_folders(cfg: DataConfig) -> list[tuple[str, str]]:
    """(kind, folder) candidates in lookup order: 'torchvision' (unpacked) or 'gz' (originals)."""
    found = []
    if cfg.data_dir:
        if _has_all(_raw_folder(cfg.data_dir), RAW_NAMES):
            found.append(("torchvision", cfg.data_dir))
        if _has_all(cfg.data_dir, GZ_NAMES):
            found.append(("gz", cfg.data_dir))
    elif _has_all(_raw_folder(cfg.resolved_data_dir), RAW_NAMES):
        found.append(("torchvision", cfg.resolved_data_dir))  # ./data, as after a download
    if _has_all(PACKAGE_DIR, GZ_NAMES):
        found.append(("gz", PACKAGE_DIR))
    return found


def _missing_error(cfg: DataConfig, reason: str) -> DataError:
    where = cfg.data_dir or cfg.resolved_data_dir
    return DataError(
        f"Fashion-MNIST not found in {where} nor {PACKAGE_DIR}{reason}; install it with "
        f"`apt-get install {PACKAGE}`, or pass --data-dir holding its four .gz files"
    )


def _open(cfg: DataConfig) -> tuple[FashionMNIST, FashionMNIST, str]:
    """The train and test sets and the folder they came from; DataError when nowhere to be had."""
    for kind, folder in _source_folders(cfg):
        try:
            if kind == "torchvision":
                return (*_read_both(folder), os.path.abspath(_raw_folder(folder)))
            return (*_read_gz_folder(folder), os.path.abspath(folder))
        except (RuntimeError, OSError, ValueError, TypeError, AssertionError) as err:
            # torchvision's parser asserts on a truncated or foreign file
            raise DataError(f"cannot read Fashion-MNIST from {folder} ({type(err).__name__}: "
                            f"{str(err).splitlines()[0] if str(err) else 'bad file'}); "
                            f"reinstall {PACKAGE} or replace the files") from None
    if not cfg.download:
        raise _missing_error(cfg, " (downloading is off: --no-download)")
    root = cfg.resolved_data_dir
    try:
        return (*_read_both(root, download=True), os.path.abspath(_raw_folder(root)))
    except (RuntimeError, OSError, urllib.error.URLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _missing_error(cfg, f", and the download failed ({first})") from None


def _decoder(size: int) -> Callable[[Tensor], Tensor]:
    """uint8 images [n, 1, 28, 28] → float [n, 1, size, size] in [0, 1]."""

    def decode(data: Tensor) -> Tensor:
        if size == data.shape[-1]:
            return data.float().div_(255.0)
        out = torch.empty(data.shape[0], 1, size, size)  # [n, 1, size, size]
        for start in range(0, data.shape[0], RESIZE_CHUNK):
            chunk = data[start : start + RESIZE_CHUNK].float().div_(255.0)  # [b, 1, 28, 28]
            # bilinear weights are convex, so values stay in [0, 1]; antialias only matters when shrinking
            out[start : start + RESIZE_CHUNK] = F.interpolate(
                chunk, size=(size, size), mode="bilinear", align_corners=False, antialias=size < data.shape[-1]
            )
        return out

    return decode


def load_fashion_mnist(cfg: DataConfig) -> DataSplits:
    """Load Fashion-MNIST as 1-channel image_size×image_size images, normalised with the training split's stats."""
    train_ds, test_ds, source = _open(cfg)
    # split while the images are uint8 (47 MB), and decode each part once
    return finish_splits(
        cfg, train_ds.data.unsqueeze(1), train_ds.targets.long(), test_ds.data.unsqueeze(1), test_ds.targets.long(),
        num_classes=len(FashionMNIST.classes), source=source, decode=_decoder(cfg.image_size),
    )
