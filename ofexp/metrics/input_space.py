"""Input-space measure (docs/design.md §5): a lower bound on the Lipschitz constant of the network."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
from torch import nn

from ofexp.models import eval_mode


def lipschitz(
    model: nn.Module,
    input_shape: Sequence[int],
    *,
    max_iter: int = 500,
    tol: float = 1e-8,
    generator: torch.Generator | None = None,
    threads: int | None = 1,
) -> float:
    """Lower bound on the Lipschitz constant of g(x) = f(x) - f(0), by power iteration.

    Starting from a random unit v of shape `input_shape` (one input, e.g. [1, C, H, W]),
    repeat v <- ∇_v ‖g(v)‖² = 2 J_g(v)ᵀ g(v), then v <- v / ‖v‖, until
    ‖v - v_prev‖ < `tol` or `max_iter` iterations. Returns ‖g(v)‖₂ for the final unit v,
    which is ≤ the Lipschitz constant of g (and of f), hence a lower bound.

    For a bias-free ReLU network g(v) = J(v) v, so each step is a JᵀJ v product and, for
    a linear map A, the result is A's largest singular value.

    Each iteration costs one forward pass and one backward pass to the input only
    (`torch.autograd.grad` with respect to v: the engine skips the weights'
    gradients); f(0) is computed once. Plain autograd on the module is about 20%
    faster here than `torch.func.vjp` over `functional_call` at batch 1, where
    per-op overhead dominates. The model runs in eval mode (its mode is restored)
    and its parameters get no `.grad`. `generator` draws the start vector (None
    means a fresh CPU one seeded 0, so the result is reproducible by default).

    `threads` (CPU only): torch's intra-op threads during the iteration, restored
    afterwards; None keeps the process setting. One input is too little work to split:
    with 2 threads each op waits at an OpenMP barrier, and on a shared 2-core machine a
    descheduled thread stalls every op (measured 10-20x slower per iteration than one
    thread under load; VGG11, full and 0.125 width). The iteration is the same either
    way; only float rounding order differs.

    In float32 the stop rule ‖v - v_prev‖ < 1e-8 is rarely met: on ReLU networks the
    activation pattern keeps changing and v does not settle (‖v - v_prev‖ ≈ 1 for 500
    iterations on VGG11), so most runs take all `max_iter` iterations, as the report's
    did. The iteration is then sensitive to float rounding: on a full-width VGG11 the
    report's own loop gives 0.17485 on one thread and 0.17212 on two after 500
    iterations, so values agree to ~1e-3 only at the same thread count.
    """
    if max_iter < 1:
        raise ValueError(f"lipschitz: max_iter must be ≥ 1, got {max_iter}")
    if threads is not None and threads < 1:
        raise ValueError(f"lipschitz: threads must be ≥ 1 or None, got {threads}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    dtype = first.dtype if first is not None else torch.float32
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    with eval_mode(model), _intra_op_threads(threads if device.type == "cpu" else None):
        return _power_iteration(model, input_shape, max_iter, tol, gen, device, dtype)


@contextmanager
def _intra_op_threads(threads: int | None) -> Iterator[None]:
    """torch.set_num_threads(threads) for the block (None: unchanged), then the old setting."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _power_iteration(model: nn.Module, input_shape: Sequence[int], max_iter: int, tol: float,
                     gen: torch.Generator, device: torch.device, dtype: torch.dtype) -> float:
    """The iteration of `lipschitz`, on a model already in eval mode."""
    with torch.no_grad():
        f0 = model(torch.zeros(tuple(input_shape), device=device, dtype=dtype))  # [1, classes]
    v = torch.randn(tuple(input_shape), generator=gen, device=gen.device, dtype=dtype).to(device)
    v = v / v.norm()  # [1, C, H, W], unit norm
    g = None
    with torch.enable_grad():
        for _ in range(max_iter):
            x = v.detach().requires_grad_(True)
            out = model(x)
            g = (out - f0).detach()
            (grad,) = torch.autograd.grad(out, x, grad_outputs=2.0 * g)  # ∇_v ‖g(v)‖² = 2 J_gᵀ g
            norm = grad.norm()
            if not torch.isfinite(norm) or norm == 0:  # a flat region: v is as good as it gets
                break
            v_prev, v = v, grad / norm
            g = None  # g belongs to v_prev
            if (v - v_prev).norm() < tol:
                break
    with torch.no_grad():
        if g is None:
            g = model(v) - f0
        return float(g.norm())
