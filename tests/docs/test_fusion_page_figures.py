"""Smaller figures of docs/fusion.md that follow from code or committed files (issue #26): the
training set and step count behind the recipe table's explanation (the digits split and the
default recipe that tests/fusion/quality.py trains with), and the interpolation's cost in
evaluations (the committed MLP fuse run's curves and its curve_samples param)."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd

from ofexp.data import DataConfig, load_dataset
from ofexp.training import make_recipe

REPO = Path(__file__).resolve().parents[2]
PAGE = REPO / "docs/fusion.md"
FINETUNE = REPO / "docs/results/digits_finetune"


def _words() -> str:
    return " ".join(PAGE.read_text(encoding="utf-8").split())


def test_the_recipe_explanation_counts_the_digits_training_set_and_its_steps():
    # quality.py's parents: digits with the default split (test and validation held out), the
    # default recipe's batch size, 10 epochs
    train = load_dataset(DataConfig()).train_x.shape[0]
    batch = make_recipe("default").batch_size
    steps = 10 * math.ceil(train / batch)
    assert f"ten epochs on {train:,} training images ({steps} steps of {batch})" in _words()


def test_the_interpolation_cost_is_the_committed_fuse_runs_curves():
    steps = pd.read_csv(FINETUNE / "steps.csv")
    fused = steps[(steps["seed"] == 1) & (steps["kind"] == "geometric_fused") & (steps["stage"] == "fuse")]
    (run_id,) = fused["run_id"]
    run = FINETUNE / "export" / "runs" / run_id
    metrics = pd.read_csv(run / "metrics.csv")
    points = metrics[metrics["key"].str.fullmatch(r"interp/[a-z_]+/loss")]
    curves = points["key"].nunique()
    per_curve = points.groupby("key")["step"].nunique().unique().tolist()
    curve_samples = int(json.loads((run / "run.json").read_text(encoding="utf-8"))["params"]["curve_samples"])
    assert f"up to {curves * per_curve[0]} evaluations ({curves} curves × {per_curve[0]} points)" in _words()
    assert f"`--curve-samples` ({curve_samples:,} by default)" in _words()
