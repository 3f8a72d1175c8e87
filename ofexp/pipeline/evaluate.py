"""The evaluate step: measure one train or fuse run's model, by run ID."""
from __future__ import annotations

import time
from dataclasses import dataclass

import pandas as pd
import torch

from ofexp import tracking
from ofexp.data import DataSplits, load_dataset
from ofexp.metrics import MEASURES, MeasureContext, resolve_measures
from ofexp.training import resolve_device

RESULTS_COLUMNS = ["Model", "Space", "Metric", "Value"]


@dataclass(frozen=True)
class EvalConfig:
    model_run: str
    measures: str = "prediction"
    device: str = "auto"
    label: str | None = None  # the results.csv "Model" cell; defaults to the model run's name


def run_evaluate(cfg: EvalConfig, splits: DataSplits | None = None) -> str:
    """Compute the selected measures of a model run in a new 'evaluate' run; return its ID.

    Metrics are named by space (e.g. 'prediction/accuracy'), each with its wall
    time under 'time/<measure>'. A results.csv artifact holds the same values.
    """
    names = resolve_measures(cfg.measures)
    device = resolve_device(cfg.device)
    loaded = tracking.fetch_model_run(cfg.model_run)
    model_run = loaded.run
    splits = splits if splits is not None else load_dataset(loaded.data)
    model_name = model_run.info.run_name or cfg.model_run
    label = cfg.label or model_name
    ctx = MeasureContext(loaded.model.to(device), splits, device,
                         reference_weights=lambda: reference_weights(cfg.model_run))
    params = {"model_run": cfg.model_run, "measures": ",".join(names), "device": cfg.device}
    description = f"Measures {', '.join(names)} of run {cfg.model_run} ({model_name})."
    with tracking.stage_run("evaluate", run_name=f"evaluate {model_name}", params=params,
                            tags={tracking.TAG_MODEL_RUN: cfg.model_run}, description=description) as run:
        rows = []
        for name in names:
            measure = MEASURES[name]
            start = time.perf_counter()
            value = float(measure.compute(ctx))
            tracking.log_metrics(
                {measure.metric_key: value, f"time/{name}": time.perf_counter() - start},
                model_id=model_run.data.tags.get(tracking.TAG_LOGGED_MODEL),
            )
            rows.append((label, measure.csv_space, name, value))
        tracking.log_text(results_frame(rows).to_csv(index=False), "results.csv")
        return run.info.run_id


def results_frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """Rows in the report's results.csv format: Model, Space, Metric, Value."""
    return pd.DataFrame(rows, columns=RESULTS_COLUMNS)


def reference_weights(model_run_id: str) -> dict[str, torch.Tensor]:
    """θ₀ of DESIGN §5, found through lineage.

    For a train run: its own initial weights. For a fuse run: the final weights
    of the parent farthest (in squared ℓ2 distance) from the fused weights.
    """
    run = tracking.get_run_checked(model_run_id, tracking.MODEL_STAGES)
    if run.data.tags[tracking.TAG_STAGE] == "train":
        return tracking.load_weights_from_run(model_run_id, "initial")
    fused = tracking.load_weights_from_run(model_run_id)
    parent_ids = run.data.tags[tracking.TAG_PARENTS].split(",")
    best, best_distance = None, -1.0
    for parent_id in parent_ids:
        parent = tracking.load_weights_from_run(parent_id)
        distance = _squared_distance(fused, parent)
        if distance > best_distance:
            best, best_distance = parent, distance
    return best


def _squared_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    # Only float tensors of matching shape are parameters or statistics; a parent of
    # another width cannot be compared tensor by tensor and is skipped.
    total = 0.0
    for key, value in a.items():
        other = b.get(key)
        if other is not None and value.is_floating_point() and other.shape == value.shape:
            total += float((value - other).pow(2).sum())
    return total
