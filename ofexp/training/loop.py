"""The training loop: SGD with a per-iteration schedule over in-memory tensors, best-by-val-loss."""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from ofexp.data import DataSplits
from ofexp.errors import ConfigError, DataError, TrainingDivergedError
from ofexp.training.checkpoint import make_checkpoint, restore_checkpoint, snapshot
from ofexp.training.device import seed_everything
from ofexp.training.recipes import Recipe, lr_factor
from ofexp.training.speed import SpeedOptions

EpochCallback = Callable[[int, dict, dict], None]
# The shuffle order and torch's global stream (dropout) both derive from `seed`; the offset
# keeps them from being the same sequence of random bits.
SHUFFLE_SEED_OFFSET = 1_000_003


def build_optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.SGD:
    """Plain SGD with the recipe's lr, momentum and weight decay."""
    return torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay
    )


def build_scheduler(optimizer, recipe: Recipe, steps_per_epoch: int) -> torch.optim.lr_scheduler.LambdaLR:
    """A LambdaLR stepped once per iteration, following `lr_factor`."""
    # a plain closure: LambdaLR saves None for it, keeping the checkpoint free of pickled code
    def factor(iteration: int) -> float:
        return lr_factor(recipe, iteration, steps_per_epoch)

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _diverged(epoch: int | None, loss: float, optimizer, grad_clip: float) -> TrainingDivergedError:
    group = optimizer.param_groups[0]
    base_lr = group.get("initial_lr", group["lr"])  # the user's --lr, not the scheduled value
    where = f" at epoch {epoch}" if epoch is not None else ""
    clip = f"lower --grad-clip (now {grad_clip})" if grad_clip > 0 else "enable --grad-clip"
    return TrainingDivergedError(
        f"training diverged{where}: loss is {loss}; lower --lr (now {base_lr}) or {clip}"
    )


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    x: Tensor,
    y: Tensor,
    *,
    batch_size: int,
    generator: torch.Generator,
    grad_clip: float = 0.0,
    device: torch.device | str,
    epoch: int | None = None,
    on_step: Callable[[], None] | None = None,
) -> dict:
    """One pass over x [n, C, H, W], y [n] in an order drawn from `generator`.

    Steps the scheduler every iteration, then calls `on_step()` (e.g. a progress bar's
    update). Returns {"loss", "accuracy"} averaged over the epoch's samples and "lr", the
    rate of the epoch's last iteration. Raises TrainingDivergedError as soon as a batch's
    loss is not finite (`epoch` names it).
    """
    n = x.shape[0]
    if n == 0:
        raise DataError("the training set is empty; use a data set with more images")
    model.train()
    perm = torch.randperm(n, generator=generator, device=generator.device)  # [n]
    loss_sum, correct, lr = 0.0, torch.zeros((), dtype=torch.int64, device=device), 0.0
    for start in range(0, n, batch_size):
        idx = perm[start : start + batch_size].to(x.device)  # [b]
        xb = x[idx].to(device, non_blocking=True)  # [b, C, H, W]
        yb = y[idx].to(device, non_blocking=True)  # [b]
        lr = optimizer.param_groups[0]["lr"]
        logits = model(xb)  # [b, classes]
        loss = F.cross_entropy(logits, yb)
        value = loss.item()  # syncs, but divergence must stop the run at once
        if not math.isfinite(value):
            raise _diverged(epoch, value, optimizer, grad_clip)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        scheduler.step()
        loss_sum += value * yb.shape[0]
        correct += (logits.argmax(dim=1) == yb).sum()
        if on_step is not None:
            on_step()
    return {"loss": loss_sum / n, "accuracy": correct.item() / n, "lr": lr}


@torch.no_grad()
def evaluate(model: nn.Module, x: Tensor, y: Tensor, *, batch_size: int = 512, device) -> dict:
    """True mean cross-entropy and accuracy over x [n, C, H, W], y [n], in eval mode.

    Batches are moved to `device`; the model's train/eval mode is restored afterwards.
    """
    n = x.shape[0]
    if n == 0:
        raise DataError("cannot evaluate on an empty set; check --val-fraction and the data set size")
    was_training = model.training
    model.eval()
    try:
        loss_sum, correct = 0.0, 0  # Python floats: exact enough, and MPS has no float64
        for start in range(0, n, batch_size):
            xb = x[start : start + batch_size].to(device, non_blocking=True)  # [b, C, H, W]
            yb = y[start : start + batch_size].to(device, non_blocking=True)  # [b]
            logits = model(xb)  # [b, classes]
            # summed, not averaged per batch, so a short last batch is weighted correctly
            loss_sum += F.cross_entropy(logits.float(), yb, reduction="sum").item()
            correct += (logits.argmax(dim=1) == yb).sum().item()
    finally:
        model.train(was_training)
    return {"loss": loss_sum / n, "accuracy": correct / n}


@dataclass
class FitResult:
    """The outcome of fit(): best-by-val-loss weights (a CPU copy) and every epoch's metrics."""

    best_state: dict
    best_epoch: int
    best_val_loss: float
    final_metrics: dict  # the last epoch's train_loss, train_accuracy, val_loss, val_accuracy, lr
    history: list[dict] = field(default_factory=list)  # one {"epoch", **metrics} per epoch


def _check_resume(checkpoint: dict, recipe: Recipe) -> None:
    """Refuse to resume under a different recipe; only the epoch count may grow."""
    saved = dict(checkpoint.get("config", {}).get("recipe", {}))
    now = recipe.to_params()
    changed = sorted(k for k in now if k != "epochs" and saved.get(k) != now[k])
    if saved and changed:
        diff = ", ".join(f"{k} {saved.get(k)}→{now[k]}" for k in changed)
        raise ConfigError(
            f"cannot resume with a different recipe ({diff}); rerun with the checkpoint's settings"
        )


def _epoch_metrics(train: dict, val: dict) -> dict:
    return {
        "train_loss": train["loss"],
        "train_accuracy": train["accuracy"],
        "val_loss": val["loss"],
        "val_accuracy": val["accuracy"],
        "lr": train["lr"],
    }


def fit(
    model: nn.Module,
    splits: DataSplits,
    recipe: Recipe,
    *,
    device,
    seed: int,
    on_epoch_end: EpochCallback | None = None,
    resume: dict | None = None,
    progress: bool = True,
    speed: SpeedOptions = SpeedOptions(),
) -> FitResult:
    """Train `model` in place for recipe.epochs epochs and keep the lowest-val-loss weights.

    The model arrives already initialised (the caller applies recipe.init). `seed` re-seeds
    torch's global RNG (dropout) and seeds a dedicated shuffle generator, so the same
    weights, data, recipe and seed give the same run. `on_epoch_end(epoch, metrics,
    checkpoint)` is called after every epoch (1-based) with a make_checkpoint() dict;
    `resume` is such a dict: training continues from its epoch + 1 with every RNG restored.
    `speed` turns on channels_last, torch.compile and TF32 (all off by default: plain float32).
    """
    device = torch.device(device)
    model.to(device)
    # moved once, not per batch; the shuffle permutation below lives on the same device
    train_x, train_y = speed.prepare_inputs(splits.train_x.to(device)), splits.train_y.to(device)
    val_x, val_y = speed.prepare_inputs(splits.val_x.to(device)), splits.val_y.to(device)
    forward = speed.prepare_model(model)  # `model` itself keeps the state_dict keys
    optimizer = build_optimizer(model, recipe)
    steps = math.ceil(train_x.shape[0] / recipe.batch_size)
    scheduler = build_scheduler(optimizer, recipe, steps)
    seed_everything(seed)
    generator = torch.Generator(device=device).manual_seed(seed + SHUFFLE_SEED_OFFSET)
    config = {"recipe": recipe.to_params(), "seed": int(seed)}
    start, best, history = 0, {"state": None, "epoch": 0, "val_loss": math.inf}, []
    if resume is not None:
        _check_resume(resume, recipe)
        start, best, history = restore_checkpoint(resume, model, optimizer, scheduler, generator)
    # one bar over every batch of the run, so the time left is known within the first epoch
    # (a 60,000-image epoch takes minutes on a CPU), and the epoch is in its description
    bar = tqdm(
        desc=f"train epoch {start + 1}/{recipe.epochs}", unit="batch", file=sys.stderr, disable=not progress,
        initial=start * steps, total=recipe.epochs * steps,
    )  # fmt: skip
    try:
        with speed.numerics():  # IEEE float32 and deterministic cuDNN on CUDA unless --tf32
            for epoch in range(start + 1, recipe.epochs + 1):
                bar.set_description(f"train epoch {epoch}/{recipe.epochs}", refresh=False)
                train = train_one_epoch(
                    forward, optimizer, scheduler, train_x, train_y, batch_size=recipe.batch_size,
                    generator=generator, grad_clip=recipe.grad_clip, device=device, epoch=epoch,
                    on_step=bar.update,
                )  # fmt: skip
                metrics = _epoch_metrics(train, evaluate(forward, val_x, val_y, device=device))
                history.append({"epoch": epoch, **metrics})
                # the original code stored state_dict() itself, i.e. the live weights; snapshot copies
                if best["state"] is None or metrics["val_loss"] < best["val_loss"]:
                    best = {"state": snapshot(model.state_dict()), "epoch": epoch, "val_loss": metrics["val_loss"]}
                bar.set_postfix({k: f"{metrics[k]:.3f}" for k in ("train_loss", "val_loss", "val_accuracy")})
                if on_epoch_end is not None:
                    ckpt = make_checkpoint(model, optimizer, scheduler, epoch, generator, config, best, history)
                    on_epoch_end(epoch, metrics, ckpt)
    finally:  # closed before an error is reported, so the error is the last line
        bar.close()
    final = {k: v for k, v in history[-1].items() if k != "epoch"} if history else {}
    return FitResult(best["state"], best["epoch"], best["val_loss"], final, history)
