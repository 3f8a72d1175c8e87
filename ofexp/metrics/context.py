"""What a measure may look at: the model, its data and its reference weights."""
from __future__ import annotations

import warnings
import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from ofexp.data import DataSplits
from ofexp.errors import ConfigError
from ofexp.metrics.hessian import (Lanczos, TraceEstimate, hessian_lanczos, hessian_top_eigenvalue, hessian_trace_with_error,
                                   trace_method)
from ofexp.metrics.flatness import (PAC_BAYES_BOUNDS, PAC_BAYES_MAG_BOUNDS, PAC_BAYES_MIN_WIDTH, PAC_BAYES_TOL,
                                    pac_bayes_deviation)
from ofexp.metrics.sharpness import (SHARPNESS_BOUNDS, SHARPNESS_MAG_BOUNDS, SHARPNESS_MIN_WIDTH, SHARPNESS_TOL,
                                     SearchBudget, SearchResult, binary_search, check_worst_case, parameter_vector,
                                     reference_vector, sharpness_deviation)
from ofexp.training import evaluate

# The search budget presets of `ofexp evaluate --preset`: "report" is docs/design.md §5's budget
# (the default; what results should use), "quick" SearchBudget.quick() for tests and demos.
PRESETS: dict[str, Callable[[], SearchBudget]] = {"report": SearchBudget, "quick": SearchBudget.quick}


@dataclass(frozen=True)
class SigmaSearch:
    """One σ search: the σ whose noise moves the training loss (or accuracy) by the target
    deviation, found by bisection within `bounds` (docs/measures.md)."""

    name: str
    what: str  # in warnings: "magnitude-aware sharpness"
    bounds: tuple[float, float]
    magnitude_aware: bool  # noise scaled by each weight's magnitude (σ′)
    # the deviation at σ: (context, σ, magnitude_aware, generator) -> float
    deviation: Callable[["MeasureContext", float, bool, torch.Generator], float]
    depth_field: str  # the SearchBudget field bounding its steps
    tol: float
    min_width: float


def _sharpness(ctx: "MeasureContext", sigma: float, magnitude_aware: bool, gen: torch.Generator) -> float:
    x, y = ctx._train_on_device
    return sharpness_deviation(ctx.model, x, y, sigma, loss=ctx.train_loss, magnitude_aware=magnitude_aware,
                               budget=ctx.budget, worst=ctx.sharpness_worst, generator=gen)


def _pac_bayes(ctx: "MeasureContext", sigma: float, magnitude_aware: bool, gen: torch.Generator) -> float:
    x, y = ctx._train_on_device
    return pac_bayes_deviation(ctx.model, x, y, sigma, loss=ctx.train_loss, magnitude_aware=magnitude_aware,
                               budget=ctx.budget, generator=gen)


SIGMA_SEARCHES = {s.name: s for s in (
    SigmaSearch("sharpness", "sharpness", SHARPNESS_BOUNDS, False, _sharpness, "sharpness_depth",
                SHARPNESS_TOL, SHARPNESS_MIN_WIDTH),
    SigmaSearch("sharpness_mag", "magnitude-aware sharpness", SHARPNESS_MAG_BOUNDS, True, _sharpness,
                "sharpness_depth", SHARPNESS_TOL, SHARPNESS_MIN_WIDTH),
    SigmaSearch("pac_bayes", "PAC-Bayes flatness", PAC_BAYES_BOUNDS, False, _pac_bayes, "pac_bayes_depth",
                PAC_BAYES_TOL, PAC_BAYES_MIN_WIDTH),
    SigmaSearch("pac_bayes_mag", "magnitude-aware PAC-Bayes flatness", PAC_BAYES_MAG_BOUNDS, True, _pac_bayes,
                "pac_bayes_depth", PAC_BAYES_TOL, PAC_BAYES_MIN_WIDTH),
)}
SEARCHES = tuple(SIGMA_SEARCHES)  # the σ searches a context runs, by name; each serves three measures


def search_budget(preset: str, *, name: str = "preset") -> SearchBudget:
    """The SearchBudget of a preset name ("report" or "quick"); ConfigError for any other
    (`name`: the argument's name in the message, e.g. `--preset` for the CLI's check)."""
    try:
        return PRESETS[preset]()
    except KeyError:
        raise ConfigError(f"unknown {name} {preset!r}; use one of: {', '.join(PRESETS)}") from None


@dataclass
class MeasureContext:
    """Inputs shared by all measures of one model, with passes cached across measures.

    `reference_weights` returns θ₀ (docs/design.md §5) on demand, so that measures that
    don't need it never download it. `budget` sets the σ searches' work (the report's
    by default; `SearchBudget.quick()` for tests), `sharpness_worst` their worst case
    ("max", Jiang et al. 2019, or the report's "min"; see `sharpness_deviation`), and
    `seed` every random draw: each measure's stream derives from (seed, its purpose),
    so values don't depend on which other measures ran, or in what order. Each σ
    search runs once and serves its three measures; a search that raised is not run
    again, its error is raised to each of its measures.

    `on_search_step(search, step, sigma, deviation)` (optional) is called after every
    step of a σ search, e.g. to drive a progress bar; `search_warnings[search]` holds
    the warnings a search issued (they are re-issued too), e.g. its non-convergence.
    """

    model: nn.Module
    splits: DataSplits
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reference_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    batch_size: int = 512
    budget: SearchBudget = field(default_factory=SearchBudget)
    sharpness_worst: str = "max"
    seed: int = 0
    hessian_batch_size: int = 100  # test images for the Hessian measures
    on_search_step: Callable[[str, int, float, float], None] | None = None
    search_warnings: dict[str, list[str]] = field(default_factory=dict)
    _searches: dict[str, SearchResult | BaseException] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        check_worst_case(self.sharpness_worst, name="sharpness_worst")  # now, not when sharpness runs

    @cached_property
    def test_eval(self) -> dict[str, float]:
        return evaluate(self.model, self.splits.test_x, self.splits.test_y, batch_size=self.batch_size, device=self.device)

    @cached_property
    def train_eval(self) -> dict[str, float]:
        return evaluate(self.model, self.splits.train_x, self.splits.train_y, batch_size=self.batch_size, device=self.device)

    def generator(self, purpose: str, *, cpu: bool = False) -> torch.Generator:
        """A fresh generator on the device (or the CPU), seeded from (seed, purpose)."""
        seed = (self.seed * 1_000_003 + zlib.crc32(purpose.encode())) % 2**63
        try:
            gen = torch.Generator() if cpu else torch.Generator(device=self.device)
        except RuntimeError:  # a backend without its own generators: draw on the CPU
            gen = torch.Generator()
        return gen.manual_seed(seed)

    @property
    def train_loss(self) -> float:
        """L of docs/design.md §5: the true mean training cross-entropy."""
        return self.train_eval["loss"]

    @property
    def num_train(self) -> int:
        """m: the training-set size."""
        return int(self.splits.train_x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input of the data set's shape, [1, C, H, W]."""
        return (1, *self.splits.train_x.shape[1:])

    @cached_property
    def theta(self) -> torch.Tensor:
        """θ: the model's parameters (not buffers) as one flat vector [ω]."""
        return parameter_vector(self.model)

    @cached_property
    def theta0(self) -> torch.Tensor:
        """θ₀: the reference weights' parameters as a flat vector [ω] (their buffers are ignored)."""
        if self.reference_weights is None:
            raise ConfigError(
                "this measure needs reference weights θ₀; give MeasureContext a reference_weights callable"
            )
        return reference_vector(self.model, self.reference_weights())

    @cached_property
    def hessian_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One seeded random batch of `hessian_batch_size` test images and labels, on the device."""
        n = self.splits.test_x.shape[0]
        idx = torch.randperm(n, generator=self.generator("hessian_batch", cpu=True))[: self.hessian_batch_size]
        return self.splits.test_x[idx].to(self.device), self.splits.test_y[idx].to(self.device)

    @cached_property
    def hessian_lanczos(self) -> Lanczos:
        """One Lanczos run on the Hessian of `hessian_batch`, shared by both Hessian measures.

        Its generator depends on its purpose only, so the two values don't depend on
        which measure runs first (`Lanczos.top` reads the first converged step).
        """
        return hessian_lanczos(self.model, *self.hessian_batch, generator=self.generator("hessian_lanczos"))

    @cached_property
    def trace_method(self) -> str:
        """"exact" when `hessian_trace_exact` applies to the model, else "hutchinson"."""
        return trace_method(self.model)

    def hessian_top_eigenvalue(self) -> float:
        """`hessian_top_eigenvalue` of the model on `hessian_batch`, from the shared Lanczos run.

        When the trace is exact it needs no Lanczos basis, so the run's rows and
        gradient graph are freed at once (the eigenvalue stays readable from its history).
        """
        value = hessian_top_eigenvalue(self.model, *self.hessian_batch, lanczos=self.hessian_lanczos)
        if self.trace_method == "exact":
            self.hessian_lanczos.release()
        return value

    @cached_property
    def hessian_trace(self) -> TraceEstimate:
        """`hessian_trace_with_error` on `hessian_batch`: exact where it applies, else
        Hutchinson deflated by the shared Lanczos run.

        The run's basis (deflation × ω floats: ~0.7 GiB on a full-width VGG11) and
        gradient graph are freed afterwards; the eigenvalue, read before or after,
        needs only the run's history.
        """
        if self.trace_method == "exact":
            return hessian_trace_with_error(self.model, *self.hessian_batch, method="exact")
        run = self.hessian_lanczos
        try:
            run.top(1e-3, 100)  # the eigenvalue's steps, so that it can still be read once the basis is gone
            return hessian_trace_with_error(self.model, *self.hessian_batch, lanczos=run, method="hutchinson",
                                            generator=self.generator("hessian_trace"))
        finally:
            run.release()

    @cached_property
    def _train_on_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits.train_x.to(self.device), self.splits.train_y.to(self.device)

    def search(self, name: str) -> SearchResult:
        """The σ search `name` (one of SEARCHES), run once on first use and cached (errors too)."""
        if name not in SEARCHES:
            raise ConfigError(f"unknown σ search {name!r}; use one of: {', '.join(SEARCHES)}")
        if name not in self._searches:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    self._searches[name] = self._run_search(name)
                except Exception as exc:  # noqa: BLE001 -- cached, re-raised to every measure of the search
                    self._searches[name] = exc
            self.search_warnings[name] = [str(w.message) for w in caught]
            for w in caught:  # still visible to the caller's warning filters
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        result = self._searches[name]
        if isinstance(result, BaseException):
            raise result
        return result

    def completed_searches(self) -> dict[str, SearchResult]:
        """The searches that have run and returned a result, by name."""
        return {k: v for k, v in self._searches.items() if isinstance(v, SearchResult)}

    def _run_search(self, name: str) -> SearchResult:
        # The same calls as sharpness_sigma / pac_bayes_sigma, with a hook after each step.
        search, gen, count = SIGMA_SEARCHES[name], self.generator(name), 0

        def deviation(sigma: float) -> float:
            nonlocal count
            d = search.deviation(self, sigma, search.magnitude_aware, gen)
            count += 1
            if self.on_search_step is not None:
                self.on_search_step(name, count, sigma, float(d))
            return d

        return binary_search(deviation, search.bounds, depth=self.search_depth(name), tol=search.tol,
                             min_width=search.min_width, what=search.what, depth_field=search.depth_field)

    def search_depth(self, name: str) -> int:
        """The most steps search `name` may take under this context's budget."""
        return getattr(self.budget, SIGMA_SEARCHES[name].depth_field)
