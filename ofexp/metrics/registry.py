"""The measures ofexp knows, by name and space.

Adding a measure is a one-place change: write its function and add one
`Measure` line to `MEASURES`. Everything else (CLI validation, metric names,
results.csv rows) is derived from this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ofexp.errors import ConfigError
from ofexp.metrics import prediction
from ofexp.metrics.context import MeasureContext

SPACES = ("input", "parameter", "prediction")
# Metric keys are grouped by space ("param/hessian_trace") so MLflow's charts group them.
METRIC_PREFIX = {"input": "input", "parameter": "param", "prediction": "prediction"}


@dataclass(frozen=True)
class Measure:
    name: str
    space: str
    compute: Callable[[MeasureContext], float]
    doc: str

    @property
    def metric_key(self) -> str:
        return f"{METRIC_PREFIX[self.space]}/{self.name}"

    @property
    def csv_space(self) -> str:
        return f"{self.space}_space"


MEASURES: dict[str, Measure] = {
    m.name: m
    for m in (
        Measure("accuracy", "prediction", lambda c: c.test_eval["accuracy"], "test accuracy"),
        Measure("test_loss", "prediction", lambda c: c.test_eval["loss"], "mean test cross-entropy"),
        Measure("train_accuracy", "prediction", lambda c: c.train_eval["accuracy"], "accuracy on the training split"),
        Measure("train_loss", "prediction", lambda c: c.train_eval["loss"], "mean training cross-entropy"),
        Measure(
            "generalisation_gap", "prediction",
            lambda c: prediction.generalisation_gap(c.train_eval["accuracy"], c.test_eval["accuracy"]),
            "1 / |train accuracy - test accuracy|",
        ),
    )
}
PREDICTION_METRICS = ("accuracy", "generalisation_gap")


def resolve_measures(selection: str | Iterable[str]) -> list[str]:
    """Expand measure names, space names and 'all' into measure names, in table order.

    `selection` is a comma-separated string or a list, e.g. "prediction",
    "accuracy,generalisation_gap" or "all".
    """
    items = selection.split(",") if isinstance(selection, str) else list(selection)
    items = [i.strip() for i in items if i.strip()]
    if not items:
        raise ConfigError("--measures is empty; give measure names, a space (input, parameter, prediction) or 'all'")
    chosen: set[str] = set()
    for item in items:
        if item == "all":
            chosen.update(MEASURES)
        elif item in SPACES:
            chosen.update(n for n, m in MEASURES.items() if m.space == item)
        elif item in MEASURES:
            chosen.add(item)
        else:
            raise ConfigError(
                f"unknown measure {item!r}; use 'all', a space ({', '.join(SPACES)}) or one of: {', '.join(MEASURES)}"
            )
    if not chosen:
        raise ConfigError(f"--measures {','.join(items)} selects no measure that ofexp implements yet; available: {', '.join(MEASURES)}")
    return [n for n in MEASURES if n in chosen]
