"""A folder of class sub-folders of images (torchvision's ImageFolder layout), decoded once."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ofexp.data.dataset import Dataset
from ofexp.data.splits import DataConfig, DataSplits, finish_splits, stratified_holdout
from ofexp.errors import DataError

if TYPE_CHECKING:
    from torchvision.datasets import ImageFolder

TEST_FRACTION = 0.2
TEST_SEED_OFFSET = 1_000_003  # same reason as in digits: keep the test and val shuffles apart


def _scan(root: str) -> ImageFolder:
    """List the images under root, as a DataError when there are none to list."""
    # imported here: torchvision (about 1 s, with torch._dynamo) is for the steps that read images,
    # not for every process that reads the data set registry
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(root)
    except (FileNotFoundError, ValueError) as err:
        detail = str(err).split(". Supported")[0]  # torchvision appends its whole extension list
        detail = detail if len(detail) <= 160 else detail[:157] + "..."
        raise DataError(
            f"no images found under {root} ({detail}); put .png/.jpg images in one sub-folder per class"
        ) from None


def _decode(ds: ImageFolder, size: int) -> Tensor:
    """Decode every image to RGB size×size → float [n, 3, size, size] in [0, 1]."""
    out = torch.empty(len(ds.samples), size, size, 3, dtype=torch.uint8)  # [n, H, W, 3]
    for i, (path, _) in enumerate(ds.samples):
        try:
            img = ds.loader(path).convert("RGB")  # grey or palette images become 3-channel
        except OSError as err:
            raise DataError(f"cannot read image {path} ({err}); delete or replace the file") from None
        img = img.resize((size, size), Image.Resampling.BILINEAR)
        out[i] = torch.from_numpy(np.asarray(img, dtype=np.uint8).copy())
    return out.permute(0, 3, 1, 2).contiguous().float().div_(255.0)  # [n, 3, H, W]


def _labels(ds: ImageFolder, class_to_idx: dict[str, int]) -> Tensor:
    """Labels [n] in the training set's class numbering, whatever subset of classes ds has."""
    names = ds.classes
    return torch.tensor([class_to_idx[names[t]] for t in ds.targets], dtype=torch.int64)


def load_imagefolder(cfg: DataConfig) -> DataSplits:
    """Load cfg.data_dir: use its train/ and test/ sub-folders if both exist, else hold out 20% as test."""
    root = cfg.data_dir
    if not root or not os.path.isdir(root):
        raise DataError(
            f"image folder {root} does not exist; point --data-dir at a folder of class sub-folders"
        )
    train_dir, test_dir = os.path.join(root, "train"), os.path.join(root, "test")
    has_split = os.path.isdir(train_dir) and os.path.isdir(test_dir)
    train_ds = _scan(train_dir if has_split else root)
    if len(train_ds.classes) < 2:
        raise DataError(
            f"{train_ds.root} has {len(train_ds.classes)} class folder(s); classification needs at least 2"
        )
    x = _decode(train_ds, cfg.image_size)
    y = _labels(train_ds, train_ds.class_to_idx)
    if has_split:
        test_ds = _scan(test_dir)
        unknown = sorted(set(test_ds.classes) - set(train_ds.classes))
        if unknown:
            raise DataError(f"{test_dir} has classes missing from {train_dir}: {unknown}; add them to train/")
        test_x, test_y = _decode(test_ds, cfg.image_size), _labels(test_ds, train_ds.class_to_idx)
    else:
        keep, held = stratified_holdout(y, TEST_FRACTION, cfg.split_seed + TEST_SEED_OFFSET)
        x, y, test_x, test_y = x[keep], y[keep], x[held], y[held]
    return finish_splits(
        cfg,
        x,
        y,
        test_x,
        test_y,
        num_classes=len(train_ds.classes),
        source=os.path.abspath(root),
    )


DATASETS = (Dataset("imagefolder", "your images, one sub-folder per class", load_imagefolder, channels=3,
                    raw_size=None, data_dir_holds="a folder of class sub-folders", seed_offset=TEST_SEED_OFFSET),)
