"""Generalisation measures of a trained network. No MLflow here: notebooks can call them directly."""
from ofexp.metrics.context import MeasureContext
from ofexp.metrics.prediction import generalisation_gap
from ofexp.metrics.registry import MEASURES, METRIC_PREFIX, PREDICTION_METRICS, SPACES, Measure, resolve_measures

__all__ = [
    "MEASURES", "METRIC_PREFIX", "PREDICTION_METRICS", "SPACES", "Measure", "MeasureContext",
    "generalisation_gap", "resolve_measures",
]
