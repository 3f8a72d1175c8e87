"""Sharpness measures (docs/design.md §5), and the perturbation-search machinery shared with PAC-Bayes flatness.

A search finds the perturbation scale σ at which the training loss moves by 0.1:

    result = sharpness_sigma(model, train_x, train_y, loss=L)   # plain, bounds [0, 7]
    sharpness_init(result.sigma, theta, theta0, m)

Parameters are handled as one flat vector θ [ω] (`parameter_vector`), and the Monte
Carlo draws are evaluated together: the perturbed vectors [draws, ω] go through the
network in one `torch.func.vmap` of `functional_call` (and `grad` for the ascent steps),
each draw on its own random minibatch. The model runs in eval mode throughout; its
mode is restored afterwards. Minibatches are drawn as in an epoch (see `minibatch_indices`).
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.models import eval_mode
from ofexp.training import evaluate

DELTA = 0.05  # δ of the bounds
EPSILON = 1e-3  # ε of the magnitude-aware measures
TARGET_DEVIATION = 0.1  # σ is the scale at which the loss deviates by this much
SHARPNESS_BOUNDS = (0.0, 7.0)
SHARPNESS_MAG_BOUNDS = (0.0, 2.0)
SHARPNESS_TOL = 1e-2  # stop when |d - 0.1| < this ...
SHARPNESS_MIN_WIDTH = 5e-3  # ... or the search interval is narrower than this
ASCENT_LR = 0.01
WORST_CASES = ("max", "min")


@dataclass(frozen=True)
class SearchBudget:
    """How much work the σ searches do. The defaults are the report's (docs/design.md §5).

    sharpness_*: binary-search depth, Monte Carlo draws per step, gradient-ascent steps
    per draw and minibatches for each draw's loss estimate; pac_bayes_*: the same
    without ascent; batch_size: images per minibatch (ascent and loss estimates).
    """

    sharpness_depth: int = 20
    sharpness_draws: int = 15
    ascent_steps: int = 20
    sharpness_batches: int = 10
    pac_bayes_depth: int = 30
    pac_bayes_draws: int = 20
    pac_bayes_batches: int = 20
    batch_size: int = 64

    def __post_init__(self) -> None:
        for name, value in vars(self).items():
            low = 0 if name == "ascent_steps" else 1
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"SearchBudget.{name}={value!r} must be an integer ≥ {low}")

    @classmethod
    def quick(cls) -> SearchBudget:
        """A tiny budget for tests and demos: seconds on a small model, noisy σ, not for results.

        Deep enough (12 / 18 steps) to reach the stopping widths of both searches, with
        2 draws, 2 ascent steps and 2 loss minibatches each.
        """
        return cls(sharpness_depth=12, sharpness_draws=2, ascent_steps=2, sharpness_batches=2,
                   pac_bayes_depth=18, pac_bayes_draws=2, pac_bayes_batches=2)


@dataclass(frozen=True)
class SearchResult:
    """The σ a search settled on and the deviation measured there.

    converged: |deviation - 0.1| met the tolerance. steps: deviations measured.
    stop_reason: "tolerance", "interval" (narrower than the minimum width) or "depth".
    history: every (σ, deviation) measured, in order.
    """

    sigma: float
    deviation: float
    converged: bool
    steps: int
    stop_reason: str
    history: tuple[tuple[float, float], ...] = ()


# ---------------------------------------------------------------- flat parameter vectors

def parameter_vector(model: nn.Module) -> Tensor:
    """θ: the model's parameters (`named_parameters`, not buffers), detached and flattened [ω]."""
    return torch.cat([p.detach().reshape(-1) for _, p in model.named_parameters()])


def reference_vector(model: nn.Module, state: dict[str, Tensor]) -> Tensor:
    """θ₀ from a state dict, in `parameter_vector`'s order, on θ's device; buffers in `state` are ignored."""
    parts = []
    for name, p in model.named_parameters():
        ref = state.get(name)
        if ref is None:
            raise IncompatibleModelsError(
                f"reference weights lack parameter {name!r}; use weights of the same architecture"
            )
        if ref.shape != p.shape:
            raise IncompatibleModelsError(
                f"reference weights give {name!r} shape {tuple(ref.shape)}, the model {tuple(p.shape)}; "
                "use weights of the same architecture and width"
            )
        parts.append(ref.detach().reshape(-1).to(device=p.device, dtype=p.dtype))
    return torch.cat(parts)


class FlatModel:
    """The model's mean cross-entropy as a function of a flat parameter vector, batched over draws."""

    def __init__(self, model: nn.Module):
        named = list(model.named_parameters())
        if not named:
            raise ValueError("the model has no parameters to perturb")
        self.model = model
        self.names = [k for k, _ in named]
        self.shapes = [p.shape for _, p in named]
        self.sizes = [p.numel() for _, p in named]
        self.theta = parameter_vector(model)  # [ω]
        self.buffers = {k: b.detach() for k, b in model.named_buffers()}
        self.batched_loss = vmap(self.loss)  # ([D, ω], [D, b, ...], [D, b]) -> [D]
        self.batched_grad = vmap(grad(self.loss))  # -> [D, ω]

    def loss(self, flat: Tensor, x: Tensor, y: Tensor) -> Tensor:
        params = {n: c.reshape(s) for n, c, s in zip(self.names, flat.split(self.sizes), self.shapes)}
        return F.cross_entropy(functional_call(self.model, (params, self.buffers), (x,)), y)


def minibatch_indices(n: int, draws: int, count: int, size: int, gen: torch.Generator) -> Tensor:
    """Indices [count, draws, b] of `count` random minibatches of b = min(size, n) per draw.

    A draw's minibatches are consecutive slices of a random permutation of range(n) (a
    fresh permutation when one runs out), like an epoch's shuffle: no image repeats
    within a minibatch, nor across them until the set is used up.
    """
    b = min(size, n)
    if count == 0:
        return torch.empty((0, draws, b), dtype=torch.long, device=gen.device)
    per_perm = n // b  # whole minibatches per permutation
    perms = -(-count // per_perm)
    idx = torch.stack([
        torch.cat([torch.randperm(n, generator=gen, device=gen.device)[: per_perm * b] for _ in range(perms)])
        for _ in range(draws)
    ])  # [draws, perms * per_perm * b]
    return idx[:, : count * b].reshape(draws, count, b).transpose(0, 1)


def _gather(x: Tensor, y: Tensor, idx: Tensor, device) -> tuple[Tensor, Tensor]:
    """x [D, b, ...], y [D, b] on `device` for indices idx [D, b]."""
    idx = idx.to(x.device)
    return x[idx].to(device), y[idx].to(device)


def draw_chunks(draws: int, device: torch.device, chunk: int | None = None) -> list[slice]:
    """The draws [0, draws) in the slices that go through the network together.

    ``chunk=None`` picks by device: one draw at a time on the CPU, all at once elsewhere.
    On the CPU a vmap over draws does the same FLOPs as a loop (convolutions on a
    minibatch are already compute-bound) and measured 0.7-1.0x of a per-draw loop's
    speed, while holding every draw's activations at once; on a GPU it batches small
    kernels into large ones.
    """
    if chunk is None:
        chunk = 1 if torch.device(device).type == "cpu" else draws
    if chunk < 1:
        raise ValueError(f"chunk must be ≥ 1 or None, got {chunk}")
    return [slice(i, min(i + chunk, draws)) for i in range(0, draws, chunk)]


@torch.no_grad()
def losses_on(fm: FlatModel, flats: Tensor, x: Tensor, y: Tensor, indices: Tensor) -> Tensor:
    """Each draw's loss [D] for perturbed vectors flats [D, ω]: the mean over the minibatches
    indices [batches, D, b] (from ``minibatch_indices``)."""
    total = torch.zeros(flats.shape[0], dtype=torch.float64, device=flats.device)
    for idx in indices:
        xb, yb = _gather(x, y, idx, flats.device)
        total += fm.batched_loss(flats, xb, yb).double()
    return total / max(1, indices.shape[0])


def default_generator(generator: torch.Generator | None) -> torch.Generator:
    """`generator`, or a fresh CPU one seeded 0 so that results are reproducible by default."""
    return generator if generator is not None else torch.Generator().manual_seed(0)


def training_loss(model: nn.Module, x: Tensor, y: Tensor) -> float:
    """L: the true mean cross-entropy over (x, y), in eval mode."""
    device = next(model.parameters()).device
    return evaluate(model, x, y, device=device)["loss"]


def binary_search(
    deviation: Callable[[float], float],
    bounds: tuple[float, float],
    *,
    depth: int,
    tol: float,
    min_width: float,
    what: str,
    depth_field: str,
) -> SearchResult:
    """Bisect [lo, hi] for the σ with deviation(σ) ≈ 0.1 (docs/design.md §5's rule); warn when it fails.

    Each step measures d at the midpoint; it stops when |d - 0.1| < tol, when the
    interval is narrower than min_width, or after `depth` steps. Otherwise d > 0.1
    moves the upper bound down to the midpoint, else the lower bound up.
    """
    lo, hi = float(bounds[0]), float(bounds[1])
    if not 0 <= lo < hi:
        raise ConfigError(f"{what}: bounds must satisfy 0 ≤ lower < upper, got {bounds}")
    history: list[tuple[float, float]] = []
    reason = "depth"
    for _ in range(depth):
        sigma = (lo + hi) / 2
        d = float(deviation(sigma))
        history.append((sigma, d))
        if abs(d - TARGET_DEVIATION) < tol:
            reason = "tolerance"
            break
        if hi - lo < min_width:
            reason = "interval"
            break
        if d > TARGET_DEVIATION:
            hi = sigma
        else:
            lo = sigma
    sigma, d = history[-1]
    result = SearchResult(sigma, d, reason == "tolerance", len(history), reason, tuple(history))
    if not result.converged:
        sigmas = [s for s, _ in history]
        if all(dv < TARGET_DEVIATION for _, dv in history) and max(sigmas) >= bounds[1] - 2 * min_width:
            hint = (f"the deviation stays below {TARGET_DEVIATION} up to the upper bound {bounds[1]}: "
                    "raise the upper bound (bounds=)")
        elif all(dv > TARGET_DEVIATION for _, dv in history) and min(sigmas) <= bounds[0] + 2 * min_width:
            hint = (f"the deviation exceeds {TARGET_DEVIATION} down to the lower bound {bounds[0]}: "
                    "lower the lower bound (bounds=)")
        elif reason == "depth":
            hint = f"raise the search depth (SearchBudget.{depth_field}, now {depth})"
        else:
            hint = (f"the deviation jumps across {TARGET_DEVIATION} between σ={lo:.6g} and σ={hi:.6g}: "
                    "raise the draws or loss minibatches of the SearchBudget for a smoother estimate")
        warnings.warn(
            f"{what}: σ search did not converge (deviation {d:.4g} at σ={sigma:.6g}, target "
            f"{TARGET_DEVIATION}±{tol}, stopped by {reason} after {len(history)} steps); {hint}",
            RuntimeWarning,
            stacklevel=3,
        )
    return result


# ---------------------------------------------------------------- sharpness search

def sharpness_deviation(
    model: nn.Module, x: Tensor, y: Tensor, sigma: float, *, loss: float, magnitude_aware: bool = False,
    budget: SearchBudget = SearchBudget(), worst: str = "max", generator: torch.Generator | None = None,
    chunk: int | None = None,
) -> float:
    """d(σ) = |L − worst perturbed loss|, with the perturbations found by gradient ascent.

    Each of `budget.sharpness_draws` draws starts at θ + U(−σ/2, σ/2), takes
    `budget.ascent_steps` ascent steps (lr 0.01) on random minibatches of the training
    data (x, y), after each one projecting the perturbation u = θ′ − θ onto the ℓ2 ball
    of radius σ (plain) or clipping |uᵢ| ≤ σ(|θᵢ| + ε) (magnitude-aware), and its loss is
    the mean over `budget.sharpness_batches` minibatches. `worst` = "max" takes the
    largest loss over the draws (the worst case: Jiang et al. 2019, "Fantastic
    Generalization Measures", and the default); "min" takes the smallest, as the
    report's code did. `loss` is L, the true mean training cross-entropy. `chunk`: how
    many draws go through the network together (`draw_chunks`; the random numbers, and
    so the result, do not depend on it).
    """
    check_worst_case(worst)
    with eval_mode(model):
        fm = FlatModel(model)
        gen = default_generator(generator)
        theta, draws, size = fm.theta, budget.sharpness_draws, budget.batch_size
        u = torch.rand((draws, theta.numel()), generator=gen, device=gen.device, dtype=theta.dtype).to(theta.device)
        u = u.sub_(0.5).mul_(sigma)  # U(−σ/2, σ/2) [D, ω]
        # All random numbers first, in a fixed order, so that chunking the draws changes nothing.
        ascent = minibatch_indices(x.shape[0], draws, budget.ascent_steps, size, gen)  # [steps, D, b]
        scoring = minibatch_indices(x.shape[0], draws, budget.sharpness_batches, size, gen)  # [batches, D, b]
        bound = sigma * (theta.abs() + EPSILON) if magnitude_aware else None  # magnitude-aware box [ω]
        losses = torch.cat([
            losses_on(fm, theta + _ascend(fm, theta, u[c], ascent[:, c], x, y, sigma, bound), x, y, scoring[:, c])
            for c in draw_chunks(draws, theta.device, chunk)
        ])  # [D]
    chosen = losses.max() if worst == "max" else losses.min()
    return abs(loss - float(chosen))


def _ascend(fm: FlatModel, theta: Tensor, u: Tensor, steps: Tensor, x: Tensor, y: Tensor, sigma: float,
            bound: Tensor | None) -> Tensor:
    """Gradient ascent on the perturbations u [d, ω] (in place) over minibatches steps [S, d, b],
    each step projected onto the ℓ2 ball of radius σ, or (``bound`` [ω]) the box |uᵢ| ≤ boundᵢ."""
    for idx in steps:
        xb, yb = _gather(x, y, idx, theta.device)
        u.add_(fm.batched_grad(theta + u, xb, yb), alpha=ASCENT_LR)
        if bound is not None:
            torch.maximum(torch.minimum(u, bound, out=u), -bound, out=u)
        else:  # the zero vector has norm 0 and stays put
            u.mul_((sigma / u.norm(dim=1, keepdim=True).clamp_min(1e-30)).clamp(max=1.0))
    return u


def sharpness_sigma(
    model: nn.Module, x: Tensor, y: Tensor, *, magnitude_aware: bool = False, loss: float | None = None,
    budget: SearchBudget = SearchBudget(), worst: str = "max", bounds: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
) -> SearchResult:
    """σ (plain, bounds [0, 7]) or σ′ (magnitude-aware, bounds [0, 2]) of the sharpness measures.

    Binary search over `sharpness_deviation` (see it for `worst`) on the training data
    (x, y): stops when |d − 0.1| < 1e-2 or the interval is narrower than 5e-3, after
    at most `budget.sharpness_depth` steps; warns and returns converged=False if it
    fails. `loss` is L (computed over (x, y) when None).
    """
    loss = training_loss(model, x, y) if loss is None else loss
    gen = default_generator(generator)
    kind = "magnitude-aware sharpness" if magnitude_aware else "sharpness"
    return binary_search(
        lambda s: sharpness_deviation(model, x, y, s, loss=loss, magnitude_aware=magnitude_aware,
                                      budget=budget, worst=worst, generator=gen),
        bounds or (SHARPNESS_MAG_BOUNDS if magnitude_aware else SHARPNESS_BOUNDS),
        depth=budget.sharpness_depth, tol=SHARPNESS_TOL, min_width=SHARPNESS_MIN_WIDTH,
        what=kind, depth_field="sharpness_depth",
    )


# ---------------------------------------------------------------- the formulas

def as_flat64(t) -> Tensor:
    """A vector (tensor or array, any shape) as a flat float64 CPU tensor, for exact formulas."""
    return torch.as_tensor(t).detach().reshape(-1).to("cpu", torch.float64)


def bound_constants(m: int, omega: int) -> tuple[float, float]:
    """(S, C) = (log(2ω/δ), log(m/δ) + 10) for training-set size m and parameter count ω."""
    return math.log(2 * omega / DELTA), math.log(m / DELTA) + 10


def inverse_square(sigma: float) -> float:
    """1/σ² (+inf at σ = 0)."""
    return math.inf if sigma == 0 else 1.0 / sigma**2


def scaled_norm_bound(sigma: float, sq_norm: float, factor: float, m: int, omega: int) -> float:
    """sq_norm·factor/σ² + C: the shape of sharpness_init/orig (factor S) and flatness_init/orig (factor ½)."""
    _, c = bound_constants(m, omega)
    if sigma == 0:
        return math.inf if sq_norm > 0 else c
    return sq_norm * factor / sigma**2 + c


def magnitude_aware_bound(sigma: float, w, m: int, extra: float) -> float:
    """½ Σᵢ log[(ε² + (σ² + extra)‖w‖²/ω) / (ε² + σ² wᵢ²)] + C over the coordinates of w."""
    w = as_flat64(w)
    omega = w.numel()
    _, c = bound_constants(m, omega)
    eps2, s2 = EPSILON**2, sigma**2
    numerator = eps2 + (s2 + extra) * float(w.pow(2).sum()) / omega
    return 0.5 * float((math.log(numerator) - torch.log(eps2 + s2 * w.pow(2))).sum()) + c


def sharpness_flatness(sigma: float) -> float:
    """1/σ² for the plain sharpness σ."""
    return inverse_square(sigma)


def sharpness_init(sigma: float, theta, theta0, m: int) -> float:
    """‖θ−θ₀‖²·S/σ² + C, with S = log(2ω/δ), C = log(m/δ) + 10 and ω = θ's length."""
    theta, theta0 = as_flat64(theta), as_flat64(theta0)
    s, _ = bound_constants(m, theta.numel())
    return scaled_norm_bound(sigma, float((theta - theta0).pow(2).sum()), s, m, theta.numel())


def sharpness_orig(sigma: float, theta, m: int) -> float:
    """‖θ‖²·S/σ² + C (sharpness_init with θ₀ = 0)."""
    theta = as_flat64(theta)
    s, _ = bound_constants(m, theta.numel())
    return scaled_norm_bound(sigma, float(theta.pow(2).sum()), s, m, theta.numel())


def sharpness_mag_flat(sigma: float) -> float:
    """1/σ′² for the magnitude-aware sharpness σ′."""
    return inverse_square(sigma)


def sharpness_mag_init(sigma: float, theta, theta0, m: int) -> float:
    """½ Σᵢ log[(ε² + (σ′² + 4S)‖θ−θ₀‖²/ω) / (ε² + σ′²(θᵢ−θ₀ᵢ)²)] + C."""
    w = as_flat64(theta) - as_flat64(theta0)
    s, _ = bound_constants(m, w.numel())
    return magnitude_aware_bound(sigma, w, m, 4 * s)


def sharpness_mag_orig(sigma: float, theta, m: int) -> float:
    """sharpness_mag_init with θ in place of θ − θ₀."""
    w = as_flat64(theta)
    s, _ = bound_constants(m, w.numel())
    return magnitude_aware_bound(sigma, w, m, 4 * s)


def check_worst_case(worst: str, *, name: str = "worst") -> None:
    """ConfigError unless `worst` is one of WORST_CASES. The one statement of the rule:
    `sharpness_deviation` and `MeasureContext` apply it, and so does the CLI's
    `EvaluateOptions` before any run exists, as `--sharpness-worst`."""
    if worst not in WORST_CASES:
        raise ConfigError(f"unknown {name} {worst!r}; use 'max' (Jiang et al. 2019) or 'min' (the report's choice)")
