"""The measures ofexp knows, by name and space.

Adding a measure is a one-place change: write its function and add one
`Measure` line to `MEASURES` (for a σ-based measure, a line of the maker for its kind).
Everything else (CLI validation, metric names, results.csv rows) is derived from this table.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable

from ofexp.errors import ConfigError
from ofexp.metrics import flatness, input_space, prediction, sharpness
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
    search: str | None = None  # the σ search (context.SEARCHES) the measure's value comes from, if any
    csv_name: str | None = None  # its name in the report's results.csv, where that differs
    # What else the measure reports beside its value, once it has one: numbers (how precise
    # the value is) are logged as metrics, text (how it was computed) as a tag ofexp.<key>.
    details: Callable[[MeasureContext], dict[str, float | str]] | None = None

    @property
    def report_name(self) -> str:
        """The Metric cell of results.csv: the original study's name for the measure."""
        return self.csv_name or self.name

    @property
    def metric_key(self) -> str:
        return f"{METRIC_PREFIX[self.space]}/{self.name}"

    @property
    def csv_space(self) -> str:
        return f"{self.space}_space"


# The twelve σ-based measures come in threes, one three per σ search (context.SEARCHES), and
# each member of a three reads its search's result in its own way: σ alone, σ with the distance
# from the initial weights, or σ with the weights themselves. These three makers write each way
# once, and name the search once, so a measure's `search` is always the search its value reads.

def _of_sigma(name: str, fn: Callable[[float], float], search: str, doc: str) -> Measure:
    """A flatness: fn(σ), σ the search's result."""
    return Measure(name, "parameter", lambda c: fn(c.search(search).sigma), doc, search=search)


def _bound_from_init(name: str, fn: Callable[..., float], search: str, doc: str) -> Measure:
    """A bound on the distance from the initial weights: fn(σ, θ, θ₀, m)."""
    return Measure(name, "parameter", lambda c: fn(c.search(search).sigma, c.theta, c.theta0, c.num_train), doc,
                   search=search)


def _bound_from_origin(name: str, fn: Callable[..., float], search: str, doc: str) -> Measure:
    """A bound on the weights themselves: fn(σ, θ, m)."""
    return Measure(name, "parameter", lambda c: fn(c.search(search).sigma, c.theta, c.num_train), doc, search=search)


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
        Measure("lipschitz", "input",
                lambda c: input_space.lipschitz(c.model, c.input_shape, generator=c.generator("lipschitz")),
                "lower bound on the Lipschitz constant of f(x) - f(0), by power iteration",
                csv_name="lipschitz_constant"),
        Measure("hessian_top_eigenvalue", "parameter",
                lambda c: c.hessian_top_eigenvalue(),  # one Lanczos run shared with hessian_trace
                "largest eigenvalue of the cross-entropy Hessian on a batch of test images (Lanczos)"),
        Measure("hessian_trace", "parameter",
                lambda c: c.hessian_trace.trace,
                "trace of the cross-entropy Hessian on a batch of test images (exact for piecewise-linear nets, "
                "else deflated Hutchinson)",
                # its precision (0 and 0 when exact) and method ("exact" or "hutchinson")
                details=lambda c: {"hessian/trace_stderr": c.hessian_trace.stderr,
                                   "hessian/trace_samples": float(c.hessian_trace.samples),
                                   "hessian_trace_method": c.hessian_trace.method}),
        _of_sigma("sharpness_flatness", sharpness.sharpness_flatness, "sharpness",
                  "1/σ², σ the worst-case perturbation radius that moves the training loss by 0.1"),
        _bound_from_init("sharpness_init", sharpness.sharpness_init, "sharpness",
                         "‖θ−θ₀‖²·log(2ω/δ)/σ² + log(m/δ) + 10"),
        _bound_from_origin("sharpness_orig", sharpness.sharpness_orig, "sharpness",
                           "‖θ‖²·log(2ω/δ)/σ² + log(m/δ) + 10"),
        _of_sigma("sharpness_mag_flat", sharpness.sharpness_mag_flat, "sharpness_mag",
                  "1/σ′², σ′ the magnitude-aware worst-case perturbation scale"),
        _bound_from_init("sharpness_mag_init", sharpness.sharpness_mag_init, "sharpness_mag",
                         "magnitude-aware sharpness bound on θ−θ₀"),
        _bound_from_origin("sharpness_mag_orig", sharpness.sharpness_mag_orig, "sharpness_mag",
                           "magnitude-aware sharpness bound on θ"),
        _of_sigma("pac_bayes_flatness", flatness.pac_bayes_flatness, "pac_bayes",
                  "1/σ², σ the Gaussian noise scale that moves the training loss by 0.1"),
        _bound_from_init("flatness_init", flatness.flatness_init, "pac_bayes", "‖θ−θ₀‖²/(2σ²) + log(m/δ) + 10"),
        _bound_from_origin("flatness_orig", flatness.flatness_orig, "pac_bayes", "‖θ‖²/(2σ²) + log(m/δ) + 10"),
        _of_sigma("pac_bayes_mag_flat", flatness.pac_bayes_mag_flat, "pac_bayes_mag",
                  "1/σ′², σ′ the magnitude-aware Gaussian noise scale"),
        _bound_from_init("flatness_mag_init", flatness.flatness_mag_init, "pac_bayes_mag",
                         "magnitude-aware PAC-Bayes bound on θ−θ₀"),
        _bound_from_origin("flatness_mag_orig", flatness.flatness_mag_orig, "pac_bayes_mag",
                           "magnitude-aware PAC-Bayes bound on θ"),
    )
}
PREDICTION_METRICS = ("accuracy", "generalisation_gap")
# The test-set accuracy and loss that train, fuse and ensemble runs log when they end, under the
# same names as an evaluate run's: one name per quantity, whichever stage measured it.
TEST_ACCURACY_KEY = MEASURES["accuracy"].metric_key  # "prediction/accuracy"
TEST_LOSS_KEY = MEASURES["test_loss"].metric_key  # "prediction/test_loss"
# a fuse run's test accuracy over its parents' mean: the "x parents" of `ofexp study`'s table
ACCURACY_TO_PARENTS_KEY = "accuracy_to_parents"


def test_accuracy_of(metrics: dict[str, float]) -> float | None:
    """A model run's logged test accuracy; runs of ofexp before 0.1 named it `test_accuracy`."""
    return metrics.get(TEST_ACCURACY_KEY, metrics.get("test_accuracy"))


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
