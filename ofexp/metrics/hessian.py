"""Parameter-space curvature (docs/design.md §5): top eigenvalue and trace of the loss Hessian.

Both use Hessian-vector products (HVPs) of the mean cross-entropy of one batch with
respect to all of the model's parameters (`named_parameters`, not buffers), with the
model in eval mode. The gradient graph is built once (`create_graph=True`) and every
HVP is one more backward pass through it (double backward): on CPU this is about 3x
faster than re-running forward-over-reverse (`torch.func.jvp` over `torch.func.grad`),
which would rebuild the graph for every product. Batching several products (vmap over
vectors, `is_grads_batched`) measured no cheaper per vector on CPU, so every product
is one vector and the savings come from needing fewer of them:

- one `Lanczos` run serves both quantities: its first steps give the top eigenvalue,
  and its orthonormal basis Q [k, ω] deflates the trace estimate;
- tr(H) = tr(QᵀHQ) + tr(PHP) with P = I − QQᵀ. The first term is Σ αᵢ, the Lanczos
  diagonal, for free; Hutchinson's estimator only samples the remainder, whose
  variance lacks the dominant eigen-directions (on a trained VGG11 the per-sample
  standard deviation drops about 4×, so ~16× fewer samples reach the same error).

For piecewise-linear networks (ofexp's MLP, VGG11 and ResNet18) the trace needs no
HVPs at all: `hessian_trace_exact` computes it exactly from per-sample gradients, at the
cost of about C backward passes, and `hessian_trace` uses it by default (method="auto").
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call

from ofexp.metrics.hessian_exact import exact_trace_unsupported, hessian_trace_exact
from ofexp.models import eval_mode

DEFLATION_STEPS = 20  # Lanczos vectors deflated from the trace: past ~20 the variance hardly drops on VGG11
# Memory for the deflation rows of the Hutchinson fallback (ω floats each): a full-width VGG11
# (ω = 9.2M, 35 MiB a row) would then deflate only the eigenvalue's own steps.
MAX_BASIS_MIB = 256.0
TRACE_METHODS = ("auto", "exact", "hutchinson")


@dataclass(frozen=True)
class TraceEstimate:
    """An estimate of tr(H): value, standard error, Hutchinson samples, deflated dimensions and method.

    method "hutchinson": trace = Σ αᵢ (exact part, `deflated` Lanczos directions) + the
    mean of the samples zᵀPHPz; `stderr` is the samples' standard deviation over
    √samples (nan with one). method "exact" (`hessian_trace_exact`): stderr 0, no samples.
    """

    trace: float
    stderr: float
    samples: int
    deflated: int = 0
    method: str = "hutchinson"


def trace_method(model: nn.Module, method: str = "auto") -> str:
    """The trace method `hessian_trace(method=...)` uses for `model`: "exact" or "hutchinson".

    "auto" picks "exact" when `hessian_trace_exact` applies (`exact_trace_unsupported`
    gives no reason), else "hutchinson"; ValueError for an unknown method or "exact" on
    a model it does not apply to.
    """
    if method not in TRACE_METHODS:
        raise ValueError(f"hessian_trace: method must be one of {', '.join(TRACE_METHODS)}, got {method!r}")
    if method == "hutchinson":
        return method
    reason = exact_trace_unsupported(model)
    if reason is None:
        return "exact"
    if method == "exact":
        raise ValueError(f"hessian_trace: method='exact' does not apply: {reason}; use method='hutchinson'")
    return "hutchinson"


class HessianOperator:
    """v [ω] ↦ H v for the mean cross-entropy of (inputs, targets); `products` counts the HVPs."""

    def __init__(self, model: nn.Module, inputs: Tensor, targets: Tensor):
        names = [k for k, _ in model.named_parameters()]
        self.params = [p.detach().requires_grad_(True) for _, p in model.named_parameters()]
        if not self.params:
            raise ValueError("the model has no parameters; the Hessian is empty")
        buffers = {k: b.detach() for k, b in model.named_buffers()}
        with eval_mode(model), torch.enable_grad():
            logits = functional_call(model, ({**dict(zip(names, self.params)), **buffers}), (inputs,))  # [b, c]
            loss = F.cross_entropy(logits, targets)
            grads = torch.autograd.grad(loss, self.params, create_graph=True, allow_unused=True,
                                        materialize_grads=True)
            self.grads = grads  # per parameter, with their graph (no flat copy: 35 MiB at full width)
        self.sizes = [g.numel() for g in grads]
        self.n = sum(self.sizes)
        self.dtype, self.device = self.params[0].dtype, self.params[0].device
        self.products = 0

    def __call__(self, v: Tensor) -> Tensor:
        self.products += 1
        live = [i for i, g in enumerate(self.grads) if g.requires_grad]
        if not live:  # the loss is linear in every parameter: H = 0
            return torch.zeros_like(v)
        pieces = [c.view_as(g) for c, g in zip(v.split(self.sizes), self.grads)]
        with torch.enable_grad():
            parts = torch.autograd.grad([self.grads[i] for i in live], self.params,
                                        grad_outputs=[pieces[i] for i in live], retain_graph=True,
                                        allow_unused=True, materialize_grads=True)
        return torch.cat([p.reshape(-1) for p in parts])


def hessian_operator(model: nn.Module, inputs: Tensor, targets: Tensor) -> HessianOperator:
    """The HVP operator of the mean cross-entropy of (inputs [b, ...], targets [b]); see HessianOperator."""
    return HessianOperator(model, inputs, targets)


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


class Lanczos:
    """Resumable Lanczos with full reorthogonalisation on a HessianOperator.

    After k steps the rows q₁..q_k [k, ω] are orthonormal and QᵀHQ = T_k, the
    tridiagonal matrix of `alphas` (diagonal, αᵢ = qᵢᵀHqᵢ) and `betas`. `history[k-1]`
    is (θ_k, r_k): T_k's largest eigenvalue (a Ritz value, ≤ λ_max) and its residual
    ‖Hy − θy‖ = β_k·|last entry of T_k's eigenvector|; some eigenvalue of H lies within
    r_k of θ_k. Steps stop for good once the Krylov space is invariant (β ≈ 0).
    The rows take k·ω floats: `release()` frees them (and the operator's graph).
    """

    def __init__(self, operator: HessianOperator, generator: torch.Generator | None = None):
        self.op = operator
        gen = _default_generator(generator)
        q = torch.randn(operator.n, generator=gen, device=gen.device, dtype=operator.dtype).to(operator.device)
        self._next = q / q.norm()
        self.rows: list[Tensor] = []  # a list, not a grown matrix: no copy when it grows
        self.alphas: list[float] = []
        self.betas: list[float] = []
        self.history: list[tuple[float, float]] = []
        self.invariant = False
        self.released = False

    @property
    def steps(self) -> int:
        return len(self.alphas)

    def _orthogonalise(self, w: Tensor) -> Tensor:
        for _ in range(2):  # "twice is enough" (Kahan–Parlett) keeps the basis orthogonal in float32
            for q in self.rows:
                w.add_(q, alpha=-float(q @ w))  # in place: no ω-sized temporary per row
        return w

    def step(self) -> None:
        """One more Lanczos step (one HVP); a no-op once the Krylov space is invariant."""
        from scipy.linalg import eigh_tridiagonal  # here: a step that measures no Hessian imports no scipy.linalg

        if self.released:
            raise RuntimeError("this Lanczos run was released; build a new one (hessian_lanczos)")
        if self.invariant or self.steps >= self.op.n:
            self.invariant = True
            return
        q = self._next
        w = self.op(q)
        alpha = float(w @ q)
        w.add_(q, alpha=-alpha)  # in place: at full width every ω-sized temporary is 35 MiB of peak memory
        if self.rows:
            w.add_(self.rows[-1], alpha=-self.betas[-1])
        w = self._orthogonalise(w)
        self.rows.append(q)
        self.alphas.append(alpha)
        beta = float(w.norm())
        values, vectors = eigh_tridiagonal(np.array(self.alphas), np.array(self.betas),
                                           select="i", select_range=(self.steps - 1, self.steps - 1))
        theta = float(values[-1])
        self.history.append((theta, beta * abs(float(vectors[-1, -1]))))
        self.betas.append(beta)
        # β at rounding level: w is noise, the Krylov space is invariant (to working precision)
        if beta <= 100 * torch.finfo(self.op.dtype).eps * max(abs(theta), abs(alpha), 1e-30):
            self.invariant = True
        else:  # a small β magnifies what rounding left along the rows: clean the new vector once more
            w = self._orthogonalise(w.div_(beta))
            self._next = w.div_(w.norm())

    def top(self, tol: float, max_iter: int) -> tuple[float, bool, int]:
        """(θ, converged, steps): the first step k ≤ max_iter with r_k ≤ tol·|θ_k|, stepping on as needed.

        Taking the first such k from `history` makes the answer independent of how many
        steps other callers (the trace's deflation) took before.
        """
        for k in range(max_iter):
            if k == self.steps:
                if self.invariant or self.released:
                    break
                self.step()
                if k == self.steps:  # invariant: no new step
                    break
            theta, residual = self.history[k]
            if residual <= tol * abs(theta) or (self.invariant and k == self.steps - 1):
                return theta, True, k + 1
        k = min(max_iter, self.steps)
        return self.history[k - 1][0], self.invariant and k == self.steps, k

    def extend(self, steps: int) -> None:
        """Step until at least `steps` rows exist (or the space is invariant)."""
        while self.steps < steps and not self.invariant and not self.released:
            self.step()

    def project_out(self, z: Tensor, *, copy: bool = True) -> Tensor:
        """P z = z − QQᵀz [ω]: z without its components along the rows (in z itself if copy=False)."""
        if self.released:
            raise RuntimeError("this Lanczos run was released; build a new one to deflate a trace")
        z = z.clone() if copy else z
        for q in self.rows:
            z.add_(q, alpha=-float(q @ z))
        return z

    def release(self) -> None:
        """Free the rows and the operator's graph; `history` and the coefficients stay."""
        self.rows, self.op, self._next, self.released = [], None, None, True


def hessian_lanczos(model: nn.Module, inputs: Tensor, targets: Tensor,
                    generator: torch.Generator | None = None) -> Lanczos:
    """A fresh Lanczos run (no steps yet) on the Hessian of the mean cross-entropy of (inputs, targets)."""
    return Lanczos(hessian_operator(model, inputs, targets), generator)


def hessian_top_eigenvalue(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
    lanczos: Lanczos | None = None,
) -> float:
    """Largest (algebraic) eigenvalue of the Hessian H [ω, ω] of the mean cross-entropy of (inputs, targets).

    inputs [b, ...], targets [b] (class indices). Lanczos with full reorthogonalisation
    on HVPs, from a random start (`generator`; None means seed 0). Stops at the first
    step whose Ritz pair has residual ‖Hy − θy‖ ≤ tol·|θ| (so an eigenvalue of H lies
    within tol·|θ| of θ), when the Krylov space is invariant, or after `max_iter` HVPs
    (then warns). The report used power iteration with the same budget; for a trained
    network's Hessian, whose dominant eigenvalue is its largest positive one, both give
    the same number, Lanczos in far fewer products. Pass `lanczos` (from
    `hessian_lanczos`) to share one run, and its HVPs, with `hessian_trace`.
    """
    if max_iter < 1:
        raise ValueError(f"hessian_top_eigenvalue: max_iter must be ≥ 1, got {max_iter}")
    run = lanczos if lanczos is not None else hessian_lanczos(model, inputs, targets, generator)
    theta, converged, _ = run.top(tol, max_iter)
    if not converged:
        warnings.warn(
            f"hessian_top_eigenvalue: Lanczos did not reach relative tolerance {tol} in {max_iter} "
            f"Hessian-vector products; raise max_iter or tol",
            RuntimeWarning,
            stacklevel=2,
        )
    return theta


def _deflated_samples(run: Lanczos, max_samples: int, min_samples: int, tol: float,
                      gen: torch.Generator) -> list[float]:
    """Hutchinson samples (Pz)ᵀH(Pz), z Rademacher [ω], until stderr ≤ tol·|trace| or max_samples."""
    op, exact = run.op, float(sum(run.alphas))
    samples: list[float] = []
    for k in range(1, max_samples + 1):
        z = torch.randint(0, 2, (op.n,), generator=gen, device=gen.device, dtype=op.dtype).to(op.device)
        z = run.project_out(z.mul_(2).sub_(1), copy=False)
        samples.append(float(z @ op(z)))
        if tol > 0 and k >= min_samples:
            stderr = float(np.std(samples, ddof=1)) / math.sqrt(k)
            if stderr <= tol * abs(exact + float(np.mean(samples))):
                break
    return samples


def hessian_trace_with_error(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    max_samples: int = 100,
    tol: float = 0.05,
    min_samples: int = 8,
    deflation: int = DEFLATION_STEPS,
    max_basis_mib: float = MAX_BASIS_MIB,
    generator: torch.Generator | None = None,
    lanczos: Lanczos | None = None,
    method: str = "auto",
) -> TraceEstimate:
    """tr(H) of the mean cross-entropy of (inputs [b, ...], targets [b]), with its standard error.

    `method`: "exact" (`hessian_trace_exact`, for piecewise-linear networks: no
    sampling error, about C backward passes; the other options are then unused),
    "hutchinson" (below), or "auto" (default): exact where it applies (`trace_method`).

    Deflated Hutchinson: with Q [k, ω] the orthonormal basis of `deflation` Lanczos
    steps and P = I − QQᵀ, tr(H) = tr(QᵀHQ) + tr(PHP) exactly. tr(QᵀHQ) = Σ αᵢ, the
    Lanczos diagonal; tr(PHP) = E[(Pz)ᵀH(Pz)] for Rademacher z (entries ±1), so the
    estimate is unbiased, and its variance 2Σ_{i≠j}(PHP)ᵢⱼ² lacks H's dominant
    directions. `deflation=0` on a fresh run is plain Hutchinson. The rows take ω floats each: beyond
    the steps the run already took (the eigenvalue's, when shared), it only steps on
    while they fit in `max_basis_mib`. Samples continue until the standard
    error is at most `tol` relative to the estimate (after at least `min_samples`) or
    `max_samples` are taken; `tol=0` always takes `max_samples`. The report stopped when
    the running mean moved by < 1e-3 relative, a random stop that left a standard error
    of 5–8% on VGG11; the 5% default is at least that precise, and `stderr` says how
    precise each value is. `generator` (None: seed 0) draws the Lanczos start (unless
    `lanczos`, a shared run, is given) and the probes.
    """
    for name, value, low in (("max_samples", max_samples, 1), ("min_samples", min_samples, 1),
                             ("deflation", deflation, 0)):
        if value < low:
            raise ValueError(f"hessian_trace: {name} must be ≥ {low}, got {value}")
    if tol < 0:
        raise ValueError(f"hessian_trace: tol must be ≥ 0, got {tol}")
    if trace_method(model, method) == "exact":
        return TraceEstimate(hessian_trace_exact(model, inputs, targets), 0.0, 0, 0, "exact")
    gen = _default_generator(generator)
    run = lanczos if lanczos is not None else hessian_lanczos(model, inputs, targets, gen)
    if run.released:
        raise ValueError("hessian_trace: lanczos was released; pass a live run (hessian_lanczos)")
    row_mib = run.op.n * torch.finfo(run.op.dtype).bits / 8 / 2**20
    run.extend(min(deflation, int(max_basis_mib // row_mib)))
    samples = _deflated_samples(run, max_samples, min(min_samples, max_samples), tol, gen)
    k = len(samples)
    stderr = float(np.std(samples, ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return TraceEstimate(float(sum(run.alphas)) + float(np.mean(samples)), stderr, k, run.steps)


def hessian_trace(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    **options,
) -> float:
    """tr(H) of the mean cross-entropy of (inputs, targets); options and method: `hessian_trace_with_error`."""
    return hessian_trace_with_error(model, inputs, targets, **options).trace
