"""Tracking overhead: `ofexp train` with MLflow logging against the same training with tracking off.

ofexp side: `ofexp.pipeline.steps.train.run_train`, what `ofexp train` runs after parsing options,
logging to a local SQLite store in a temp dir (run, params, inputs, spec, initial/best/
final weights, per-epoch checkpoint and metrics through the background EpochLogger,
test metrics). Baseline, "tracking off": the documented way to train without MLflow,
the same network built and initialised the same way, then `ofexp.training.fit` on the
same splits, with no epoch callback (so no checkpoints either), then the same test-set evaluation.

Reported: the whole run for N epochs (target: at most 5% slower), the same for one
epoch (run start-up and teardown dominate it), and the per-epoch cost from the two,
(t_N - t_1) / (N - 1), which is what a long run pays. The MLflow model is not logged
(--no-log-model): it is a one-off cost per run, not a per-epoch one.
"""
from __future__ import annotations

import statistics
import sys
from dataclasses import replace

import torch

from bench.common import Result, one_thread, temporary_tracking, time_pair
from ofexp.data import load_dataset
from ofexp.models import build_model, init_weights
from ofexp.pipeline.steps.train import TrainConfig, run_train
from ofexp.pipeline.steps.train import model_spec_for
from ofexp.training import evaluate, fit, make_recipe, seed_everything


def _trainers(cfg: TrainConfig, splits):
    """(with tracking, without tracking) callables training cfg once each."""
    def tracked() -> str:
        return run_train(cfg, splits)

    def untracked() -> float:
        seed_everything(cfg.seed)
        model = build_model(model_spec_for(cfg, splits))
        init_weights(model, cfg.recipe.init)
        fit(model, splits, cfg.recipe, device="cpu", seed=cfg.seed, progress=False)
        return evaluate(model, splits.test_x, splits.test_y, device="cpu")["loss"]  # as run_train does

    return tracked, untracked


def _per_epoch(long_s: list[float], short_s: list[float], epochs: int) -> list[float]:
    return [(a - b) / (epochs - 1) for a, b in zip(long_s, short_s)]


def run(quick: bool, repeats: int) -> list[Result]:
    with one_thread(), temporary_tracking("ofexp-bench-tracking-") as tmp:
        return _run(quick, repeats, tmp)


def _run(quick: bool, repeats: int, tmp: str) -> list[Result]:
    model, width, epochs = ("vgg11", 0.125, 4) if quick else ("vgg11", 0.25, 10)
    base = TrainConfig(model=model, width=width, recipe=make_recipe("default", epochs=epochs), seed=1,
                       device="cpu", log_model=False, progress=False)
    splits = load_dataset(base.data)
    store = f"sqlite:///{tmp}/mlflow.db"
    print(f"[bench] tracking: {model} w{width}, {epochs} epochs vs 1, store {store}", file=sys.stderr, flush=True)
    long_s, long_base_s, run_id, _ = time_pair(*_trainers(base, splits), repeats)
    short = replace(base, recipe=make_recipe("default", epochs=1))
    short_s, short_base_s, _, _ = time_pair(*_trainers(short, splits), repeats)
    common = {"store": "local sqlite", "model": f"{model} width {width}", "images": splits.info.num_train,
              "torch_threads": torch.get_num_threads()}
    whole = Result(f"tracking: train {epochs} epochs", "ofexp train (MLflow logging)", "fit() with tracking off",
                   long_s, long_base_s, target="ofexp <= 1.05x baseline",
                   notes={**common, "run_id": run_id})
    whole.passed = whole.ratio is not None and whole.ratio >= 1 / 1.05
    startup = Result("tracking: train 1 epoch (start-up dominated)", "ofexp train (MLflow logging)",
                     "fit() with tracking off", short_s, short_base_s, target="report",
                     notes={**common, "startup_and_teardown_s": statistics.median(short_s)
                            - statistics.median(short_base_s)})
    per_epoch = Result("tracking: cost per extra epoch", "ofexp train (MLflow logging)", "fit() with tracking off",
                       _per_epoch(long_s, short_s, epochs), _per_epoch(long_base_s, short_base_s, epochs),
                       target="ofexp <= 1.05x baseline", notes={**common, "formula": "(t_N - t_1) / (N - 1)"})
    per_epoch.passed = per_epoch.ratio is not None and per_epoch.ratio >= 1 / 1.05
    return [whole, startup, per_epoch]
