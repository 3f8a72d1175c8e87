"""scikit-learn's bundled 8×8 handwritten digits: a real, offline, 1,797-image data set."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ofexp.data.dataset import Dataset
from ofexp.data.splits import DataConfig, DataSplits, finish_splits, stratified_holdout

TEST_FRACTION = 0.2
# The test split and the val split both derive from split_seed; an offset keeps their
# shuffles from being the same permutation prefix.
TEST_SEED_OFFSET = 1_000_003


def load_digits(cfg: DataConfig) -> DataSplits:
    """Load digits as 1-channel image_size×image_size images with a fixed stratified 80/20 test split."""
    from sklearn.datasets import load_digits as sklearn_load_digits  # only when loading: the registry reads this module

    bunch = sklearn_load_digits()
    x = torch.tensor(bunch.data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # [1797, 1, 8, 8] in [0, 1]
    y = torch.tensor(bunch.target, dtype=torch.int64)  # [1797]
    if cfg.image_size != 8:
        # bilinear weights are convex, so the result stays in [0, 1]
        x = F.interpolate(x, size=(cfg.image_size, cfg.image_size), mode="bilinear", align_corners=False)
    keep, held = stratified_holdout(y, TEST_FRACTION, cfg.split_seed + TEST_SEED_OFFSET)
    return finish_splits(
        cfg,
        x[keep],
        y[keep],
        x[held],
        y[held],
        num_classes=10,
        source="sklearn.datasets.load_digits",
    )


DATASETS = (Dataset("digits", "ships with scikit-learn", load_digits, channels=1, raw_size=8,
                    seed_offset=TEST_SEED_OFFSET),)
