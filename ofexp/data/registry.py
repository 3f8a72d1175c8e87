"""The data sets, by name: one line per data set module in MODULES.

Each listed module defines `DATASETS`, a tuple of `Dataset` entries (`ofexp.data.dataset`):
CIFAR's module defines cifar10 and cifar100. The modules import their heavy libraries
(torchvision, scikit-learn) only when they load, so reading the registry is cheap. It is
read on first use, so a caller may add a module to MODULES before that (the in-test data
set of tests/data/test_registry.py does). The help of the data options that an entry
decides (--dataset, --data-dir, --image-size, --download) is written from the entries.
"""
from __future__ import annotations

import importlib

from ofexp.data.dataset import Dataset
from ofexp.errors import ConfigError

MODULES = ("ofexp.data.digits", "ofexp.data.fashion_mnist", "ofexp.data.cifar", "ofexp.data.imagefolder")

_loaded: dict[tuple[str, ...], dict[str, Dataset]] = {}


def registered() -> dict[str, Dataset]:
    """{name: Dataset} of every module in MODULES, in their order."""
    modules = tuple(MODULES)
    if modules not in _loaded:
        entries: dict[str, Dataset] = {}
        for module in modules:
            for entry in importlib.import_module(module).DATASETS:
                if entry.name in entries:
                    raise ValueError(f"data set {entry.name!r} is defined twice (again in {module})")
                entries[entry.name] = entry
        _loaded[modules] = entries
    return _loaded[modules]


def names() -> tuple[str, ...]:
    """The `--dataset` choices, as runs log them."""
    return tuple(registered())


def dataset(name: str) -> Dataset:
    """The entry of `name`; ConfigError listing the choices for an unknown one."""
    entry = registered().get(name)
    if entry is None:
        raise ConfigError(f"unknown --dataset {name!r}; choose one of {', '.join(names())}")
    return entry


def seed_headroom() -> int:
    """The most any data set's loader adds to --split-seed."""
    return max(entry.seed_offset for entry in registered().values())


# --- the help of the data options, from the entries (read when the CLI is built) ---

def _shown(entries: list[Dataset]) -> str:
    """Names as the command line spells them ('-' for '_'), joined."""
    names = [entry.name.replace("_", "-") for entry in entries]
    return ", ".join(names[:-1]) + f" or {names[-1]}" if len(names) > 1 else "".join(names)


def dataset_help() -> str:
    return "Data set: " + "; ".join(f"{_shown([e])}: {e.help}" for e in registered().values()) + "."


def data_dir_help() -> str:
    entries = list(registered().values())
    folders = dict.fromkeys(e.default_data_dir for e in entries if e.default_data_dir)
    parts = [f"{_shown([e for e in entries if e.default_data_dir == folder])}: default {folder}" for folder in folders]
    required = [e for e in entries if e.data_dir_holds]
    parts += [f"{_shown(required)}: required"] if required else []
    return f"Folder of the data ({'; '.join(parts)})."


def image_size_help() -> str:
    return f"Side length that {_shown([e for e in registered().values() if e.resized])} images are resized to."


def download_help() -> str:
    return f"Download {_shown([e for e in registered().values() if e.downloads])} when it is missing."
