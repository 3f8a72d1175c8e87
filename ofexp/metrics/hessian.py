"""Parameter-space curvature (DESIGN §5): top eigenvalue and trace of the loss Hessian.

Both use Hessian-vector products (HVPs) of the mean cross-entropy of one batch with
respect to all of the model's parameters (`named_parameters`, not buffers), with the
model in eval mode. The gradient graph is built once (`create_graph=True`) and every
HVP is one more backward pass through it (double backward): on CPU this is about 3x
faster than re-running forward-over-reverse (`torch.func.jvp` over `torch.func.grad`),
which would rebuild the graph for every product.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from scipy.linalg import eigh_tridiagonal
from torch import Tensor, nn
from torch.func import functional_call


@dataclass(frozen=True)
class TraceEstimate:
    """Hutchinson's estimate of tr(H): the running mean, its standard error and sample count.

    `stderr` is the sample standard deviation over √samples (nan with one sample).
    """

    trace: float
    stderr: float
    samples: int


def _hvp_operator(model: nn.Module, inputs: Tensor, targets: Tensor) -> tuple[Callable[[Tensor], Tensor], int, Tensor]:
    """(hvp, n, template): hvp(v) = H v for flat v [n]; template is a flat [n] tensor of the params' dtype/device."""
    names = [k for k, _ in model.named_parameters()]
    params = [p.detach().requires_grad_(True) for _, p in model.named_parameters()]
    if not params:
        raise ValueError("the model has no parameters; the Hessian is empty")
    buffers = {k: b.detach() for k, b in model.named_buffers()}
    was_training = model.training
    model.eval()
    try:
        with torch.enable_grad():
            logits = functional_call(model, ({**dict(zip(names, params)), **buffers}), (inputs,))  # [b, classes]
            loss = F.cross_entropy(logits, targets)
            grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True, materialize_grads=True)
            flat_grad = torch.cat([g.reshape(-1) for g in grads])  # [n]
    finally:
        model.train(was_training)
    n = flat_grad.numel()
    template = torch.cat([p.detach().reshape(-1) for p in params])

    def hvp(v: Tensor) -> Tensor:
        if not flat_grad.requires_grad:  # the loss is linear in every parameter: H = 0
            return torch.zeros_like(v)
        with torch.enable_grad():
            parts = torch.autograd.grad(
                flat_grad, params, grad_outputs=v, retain_graph=True, allow_unused=True, materialize_grads=True
            )
        return torch.cat([p.reshape(-1) for p in parts])

    return hvp, n, template


def _default_generator(generator: torch.Generator | None) -> torch.Generator:
    return generator if generator is not None else torch.Generator().manual_seed(0)


def hessian_top_eigenvalue(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    tol: float = 1e-3,
    max_iter: int = 100,
    generator: torch.Generator | None = None,
) -> float:
    """Largest (algebraic) eigenvalue of the Hessian of the mean cross-entropy of (inputs, targets).

    Lanczos with full reorthogonalisation on HVPs, from a random start (`generator`; None
    means seed 0). Stops when the Ritz pair's residual ‖H y − θ y‖ ≤ tol·|θ| (which
    bounds the eigenvalue's relative error by tol), when the Krylov space is invariant,
    or after `max_iter` HVPs (then warns). The report used power iteration with the same
    budget; for a trained network's Hessian, whose dominant eigenvalue is its largest
    positive one, both give the same number, Lanczos in far fewer products.
    """
    if max_iter < 1:
        raise ValueError(f"hessian_top_eigenvalue: max_iter must be ≥ 1, got {max_iter}")
    hvp, n, template = _hvp_operator(model, inputs, targets)
    gen = _default_generator(generator)
    steps = min(max_iter, n)
    basis = template.new_empty((min(steps, 16), n))  # grown by doubling; rows are orthonormal q's
    q = torch.randn(n, generator=gen, device=gen.device, dtype=template.dtype).to(template.device)
    q /= q.norm()
    alphas: list[float] = []
    betas: list[float] = []
    theta, converged = 0.0, False
    for k in range(steps):
        if k == basis.shape[0]:
            basis = torch.cat([basis, basis.new_empty((min(basis.shape[0], steps - k), n))])
        basis[k] = q
        w = hvp(q)
        alpha = float(w @ q)
        w = w - alpha * q - (betas[-1] * basis[k - 1] if k else 0.0)
        active = basis[: k + 1]
        for _ in range(2):  # "twice is enough" (Kahan–Parlett) keeps the basis orthogonal in float32
            w -= active.T @ (active @ w)
        beta = float(w.norm())
        alphas.append(alpha)
        values, vectors = eigh_tridiagonal(np.array(alphas), np.array(betas), select="i", select_range=(k, k))
        theta = float(values[-1])
        residual = beta * abs(float(vectors[-1, -1]))
        if residual <= tol * abs(theta) or beta <= 1e-10 * max(abs(theta), 1.0):
            converged = True
            break
        betas.append(beta)
        q = w / beta
    if not converged and steps < n:
        warnings.warn(
            f"hessian_top_eigenvalue: Lanczos did not reach relative tolerance {tol} in {max_iter} "
            f"Hessian-vector products; raise max_iter or tol",
            RuntimeWarning,
            stacklevel=2,
        )
    return theta


def hessian_trace_with_error(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    max_samples: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> TraceEstimate:
    """Hutchinson's estimate of the Hessian's trace, with its standard error.

    Averages zᵀHz over Rademacher vectors z (entries ±1, from `generator`; None means
    seed 0). Stops when the running mean changes by less than `tol` relative to its
    previous value (|mean_k − mean_{k−1}| < tol·(|mean_{k−1}| + 1e-6)), or after
    `max_samples` samples. `tol=0` always takes `max_samples`.
    """
    if max_samples < 1:
        raise ValueError(f"hessian_trace: max_samples must be ≥ 1, got {max_samples}")
    hvp, n, template = _hvp_operator(model, inputs, targets)
    gen = _default_generator(generator)
    samples: list[float] = []
    previous = None
    for _ in range(max_samples):
        z = torch.randint(0, 2, (n,), generator=gen, device=gen.device).to(template)
        z = z.mul_(2).sub_(1)
        samples.append(float(z @ hvp(z)))
        mean = float(np.mean(samples))
        if previous is not None and abs(mean - previous) < tol * (abs(previous) + 1e-6):
            break
        previous = mean
    k = len(samples)
    stderr = float(np.std(samples, ddof=1) / math.sqrt(k)) if k > 1 else math.nan
    return TraceEstimate(float(np.mean(samples)), stderr, k)


def hessian_trace(
    model: nn.Module,
    inputs: Tensor,
    targets: Tensor,
    *,
    max_samples: int = 100,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> float:
    """tr(H) of the mean cross-entropy of (inputs, targets); see `hessian_trace_with_error`."""
    return hessian_trace_with_error(
        model, inputs, targets, max_samples=max_samples, tol=tol, generator=generator
    ).trace
