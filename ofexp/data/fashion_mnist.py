"""Fashion-MNIST (Xiao et al. 2017) through torchvision's own `FashionMNIST` class.

ofexp's real benchmark: 60,000 training and 10,000 test images of 28×28 grayscale
clothing, 10 balanced classes. Where the files are looked for, in order
(docs/commands.md, "Data"):

1. `--data-dir`, used as given: torchvision's layout (`DATA_DIR/FashionMNIST/raw/<name>`,
   unpacked) or the four original `.gz` files, else torchvision's download into it when
   `--download` is on; a file, or a folder holding only some of the files, is refused;
2. without `--data-dir`: ./data in torchvision's layout (after a download), then the
   Debian/Ubuntu package `dataset-fashion-mnist` (`/usr/share/datasets/fashion-mnist`),
   then torchvision's download into ./data when `--download` is on.

Every file is read in memory (nothing is written next to the user's data or into the
package's folder) and checked: its gzip stream, its idx header, its count for its split
(a training file holds 60,000 items, a test file 10,000: swapped files are named), the
image size and the length. A bad file is refused in one line that names it.
"""

from __future__ import annotations

import gzip
import os
import urllib.error
import zlib
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ofexp.data.dataset import DEFAULT_DATA_DIR, Dataset
from ofexp.data.splits import DataConfig, DataSplits, finish_splits
from ofexp.errors import DataError

PACKAGE = "dataset-fashion-mnist"
PACKAGE_DIR = "/usr/share/datasets/fashion-mnist"
# The four files as torchvision's FashionMNIST downloads them (its `resources`, in that order), and
# the folder it keeps them in: written out, so that reading the registry does not import torchvision.
GZ_NAMES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
            "t10k-labels-idx1-ubyte.gz")
TORCHVISION_FOLDER = "FashionMNIST"
NUM_CLASSES = 10
RAW_NAMES = tuple(name[: -len(".gz")] for name in GZ_NAMES)
# Images are resized in chunks, so only one chunk is ever both uint8-sized and float at 28×28.
RESIZE_CHUNK = 8192


@dataclass(frozen=True)
class IdxSet:
    """One split's images [n, 28, 28] uint8 and labels [n] int64, as read from its two idx files."""

    data: Tensor
    targets: Tensor


# idx magic numbers (0x0803: unsigned bytes, 3 dimensions; 0x0801: 1 dimension) and counts per file
_IMAGES, _LABELS = 0x0803, 0x0801
_SPLITS = {True: ("train", 60_000), False: ("t10k", 10_000)}
_SIDE = 28


def _has_all(folder: str, names: tuple[str, ...]) -> bool:
    return all(os.path.isfile(os.path.join(folder, name)) for name in names)


def _raw_folder(root: str) -> str:
    return os.path.join(root, TORCHVISION_FOLDER, "raw")


def _file_error(path: str, problem: str) -> DataError:
    return DataError(f"Fashion-MNIST file {path} {problem}; replace it with the original file "
                     f"(reinstall {PACKAGE}, or download it again)")


def _read_bytes(path: str) -> bytes:
    if not path.endswith(".gz"):
        with open(path, "rb") as f:
            return f.read()
    try:
        with gzip.open(path, "rb") as f:
            return f.read()
    except EOFError:  # click would take an EOFError for Ctrl-D, and the command for interrupted
        raise _file_error(path, "ends before its gzip stream does (a truncated download or copy)") from None
    except gzip.BadGzipFile:
        raise _file_error(path, "is not a gzip file") from None
    except zlib.error as err:
        raise _file_error(path, f"holds a corrupt gzip stream ({err})") from None


def _read_idx(path: str, magic: int, train: bool) -> Tensor:
    """The uint8 array of one idx file, checked: magic, count for its split, image size, length."""
    blob = _read_bytes(path)
    what = "image" if magic == _IMAGES else "label"
    dims = 3 if magic == _IMAGES else 1
    if len(blob) < 4 + 4 * dims or int.from_bytes(blob[:4], "big") != magic:
        raise _file_error(path, f"is not an idx {what} file (its header is not {magic:#06x} with {dims} "
                                f"dimension{'s' if dims > 1 else ''})")
    shape = [int.from_bytes(blob[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims)]
    split, count = _SPLITS[train]
    if shape[0] != count:
        other = "test" if train else "training"
        raise _file_error(path, f"holds {shape[0]:,} {what}s, but the {'training' if train else 'test'} set has "
                                f"{count:,} (is it the {other} set's file?)")
    if dims == 3 and shape[1:] != [_SIDE, _SIDE]:
        raise _file_error(path, f"holds {shape[1]}×{shape[2]} images, not {_SIDE}×{_SIDE}")
    body = blob[4 + 4 * dims:]
    expected = count * (_SIDE * _SIDE if dims == 3 else 1)
    if len(body) != expected:
        raise _file_error(path, f"holds {len(body):,} bytes of {what}s, but its header says {count:,} {what}s "
                                f"({expected:,} bytes)")
    array = torch.frombuffer(bytearray(body), dtype=torch.uint8)
    if dims == 1 and int(array.max()) >= NUM_CLASSES:
        raise _file_error(path, f"holds label {int(array.max())}, but Fashion-MNIST's labels are 0-9")
    return array.view(*shape)


def _read_split(folder: str, train: bool, suffix: str) -> IdxSet:
    prefix = _SPLITS[train][0]
    images = _read_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{suffix}"), _IMAGES, train)
    labels = _read_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{suffix}"), _LABELS, train)
    return IdxSet(images, labels.long())


def _read_folder(folder: str, suffix: str) -> tuple[IdxSet, IdxSet]:
    """The train and test sets from the four idx files in `folder` (`.gz` or unpacked), each checked."""
    return _read_split(folder, True, suffix), _read_split(folder, False, suffix)


def _read_gz_folder(folder: str) -> tuple[IdxSet, IdxSet]:
    """Read the four original .gz files in `folder`, in memory: nothing is written anywhere."""
    return _read_folder(folder, ".gz")


def _missing_error(cfg: DataConfig, reason: str) -> DataError:
    where = cfg.data_dir or cfg.resolved_data_dir
    also = "" if cfg.data_dir else f" nor {PACKAGE_DIR}"
    return DataError(
        f"Fashion-MNIST not found in {where}{also}{reason}; install it with "
        f"`apt-get install {PACKAGE}`, or pass --data-dir holding its four .gz files"
    )


def _download(cfg: DataConfig) -> tuple[IdxSet, IdxSet, str]:
    from torchvision.datasets import FashionMNIST

    root = cfg.resolved_data_dir
    try:
        FashionMNIST(root=root, train=True, download=True)
    except (RuntimeError, OSError, urllib.error.URLError) as err:
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise _missing_error(cfg, f", and the download failed ({first})") from None
    return (*_read_folder(_raw_folder(root), ""), os.path.abspath(_raw_folder(root)))


def _from_data_dir(cfg: DataConfig) -> tuple[IdxSet, IdxSet, str]:
    """--data-dir used as given: its files, a download into it, or a refusal; never another folder."""
    folder = cfg.data_dir
    if os.path.exists(folder) and not os.path.isdir(folder):
        raise DataError(f"--data-dir {folder} is a file, not a folder; pass the folder that holds "
                        f"Fashion-MNIST's four .gz files ({', '.join(GZ_NAMES)})")
    for where, names, suffix in ((_raw_folder(folder), RAW_NAMES, ""), (folder, GZ_NAMES, ".gz")):
        missing = [name for name in names if not os.path.isfile(os.path.join(where, name))]
        if not missing:
            return (*_read_folder(where, suffix), os.path.abspath(where))
        if len(missing) < len(names):
            more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
            raise DataError(f"--data-dir {folder} holds {len(names) - len(missing)} of Fashion-MNIST's "
                            f"{len(names)} files: {os.path.join(where, missing[0])} is missing{more}; put all "
                            f"{len(names)} there, or drop --data-dir")
    if not cfg.download:
        raise _missing_error(cfg, " (downloading is off: --no-download)")
    return _download(cfg)


def _open(cfg: DataConfig) -> tuple[IdxSet, IdxSet, str]:
    """The train and test sets and the folder they came from; DataError when nowhere to be had."""
    if cfg.data_dir:
        return _from_data_dir(cfg)
    local = _raw_folder(cfg.resolved_data_dir)
    if _has_all(local, RAW_NAMES):  # ./data, as after a download
        return (*_read_folder(local, ""), os.path.abspath(local))
    if _has_all(PACKAGE_DIR, GZ_NAMES):
        return (*_read_gz_folder(PACKAGE_DIR), PACKAGE_DIR)
    if not cfg.download:
        raise _missing_error(cfg, " (downloading is off: --no-download)")
    return _download(cfg)


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
        num_classes=NUM_CLASSES, source=source, decode=_decoder(cfg.image_size),
    )


DATASETS = (Dataset("fashion_mnist", f"Debian's {PACKAGE}, else a download", load_fashion_mnist, channels=1,
                    raw_size=28, default_data_dir=DEFAULT_DATA_DIR, downloads=True),)
