"""PAC-Bayes flatness measures (docs/design.md §5): σ of random (not adversarial) perturbations.

    result = pac_bayes_sigma(model, train_x, train_y, loss=L)   # plain, bounds [0, 0.2]
    flatness_init(result.sigma, theta, theta0, m)

The search machinery (budgets, vmap'd loss estimates, the binary search) is shared
with `ofexp.metrics.sharpness`.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

from ofexp.metrics.sharpness import (
    EPSILON,
    FlatModel,
    SearchBudget,
    SearchResult,
    as_flat64,
    binary_search,
    default_generator,
    draw_chunks,
    inverse_square,
    losses_on,
    magnitude_aware_bound,
    minibatch_indices,
    scaled_norm_bound,
    training_loss,
)
from ofexp.models import eval_mode

PAC_BAYES_BOUNDS = (0.0, 0.2)
PAC_BAYES_MAG_BOUNDS = (0.5, 4.0)
PAC_BAYES_TOL = 5e-3  # stop when |d - 0.1| < this ...
PAC_BAYES_MIN_WIDTH = 1e-4  # ... or the search interval is narrower than this


def pac_bayes_deviation(
    model: nn.Module, x: Tensor, y: Tensor, sigma: float, *, loss: float, magnitude_aware: bool = False,
    budget: SearchBudget = SearchBudget(), generator: torch.Generator | None = None, chunk: int | None = None,
) -> float:
    """d(σ) = |L − mean perturbed loss| over `budget.pac_bayes_draws` Gaussian draws.

    Plain noise is N(0, σ²) per coordinate; magnitude-aware noise N(0, σ²θᵢ² + ε²).
    Each draw's loss is the mean over `budget.pac_bayes_batches` random minibatches of
    the training data (x, y); `loss` is L, the true mean training cross-entropy.
    `chunk`: how many draws go through the network together (`draw_chunks`; the result
    does not depend on it).
    """
    with eval_mode(model):
        fm = FlatModel(model)
        gen = default_generator(generator)
        theta, draws = fm.theta, budget.pac_bayes_draws
        noise = torch.randn((draws, theta.numel()), generator=gen, device=gen.device, dtype=theta.dtype)
        noise = noise.to(theta.device)  # [D, ω]
        std = (sigma**2 * theta.pow(2) + EPSILON**2).sqrt() if magnitude_aware else sigma
        scoring = minibatch_indices(x.shape[0], draws, budget.pac_bayes_batches, budget.batch_size, gen)
        losses = torch.cat([losses_on(fm, theta + noise[c] * std, x, y, scoring[:, c])
                            for c in draw_chunks(draws, theta.device, chunk)])  # [D]
    return abs(loss - float(losses.mean()))


def pac_bayes_sigma(
    model: nn.Module, x: Tensor, y: Tensor, *, magnitude_aware: bool = False, loss: float | None = None,
    budget: SearchBudget = SearchBudget(), bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """σ (plain, bounds [0, 0.2]) or σ′ (magnitude-aware, bounds [0.5, 4]) of the PAC-Bayes measures.

    Binary search over `pac_bayes_deviation` on the training data (x, y): stops when
    |d − 0.1| < 5e-3 or the interval is narrower than 1e-4, after at most
    `budget.pac_bayes_depth` steps; warns and returns converged=False if it fails.
    `loss` is L (computed over (x, y) when None).
    """
    loss = training_loss(model, x, y) if loss is None else loss
    gen = default_generator(generator)
    kind = "magnitude-aware PAC-Bayes flatness" if magnitude_aware else "PAC-Bayes flatness"
    return binary_search(
        lambda s: pac_bayes_deviation(model, x, y, s, loss=loss, magnitude_aware=magnitude_aware,
                                      budget=budget, generator=gen),
        bounds or (PAC_BAYES_MAG_BOUNDS if magnitude_aware else PAC_BAYES_BOUNDS),
        depth=budget.pac_bayes_depth, tol=PAC_BAYES_TOL, min_width=PAC_BAYES_MIN_WIDTH,
        what=kind, depth_field="pac_bayes_depth",
    )


def pac_bayes_flatness(sigma: float) -> float:
    """1/σ² for the plain PAC-Bayes σ."""
    return inverse_square(sigma)


def flatness_init(sigma: float, theta, theta0, m: int) -> float:
    """‖θ−θ₀‖²/(2σ²) + C, with C = log(m/δ) + 10."""
    w = as_flat64(theta) - as_flat64(theta0)
    return scaled_norm_bound(sigma, float(w.pow(2).sum()), 0.5, m, w.numel())


def flatness_orig(sigma: float, theta, m: int) -> float:
    """‖θ‖²/(2σ²) + C (flatness_init with θ₀ = 0)."""
    w = as_flat64(theta)
    return scaled_norm_bound(sigma, float(w.pow(2).sum()), 0.5, m, w.numel())


def pac_bayes_mag_flat(sigma: float) -> float:
    """1/σ′² for the magnitude-aware PAC-Bayes σ′."""
    return inverse_square(sigma)


def flatness_mag_init(sigma: float, theta, theta0, m: int) -> float:
    """½ Σᵢ log[(ε² + (σ′²+1)‖θ−θ₀‖²/ω) / (ε² + σ′²(θᵢ−θ₀ᵢ)²)] + C."""
    return magnitude_aware_bound(sigma, as_flat64(theta) - as_flat64(theta0), m, 1.0)


def flatness_mag_orig(sigma: float, theta, m: int) -> float:
    """flatness_mag_init with θ in place of θ − θ₀."""
    return magnitude_aware_bound(sigma, theta, m, 1.0)
