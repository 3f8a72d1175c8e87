"""Optimal-transport plans between two sets of neurons, with uniform marginals."""

from __future__ import annotations

import warnings

import numpy as np
import ot
from scipy.optimize import linear_sum_assignment

from ofexp.errors import ConfigError

SOLVERS = ("exact", "sinkhorn")

# EMD on a few hundred neurons needs more pivots than POT's default 1e5 allows;
# hitting the cap silently returns a suboptimal plan.
_EMD_MAX_ITER = 10_000_000
_SINKHORN_MAX_ITER = 10_000
# Below this reg (relative to the largest cost) the plan is a permutation in all but name,
# and the log-domain solve ran its 10,000 iterations without converging (marginal error
# 1-3 at reg 1e-6 to 1e-12, 25-60 s per 256-neuron group): the exact solver gives it at once.
MIN_SINKHORN_REG = 1e-4
# A plan whose marginals are off by more than this (relative to 1/n) is not a transport plan.
_UNUSABLE_MARGINAL_ERROR = 0.1


def _check_cost(cost: np.ndarray) -> np.ndarray:
    cost = np.asarray(cost, dtype=np.float64)
    if cost.ndim != 2 or 0 in cost.shape:
        raise ValueError(f"solve_transport: cost must be a non-empty 2-D array, got shape {cost.shape}")
    if not np.isfinite(cost).all():
        raise ValueError("solve_transport: cost has NaN or inf entries; check the weights being aligned")
    return cost


def _sinkhorn_plan(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float, method: str) -> np.ndarray:
    with warnings.catch_warnings():
        # POT's own warnings name no fix; the caller checks the result and warns instead.
        warnings.simplefilter("ignore")
        return ot.sinkhorn(a, b, cost, reg, method=method, numItermax=_SINKHORN_MAX_ITER)


def _usable(plan: np.ndarray) -> bool:
    # Underflow in the plain solver gives NaN, or an all-zero plan with no warning of its own.
    return bool(np.isfinite(plan).all()) and abs(plan.sum() - 1.0) < 0.5


def _sinkhorn(a: np.ndarray, b: np.ndarray, cost: np.ndarray, reg: float) -> np.ndarray:
    plan = _sinkhorn_plan(a, b, cost, reg, "sinkhorn")
    if not _usable(plan):
        warnings.warn(
            f"sinkhorn with reg={reg} under/overflowed; retried in the log domain. "
            "Raise reg (e.g. 0.05) for a faster, stable solve",
            RuntimeWarning,
            stacklevel=3,
        )
        plan = _sinkhorn_plan(a, b, cost, reg, "sinkhorn_log")
    if not _usable(plan):
        raise ValueError(f"solve_transport: sinkhorn with reg={reg} gave no usable plan; raise reg (e.g. 0.05)")
    err = max(np.abs(plan.sum(1) - a).max() * len(a), np.abs(plan.sum(0) - b).max() * len(b))
    if err > _UNUSABLE_MARGINAL_ERROR:
        raise ValueError(f"solve_transport: sinkhorn with reg={reg} did not converge in {_SINKHORN_MAX_ITER} "
                         f"iterations (marginal error {err:.1e}); raise reg (e.g. 0.05) or use solver='exact'")
    if err > 1e-3:
        warnings.warn(
            f"sinkhorn with reg={reg} did not converge in {_SINKHORN_MAX_ITER} iterations "
            f"(marginal error {err:.1e}); raise reg (e.g. 0.05) or use solver='exact'",
            RuntimeWarning,
            stacklevel=3,
        )
    return plan


def assignment_plan(cost: np.ndarray) -> np.ndarray:
    r"""EMD's plan for a square cost [n, n] with uniform marginals, by linear assignment.

    With n = m and marginals 1/n the transport polytope is the Birkhoff polytope
    scaled by 1/n, whose vertices are permutation matrices, so the optimum is
    :math:`P_\sigma / n` for the permutation :math:`\sigma` minimising
    :math:`\sum_i M_{i \sigma(i)}` -- what ``scipy.optimize.linear_sum_assignment``
    finds in :math:`O(n^3)`, several times faster than the network simplex.
    Where several permutations tie, both solvers return an optimal plan of equal cost.
    """
    rows, cols = linear_sum_assignment(cost)
    plan = np.zeros_like(cost)  # [n, n]
    plan[rows, cols] = 1.0 / len(cost)
    return plan


def solve_transport(cost: np.ndarray, solver: str = "exact", reg: float = 0.01) -> np.ndarray:
    r"""Transport plan between n source and m target neurons with uniform marginals.

    Solves

    .. math::
        T^* = \arg\min_{T \ge 0} \langle T, M \rangle
        \quad \text{s.t.} \quad T 1_m = 1_n / n, \quad T^\top 1_n = 1_m / m

    exactly (network simplex, ``ot.emd``; for n = m, the same plan by linear
    assignment, see ``assignment_plan``) or with an entropic regulariser
    :math:`- \mathrm{reg} \cdot H(T)` (Sinkhorn, ``ot.sinkhorn``) on the cost
    scaled to :math:`M / \max M`, so that ``reg`` means the same for weight costs
    (~1) and activation costs (~10-1000); the exact plan does not change under
    that scaling. With n = m the exact plan is a permutation matrix divided by n.

    Parameters
    ----------
    cost : np.ndarray, shape [n, m]
        Ground cost M between source neuron i and target neuron j.
    solver : str
        ``"exact"`` or ``"sinkhorn"``.
    reg : float
        Entropic regularisation strength relative to the largest cost, for
        ``"sinkhorn"`` only; >= ``MIN_SINKHORN_REG`` (1e-4).

    Returns
    -------
    np.ndarray, shape [n, m], float64
        The plan T; each row sums to 1/n and each column to 1/m.
    """
    check_solver(solver, reg)
    cost = _check_cost(cost)
    n, m = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    if solver == "exact":
        return assignment_plan(cost) if n == m else ot.emd(a, b, cost, numItermax=_EMD_MAX_ITER)
    top = cost.max()
    return _sinkhorn(a, b, cost / top if top > 0 else cost, float(reg))


def check_solver(solver: str, reg: float, *, solver_name: str = "solver", reg_name: str = "reg") -> None:
    """ConfigError unless `solver` is one of SOLVERS and, for sinkhorn, `reg` >= MIN_SINKHORN_REG.

    The one statement of these rules: `solve_transport` applies them, and so does the CLI's
    `FusionOptions` before any run exists, naming its options (`--solver`, `--reg`)."""
    if solver not in SOLVERS:
        raise ConfigError(f"unknown {solver_name} {solver!r}; use one of {', '.join(SOLVERS)}")
    if solver != "sinkhorn":
        return
    if isinstance(reg, bool) or not (isinstance(reg, (int, float)) and 0 < reg < np.inf):
        raise ConfigError(f"{reg_name} must be a positive number for {solver_name} sinkhorn, got {reg!r}; "
                          "e.g. use 0.01")
    if reg < MIN_SINKHORN_REG:
        raise ConfigError(f"{reg_name} {reg:g} is below {MIN_SINKHORN_REG:g}, where Sinkhorn does not converge in "
                          f"bounded time; raise it (e.g. 0.01) or use {solver_name} exact for a sharp plan")
