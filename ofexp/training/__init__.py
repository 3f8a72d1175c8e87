"""Training: named recipes, device choice, the epoch loop and resumable checkpoints."""

from __future__ import annotations

from ofexp.training.checkpoint import make_checkpoint, restore_checkpoint, snapshot
from ofexp.training.device import resolve_device, seed_everything
from ofexp.training.loop import FitResult, build_optimizer, build_scheduler, evaluate, fit, train_one_epoch
from ofexp.training.recipes import RECIPES, Recipe, RecipeOptions, lr_factor, make_recipe
from ofexp.training.speed import SpeedOptions

__all__ = [
    "RECIPES",
    "FitResult",
    "Recipe",
    "RecipeOptions",
    "build_optimizer",
    "build_scheduler",
    "evaluate",
    "fit",
    "lr_factor",
    "make_checkpoint",
    "make_recipe",
    "resolve_device",
    "restore_checkpoint",
    "seed_everything",
    "snapshot",
    "SpeedOptions",
    "train_one_epoch",
]
