"""Data configuration, the in-memory split container, and the shared split/normalise steps.

Every loader decodes its images once into float tensors in [0, 1]; `finish_splits`
then holds out the validation set and normalises everything, so that the epoch loop
only ever indexes ready tensors.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import Tensor

from ofexp.data import registry
from ofexp.data.dataset import Dataset
from ofexp.errors import ConfigError, DataError
from ofexp.options import SEED, option, option_fields, option_params

STATS_CHUNK = 4096  # images per float64 chunk in channel_stats
STATS_IN_ONE_GO = 1 << 24  # values (128 MB in float64) up to which channel_stats makes one float64 copy


@dataclass(frozen=True)
class DataConfig:
    """Which data set to load, from where, and how to split it: the data options of `ofexp train`,
    `ofexp study` and (through ModelInput) of models given by URI."""

    # the help of the options a data set's entry decides is written from the registry
    name: str = option("digits", registry.dataset_help, choices=registry.names, name="dataset")
    data_dir: str | None = option(None, registry.data_dir_help, type=str)
    val_fraction: float = option(0.1, "Share of the training data held out to pick the best checkpoint.")
    split_seed: int = option(0, "Seed of the train/validation split (shared by all parents).", kind=SEED)
    image_size: int = option(32, registry.image_size_help)
    download: bool = option(True, registry.download_help)
    # who named this location ("run <id>"), when it was read from a run rather than given by the
    # user; such data is read where it is or not at all (the run's spec must not create or fetch)
    recorded_by: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        entry = self.dataset  # ConfigError for an unknown name
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(f"--val-fraction must be in (0, 1), got {self.val_fraction}")
        if self.image_size < 1:
            raise ConfigError(f"--image-size must be ≥ 1, got {self.image_size}")
        if entry.data_dir_holds and not self.data_dir:
            raise ConfigError(f"--dataset {self.name} needs --data-dir pointing at {entry.data_dir_holds}")

    @property
    def dataset(self) -> Dataset:
        """The registry's entry of this data set: its loader and facts."""
        return registry.dataset(self.name)

    @property
    def split_key(self) -> tuple:
        """What models must share to be fused or ensembled: the data set, image size and split."""
        return (self.name, self.image_size, self.split_seed, self.val_fraction)

    @property
    def resolved_data_dir(self) -> str | None:
        """The directory read or downloaded to: data_dir, else the data set's default (None for digits)."""
        return self.data_dir or self.dataset.default_data_dir

    def to_params(self) -> dict[str, str]:
        """The options as run params (named as on the command line, so they never clash with a
        recipe's), the data folder as read: the data set's default when none was given."""
        return {**option_params(self), "data_dir": self.resolved_data_dir or "none"}

    def to_record(self) -> dict[str, object]:
        """What a run records with its model (spec.json's "data"): the options that say which images,
        split and size it was made on; not `download`, which only says whether they may be fetched."""
        return {f.name: getattr(self, f.name) for f in option_fields(DataConfig) if f.name not in NOT_RECORDED}


NOT_RECORDED = ("download",)


@dataclass(frozen=True)
class DatasetInfo:
    """What was loaded: shapes, class count, normalisation and split sizes."""

    name: str
    num_classes: int
    in_channels: int
    input_size: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    num_train: int
    num_val: int
    num_test: int
    source: str  # where it came from (path or "sklearn.datasets.load_digits")


@dataclass
class DataSplits:
    """Normalised float32 images [n, C, H, W] and int64 labels [n] for train, val and test."""

    train_x: Tensor
    train_y: Tensor
    val_x: Tensor
    val_y: Tensor
    test_x: Tensor
    test_y: Tensor
    info: DatasetInfo


def stratified_holdout(y: Tensor, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Split indices of labels y [n] into (keep, held) with about `fraction` of each class held.

    Deterministic for a given seed (torch's CPU generator, not numpy's). At least one
    sample is held, and a class keeps at least one sample on the kept side when it has two.
    """
    n = y.numel()
    if n < 2:
        raise DataError(f"need at least 2 samples to split, got {n}; add data or use a bigger data set")
    gen = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=gen)  # [n]
    held_parts = []
    for c in torch.unique(y).tolist():
        members = perm[y[perm] == c]  # this class's indices, in shuffled order
        n_held = min(int(fraction * members.numel() + 0.5), members.numel() - 1)
        held_parts.append(members[:n_held])
    held = torch.cat(held_parts)
    if held.numel() == 0:  # tiny sets round every class down to zero
        held = perm[:1]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[held] = True
    # sorted indices keep the original order inside each side, so splits are easy to compare
    return torch.nonzero(~mask).flatten(), torch.nonzero(mask).flatten()


def channel_stats(x: Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of images x [n, C, H, W] (std floored so it never divides by 0)."""
    if x.numel() <= STATS_IN_ONE_GO:
        # one float64 pass, as ofexp always computed them: small sets (digits) keep the exact
        # statistics, and so the exact trained weights, of earlier versions
        flat = x.transpose(0, 1).reshape(x.shape[1], -1).double()  # [C, n*H*W]
        return tuple(flat.mean(dim=1).tolist()), tuple(flat.std(dim=1).clamp_min(1e-6).tolist())
    # float64 sums over chunks of images: a float64 copy of all of Fashion-MNIST's train
    # split would alone be 470 MB, a third of a train run's memory budget
    total = torch.zeros(x.shape[1], dtype=torch.float64)  # [C]
    squares = torch.zeros(x.shape[1], dtype=torch.float64)  # [C]
    for start in range(0, x.shape[0], STATS_CHUNK):
        chunk = x[start : start + STATS_CHUNK].double()  # [b, C, H, W]
        total += chunk.sum(dim=(0, 2, 3))
        squares += chunk.square().sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    var = (squares - count * mean.square()) / max(count - 1, 1)  # unbiased, as torch.std
    std = var.clamp_min(0).sqrt().clamp_min(1e-6)
    return tuple(mean.tolist()), tuple(std.tolist())


def normalise_(x: Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> Tensor:
    """Normalise images x [n, C, H, W] in place, channel by channel; returns x."""
    m = torch.tensor(mean, dtype=x.dtype).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def finish_splits(
    cfg: DataConfig,
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    *,
    num_classes: int,
    source: str,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> DataSplits:
    """Hold out validation from the training images (in [0, 1]) and normalise all three sets.

    The data set's published `stats` (CIFAR's) normalise it when it has them; else the stats
    are measured on the training part after the hold-out, so val and test never leak in.
    `decode`, when given, turns each set's raw images (e.g. uint8) into float [n, C, H, W]
    in [0, 1] after the split, so that only the small raw images are ever copied by it.
    """
    keep, held = stratified_holdout(train_y, cfg.val_fraction, cfg.split_seed)
    val_x, val_y = train_x[held], train_y[held]
    train_x, train_y = train_x[keep], train_y[keep]
    if decode is not None:
        train_x, val_x, test_x = decode(train_x), decode(val_x), decode(test_x)
    entry = cfg.dataset
    if train_x.shape[1] != entry.channels:  # the served model and the docs say entry.channels
        raise DataError(f"{cfg.name} loaded {train_x.shape[1]}-channel images, but its registry entry says "
                        f"{entry.channels}; fix the entry's channels or the loader")
    mean, std = entry.stats if entry.stats is not None else channel_stats(train_x)
    for x in (train_x, val_x, test_x):
        normalise_(x, mean, std)
    info = DatasetInfo(
        name=cfg.name,
        num_classes=num_classes,
        in_channels=train_x.shape[1],
        input_size=train_x.shape[-1],
        mean=tuple(float(v) for v in mean),
        std=tuple(float(v) for v in std),
        num_train=train_x.shape[0],
        num_val=val_x.shape[0],
        num_test=test_x.shape[0],
        source=source,
    )
    return DataSplits(train_x, train_y.long(), val_x, val_y.long(), test_x, test_y.long(), info)
