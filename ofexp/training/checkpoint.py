"""Resumable training checkpoints made only of tensors, numbers, strings, lists and dicts.

That restriction is what lets them load with `torch.load(path, weights_only=True)`,
which never executes pickled code (docs/design.md §2).
"""

from __future__ import annotations

import torch
from torch import nn

from ofexp.errors import ArtifactError, ConfigError

KEYS = ("model", "optimizer", "scheduler", "epoch", "rng", "config", "best", "history")


def snapshot(obj):
    """A deep copy of obj with every tensor detached and copied to the CPU.

    A copy, because state_dict() returns the live tensors: a "checkpoint" holding them
    would silently follow the training that continues after it was taken.
    """
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


def make_checkpoint(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    epoch: int,
    generator: torch.Generator,
    config: dict,
    best: dict,
    history: list[dict] | None = None,
) -> dict:
    """Everything needed to continue training after `epoch` (1-based) bit-identically.

    `config` must itself be plain data (strings, numbers); `best` is
    {"state": state_dict or None, "epoch": int, "val_loss": float}.
    """
    cuda_states = list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []
    return {
        "model": snapshot(model.state_dict()),
        "optimizer": snapshot(optimizer.state_dict()),
        "scheduler": snapshot(scheduler.state_dict()),
        "epoch": int(epoch),
        "rng": {
            "torch": torch.get_rng_state(),
            "shuffle": generator.get_state(),
            "shuffle_device": generator.device.type,
            "cuda": cuda_states,
        },
        "config": snapshot(config),
        "best": {
            "state": snapshot(best.get("state")),
            "epoch": int(best.get("epoch", 0)),
            "val_loss": float(best.get("val_loss", float("inf"))),
        },
        "history": snapshot(list(history or [])),
    }


def restore_checkpoint(
    checkpoint: dict,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    generator: torch.Generator,
) -> tuple[int, dict, list[dict]]:
    """Load a make_checkpoint() dict into freshly built objects; returns (epoch, best, history).

    Restores every RNG (torch's global one, the shuffle generator, CUDA's), so training
    continued from here matches training that was never interrupted.
    """
    missing = [k for k in KEYS if k not in checkpoint]
    if missing:
        raise ArtifactError(
            f"checkpoint lacks {missing}; resume only from a checkpoint written by ofexp's fit"
        )
    rng = checkpoint["rng"]
    saved_on = rng.get("shuffle_device", "cpu")
    if saved_on != generator.device.type:
        raise ConfigError(f"checkpoint was trained on {saved_on}; resume it with --device {saved_on}")
    try:
        model.load_state_dict(checkpoint["model"])
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise ArtifactError(
            f"checkpoint does not fit this model ({first}); resume with the same model spec"
        ) from None
    optimizer.load_state_dict(checkpoint["optimizer"])
    scheduler.load_state_dict(checkpoint["scheduler"])
    torch.set_rng_state(rng["torch"])
    generator.set_state(rng["shuffle"])
    if rng["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    best = dict(checkpoint["best"])
    return int(checkpoint["epoch"]), best, list(checkpoint["history"])
