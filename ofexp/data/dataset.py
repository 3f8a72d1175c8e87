"""What ofexp knows about one data set: the facts every layer reads from its registry entry.

Each data set module (`ofexp.data.digits`, `.cifar`, ...) defines its `Dataset`
entries in a module-level `DATASETS` tuple, and `ofexp.data.registry.MODULES` lists
the module: that is the whole of adding a data set (docs/design.md, "Adding a data
set"). From an entry come the loader, the `--dataset` choices and help, whether
`--data-dir`, `--image-size` and `--download` apply, the normalisation, the size the
served model takes (`pipeline.serving`) and the seed headroom (`pipeline.options`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from ofexp.data.splits import DataConfig, DataSplits

# Where the data sets that download (CIFAR, Fashion-MNIST) are looked for and downloaded to by default.
DEFAULT_DATA_DIR = "./data"
# Per-channel (mean, std) of a data set with published statistics.
Stats = tuple[tuple[float, ...], tuple[float, ...]]


@dataclass(frozen=True)
class Dataset:
    """One `--dataset` choice.

    `name` is the value runs log (its '_' reads as '-' on the command line);
    `load(cfg)` decodes it once into float images in [0, 1] and hands them to
    `splits.finish_splits`, which holds out validation and normalises.
    """

    name: str
    help: str  # one phrase for --dataset's help: where it comes from
    load: Callable[[DataConfig], DataSplits]
    channels: int  # of the images the loader gives (grey images of an image folder become RGB)
    # The side the data set is distributed at, which the served model takes (`RawImageNetwork`);
    # None: images of any size, which the served model takes already at --image-size.
    raw_size: int | None
    resized: bool = True  # whether --image-size applies; else the images keep raw_size
    stats: Stats | None = None  # published normalisation; None: measured on the training split
    default_data_dir: str | None = None  # where it is looked for (and downloaded to) without --data-dir
    data_dir_holds: str | None = None  # what --data-dir, then required, must point at
    downloads: bool = False  # whether --download applies
    seed_offset: int = 0  # the most the loader adds to --split-seed (for its test split)
