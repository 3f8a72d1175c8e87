"""The exact solver returns an optimal plan or raises: never a plan POT's iteration cap cut short."""
import numpy as np
import ot
import pytest

from ofexp.fusion import transport
from ofexp.fusion.transport import assignment_plan, solve_transport

# Square (assignment), one side dividing the other (assignment on replicated copies),
# and neither (ot.emd).
SHAPES = [(1, 1), (9, 9), (40, 40), (12, 4), (4, 12), (30, 10), (10, 30), (24, 6), (7, 5), (5, 7), (40, 24)]


def _weight_like_cost(rng, n, m, d=16):
    """Pairwise distances of unit-normalised random rows, like a weight cost [n, m]."""
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.sqrt(np.maximum(((x[:, None] - y[None]) ** 2).sum(-1), 0))


def _optimum(cost):
    """ot.emd's optimal cost, asserting that POT itself calls its plan optimal."""
    n, m = cost.shape
    plan, log = ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), cost, numItermax=10_000_000, log=True)
    assert log["result_code"] == 1, log["warning"]
    return float((plan * cost).sum())


def _assert_marginals(plan, n, m):
    assert plan.shape == (n, m) and (plan >= 0).all()
    np.testing.assert_allclose(plan.sum(1), np.full(n, 1 / n), rtol=1e-12, atol=0)
    np.testing.assert_allclose(plan.sum(0), np.full(m, 1 / m), rtol=1e-12, atol=0)


@pytest.mark.parametrize("n,m", SHAPES)
def test_exact_plan_has_emd_optimal_cost_and_exact_marginals(n, m):
    for seed in range(4):
        rng = np.random.default_rng(seed * 1000 + n * 37 + m)
        costs = (rng.random((n, m)), _weight_like_cost(rng, n, m), rng.integers(0, 3, (n, m)).astype(float))
        for cost in costs:  # the last one is full of ties
            plan = solve_transport(cost)
            _assert_marginals(plan, n, m)
            assert (plan * cost).sum() == pytest.approx(_optimum(cost), rel=1e-12, abs=1e-14)


@pytest.mark.parametrize("n,m", [(12, 4), (4, 12), (30, 6), (64, 32)])
def test_divisible_widths_are_solved_by_assignment_without_emd(monkeypatch, n, m):
    # The replication argument in assignment_plan: proven here against ot.emd on the same costs.
    rng = np.random.default_rng(n + m)
    costs = [_weight_like_cost(rng, n, m) for _ in range(3)]
    optima = [_optimum(c) for c in costs]

    def no_emd(*args, **kwargs):
        raise AssertionError("ot.emd called for a shape the assignment solves")

    monkeypatch.setattr(ot, "emd", no_emd)
    for cost, best in zip(costs, optima):
        plan = solve_transport(cost)
        assert (plan * cost).sum() == pytest.approx(best, rel=1e-12)
        assert set(np.unique(plan)) == {0.0, 1 / max(n, m)}
    with pytest.raises(ValueError, match=r"got shape \(7, 5\)"):
        assignment_plan(rng.random((7, 5)))


def _spy_emd(monkeypatch):
    calls, real = [], ot.emd

    def spy(*args, **kwargs):
        calls.append(kwargs.get("numItermax"))
        return real(*args, **kwargs)

    monkeypatch.setattr(ot, "emd", spy)
    return calls


@pytest.mark.parametrize("cap,factor", [(10, 10), (1000, 1)])
def test_emd_stopped_at_the_cap_is_refused_in_one_line(monkeypatch, cap, factor):
    # At 10 pivots POT's plan moves half the mass; at 1,000 it is a feasible plan 0.5% above the optimum.
    cost = _weight_like_cost(np.random.default_rng(0), 200, 150)  # 150 does not divide 200: ot.emd
    calls = _spy_emd(monkeypatch)
    monkeypatch.setattr(transport, "_EMD_MAX_ITER", cap)
    monkeypatch.setattr(transport, "_EMD_RETRY_FACTOR", factor)
    with pytest.raises(ValueError, match=rf"200x150 cost .*numItermax={cap * factor:,}\).*solver='sinkhorn'") as e:
        solve_transport(cost)
    assert "\n" not in str(e.value)
    assert calls == [cap, cap * factor]  # retried once with the larger cap, then refused


def test_emd_stopped_at_the_cap_is_retried_to_optimality(monkeypatch):
    cost = _weight_like_cost(np.random.default_rng(0), 200, 150)
    best = _optimum(cost)
    calls = _spy_emd(monkeypatch)
    monkeypatch.setattr(transport, "_EMD_MAX_ITER", 10)
    monkeypatch.setattr(transport, "_EMD_RETRY_FACTOR", 1_000_000)
    plan = solve_transport(cost)
    assert calls == [10, 10_000_000]
    _assert_marginals(plan, 200, 150)
    assert (plan * cost).sum() == pytest.approx(best, rel=1e-12)


@pytest.mark.parametrize("cap", [10, 1000])
def test_capped_emd_is_really_not_optimal(cap):
    # What the tests above guard against: POT returns a wrong plan, with a warning only.
    cost = _weight_like_cost(np.random.default_rng(0), 200, 150)
    with pytest.warns(UserWarning, match="numItermax reached"):
        plan, log = ot.emd(np.full(200, 1 / 200), np.full(150, 1 / 150), cost, numItermax=cap, log=True)
    assert log["result_code"] == 3
    feasible = np.allclose(plan.sum(1), 1 / 200) and np.allclose(plan.sum(0), 1 / 150)
    assert not feasible or (plan * cost).sum() > _optimum(cost) * (1 + 1e-6)
