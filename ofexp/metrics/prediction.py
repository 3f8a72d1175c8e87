"""Prediction-space measures (docs/design.md §5)."""
from __future__ import annotations

import math


def generalisation_gap(train_accuracy: float, test_accuracy: float) -> float:
    """The report's generalisation measure, 1 / |train_acc - test_acc|.

    The reciprocal makes its correlation with other measures carry the same
    sign as accuracy's. Equal accuracies give +inf (no gap at all).
    """
    gap = abs(train_accuracy - test_accuracy)
    return math.inf if gap == 0 else 1.0 / gap
