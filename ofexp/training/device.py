"""Choosing the compute device and seeding torch."""

from __future__ import annotations

import torch

from ofexp.errors import ConfigError

DEVICES = ("cpu", "cuda", "mps", "auto")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def resolve_device(name: str) -> torch.device:
    """Turn "cpu" | "cuda" | "cuda:N" | "mps" | "auto" into a device that exists on this machine.

    "auto" picks cuda, then mps, then cpu. Raises ConfigError for unknown or unavailable devices.
    """
    kind, _, index = str(name).partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown --device {name!r}; choose one of {', '.join(DEVICES)} (or cuda:N)")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps" if _mps_available() else "cpu")
    if kind == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"--device {name} is not available here (no CUDA GPU); use --device cpu or auto"
            )
        if index and int(index) >= torch.cuda.device_count():
            count = torch.cuda.device_count()
            raise ConfigError(f"--device {name} does not exist: this machine has {count} CUDA device(s)")
    if kind == "mps" and not _mps_available():
        raise ConfigError("--device mps is not available here (no Apple GPU); use --device cpu or auto")
    return torch.device(name)


def seed_everything(seed: int) -> None:
    """Seed torch's CPU and all CUDA generators; training draws from no other RNG (no numpy, no random)."""
    torch.manual_seed(seed)
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(seed)
