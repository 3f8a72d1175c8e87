"""Generalisation measures of a trained network. No MLflow here: notebooks can call them directly."""
from ofexp.metrics.context import MeasureContext
from ofexp.metrics.flatness import (
    flatness_init,
    flatness_mag_init,
    flatness_mag_orig,
    flatness_orig,
    pac_bayes_deviation,
    pac_bayes_flatness,
    pac_bayes_mag_flat,
    pac_bayes_sigma,
)
from ofexp.metrics.hessian import (Lanczos, TraceEstimate, hessian_lanczos, hessian_top_eigenvalue, hessian_trace,
                                   hessian_trace_with_error, trace_method)
from ofexp.metrics.hessian_exact import exact_trace_unsupported, hessian_trace_exact
from ofexp.metrics.input_space import lipschitz
from ofexp.metrics.prediction import generalisation_gap
from ofexp.metrics.registry import (ACCURACY_TO_PARENTS_KEY, MEASURES, METRIC_PREFIX, PREDICTION_METRICS, SPACES,
                                    TEST_ACCURACY_KEY, TEST_LOSS_KEY, Measure, resolve_measures, test_accuracy_of)
from ofexp.metrics.sharpness import (
    SearchBudget,
    SearchResult,
    parameter_vector,
    reference_vector,
    sharpness_deviation,
    sharpness_flatness,
    sharpness_init,
    sharpness_mag_flat,
    sharpness_mag_init,
    sharpness_mag_orig,
    sharpness_orig,
    sharpness_sigma,
)

__all__ = [
    "ACCURACY_TO_PARENTS_KEY", "MEASURES", "METRIC_PREFIX", "PREDICTION_METRICS", "SPACES", "TEST_ACCURACY_KEY", "TEST_LOSS_KEY", "Measure",
    "MeasureContext", "test_accuracy_of",
    "Lanczos", "SearchBudget", "SearchResult", "TraceEstimate",
    "flatness_init", "flatness_mag_init", "flatness_mag_orig", "flatness_orig",
    "exact_trace_unsupported", "generalisation_gap", "hessian_lanczos", "hessian_top_eigenvalue", "hessian_trace",
    "hessian_trace_exact", "hessian_trace_with_error", "lipschitz",
    "pac_bayes_deviation", "pac_bayes_flatness", "pac_bayes_mag_flat", "pac_bayes_sigma",
    "parameter_vector", "reference_vector", "resolve_measures", "trace_method",
    "sharpness_deviation", "sharpness_flatness", "sharpness_init", "sharpness_mag_flat", "sharpness_mag_init",
    "sharpness_mag_orig", "sharpness_orig", "sharpness_sigma",
]
