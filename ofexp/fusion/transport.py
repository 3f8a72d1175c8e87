"""Optimal-transport plans between two sets of neurons, with uniform marginals."""

from __future__ import annotations

import warnings

import numpy as np

from ofexp.errors import ConfigError


def _ot():
    """POT, imported when a plan is solved: it pulls in scikit-learn and scipy.stats (over 1 s), and
    every ofexp command imports this module (through `ofexp.fusion`), a fusion alone uses it."""
    import ot

    return ot

SOLVERS = ("exact", "sinkhorn")

# EMD on a few hundred neurons needs more pivots than POT's default 1e5 allows;
# hitting the cap returns a suboptimal plan with only a warning (POT result code 3).
_EMD_MAX_ITER = 10_000_000
# One retry, with this many times the cap, before `solve_transport` refuses the plan.
_EMD_RETRY_FACTOR = 10
_EMD_OPTIMAL, _EMD_CAP_REACHED = 1, 3  # POT's log["result_code"] (0 is infeasible, 2 unbounded)
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
        return _ot().sinkhorn(a, b, cost, reg, method=method, numItermax=_SINKHORN_MAX_ITER)


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
    r"""EMD's plan for a cost [n, m] with uniform marginals where n divides m or m divides n, by assignment.

    With n = m and marginals 1/n the transport polytope is the Birkhoff polytope
    scaled by 1/n, whose vertices are permutation matrices, so the optimum is
    :math:`P_\sigma / n` for the permutation :math:`\sigma` minimising
    :math:`\sum_i M_{i \sigma(i)}` -- what ``scipy.optimize.linear_sum_assignment``
    finds in :math:`O(n^3)`, several times faster than the network simplex.

    With n = k m (k integer), replicate each column k times: :math:`M' = M \otimes 1_k^\top`,
    shape [n, n]. Splitting column j of a feasible T (marginals 1/n, 1/m) into k
    equal copies gives a feasible T' for M' (marginals 1/n, 1/n) of the same cost,
    and summing the k copies of a feasible T' gives a feasible T of the same cost;
    so both problems have one optimal value, and the optimal permutation of M',
    summed over copies, is an optimal T. Same for m = k n with rows replicated.
    The plan holds max(n, m) entries 1 / max(n, m). Where several plans tie, this
    and ``ot.emd`` return optimal plans of equal cost, not always the same one.
    """
    n, m = cost.shape
    side = max(n, m)
    if side % n or side % m:
        raise ValueError(f"assignment_plan: cost must be [n, m] with n dividing m or m dividing n, "
                         f"got shape {cost.shape}; use solve_transport")
    k_rows, k_cols = side // n, side // m  # one of them is 1
    from scipy.optimize import linear_sum_assignment  # imported when used, as POT (see _ot)

    rows, cols = linear_sum_assignment(np.repeat(np.repeat(cost, k_rows, axis=0), k_cols, axis=1))  # [side]
    plan = np.zeros(cost.shape, dtype=np.float64)  # [n, m]
    # The side without copies is matched once per index, so no (row, col) pair repeats.
    plan[rows // k_rows, cols // k_cols] = 1.0 / side
    return plan


def emd_plan(cost: np.ndarray) -> np.ndarray:
    """``ot.emd``'s plan for cost [n, m] with uniform marginals, or ValueError where it is not optimal.

    POT's network simplex stops after ``numItermax`` pivots and then returns the
    plan it has, with a warning only (``log["result_code"]`` 3). This retries once
    with ``_EMD_RETRY_FACTOR`` times the cap and refuses any plan POT does not call
    optimal (result code 1): an exact solver must not return an approximate plan.
    """
    n, m = cost.shape
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
    for cap in (_EMD_MAX_ITER, _EMD_MAX_ITER * _EMD_RETRY_FACTOR):
        with warnings.catch_warnings():
            # POT warns on every non-optimal stop; the result code below decides instead.
            warnings.simplefilter("ignore", UserWarning)
            plan, log = _ot().emd(a, b, cost, numItermax=cap, log=True)  # [n, m]
        if log["result_code"] == _EMD_OPTIMAL:
            return plan
        if log["result_code"] != _EMD_CAP_REACHED:  # infeasible or unbounded: more pivots do not help
            break
    reason = f"stopped at numItermax={cap:,}" if log["result_code"] == _EMD_CAP_REACHED else log["warning"]
    raise ValueError(f"solve_transport: exact EMD on a {n}x{m} cost found no optimal plan ({reason}); "
                     "use solver='sinkhorn', or layer widths that are equal or divide one another")


def solve_transport(cost: np.ndarray, solver: str = "exact", reg: float = 0.01) -> np.ndarray:
    r"""Transport plan between n source and m target neurons with uniform marginals.

    Solves

    .. math::
        T^* = \arg\min_{T \ge 0} \langle T, M \rangle
        \quad \text{s.t.} \quad T 1_m = 1_n / n, \quad T^\top 1_n = 1_m / m

    exactly (network simplex, ``ot.emd``, see ``emd_plan``; where n divides m or
    m divides n, the same optimum by linear assignment, see ``assignment_plan``)
    or with an entropic regulariser
    :math:`- \mathrm{reg} \cdot H(T)` (Sinkhorn, ``ot.sinkhorn``) on the cost
    scaled to :math:`M / \max M`, so that ``reg`` means the same for weight costs
    (~1) and activation costs (~10-1000); the exact plan does not change under
    that scaling. With n = m the exact plan is a permutation matrix divided by n.
    The exact solver returns an optimal plan or raises ValueError, never a plan
    cut short by an iteration cap.

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

    Raises
    ------
    ValueError
        A cost that is not a finite 2-D array; an exact solve that found no
        optimal plan; a Sinkhorn solve that did not converge.
    """
    check_solver(solver, reg)
    cost = _check_cost(cost)
    n, m = cost.shape
    if solver == "exact":
        return assignment_plan(cost) if max(n, m) % min(n, m) == 0 else emd_plan(cost)
    a, b = np.full(n, 1.0 / n), np.full(m, 1.0 / m)
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
