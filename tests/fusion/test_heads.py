"""Plans for attention: whole heads move, alike in an attention module's groups."""
import numpy as np
import pytest

from ofexp.fusion.heads import head_block_plans


def _block_cost(head_order, dims, h=3, d=4, seed=0):
    """Cost [n, n] that is zero exactly where parent neuron (head_order[j], dims[j][b]) meets target (j, b)."""
    rng = np.random.default_rng(seed)
    cost = rng.uniform(1.0, 2.0, (h * d, h * d))
    for j in range(h):
        for b in range(d):
            cost[head_order[j] * d + dims[j][b], j * d + b] = 0.0
    return cost


def test_the_exact_plan_moves_whole_heads_shared_by_both_groups():
    h, d = 3, 4
    order = [2, 0, 1]
    rng = np.random.default_rng(1)
    costs = {g: _block_cost(order, [rng.permutation(d) for _ in range(h)], h, d, seed=i)
             for i, g in enumerate(("qk", "vo"))}
    plans = head_block_plans(costs, h)
    for g, plan in plans.items():
        assert plan.shape == (h * d, h * d) and np.isclose(plan.sum(), 1.0)
        assert np.isclose((plan * costs[g]).sum(), 0.0)  # the zero-cost matching was found
        moved = plan.reshape(h, d, h, d).sum(axis=(1, 3)) > 0  # [h, h]: which parent head feeds which
        assert [int(np.argmax(moved[:, j])) for j in range(h)] == order and moved.sum() == h


def test_a_head_permutation_is_shared_even_where_one_group_alone_would_choose_another():
    h, d = 2, 2
    qk = _block_cost([1, 0], [[0, 1], [0, 1]], h, d)
    vo = np.ones((h * d, h * d))
    vo[0, 0] = vo[1, 1] = vo[2, 2] = vo[3, 3] = 0.0  # vo alone would keep the heads in place, at cost 0
    vo *= 0.1  # ... but that costs qk more than crossing costs vo
    plans = head_block_plans({"qk": qk, "vo": vo}, h)
    for plan in plans.values():
        assert plan.reshape(h, d, h, d).sum(axis=(1, 3))[1, 0] > 0  # both groups: parent head 1 -> target head 0


def test_soft_plans_keep_uniform_marginals():
    rng = np.random.default_rng(0)
    costs = {"qk": rng.uniform(size=(8, 8)), "vo": rng.uniform(size=(8, 8))}
    for plan in head_block_plans(costs, 2, solver="sinkhorn", reg=0.5).values():
        assert np.allclose(plan.sum(axis=0), 1 / 8, atol=1e-6) and np.allclose(plan.sum(axis=1), 1 / 8, atol=1e-6)


@pytest.mark.parametrize("shapes", [((6, 6), (6, 6)), ((8, 8), (6, 6)), ((8, 6), (8, 6))])
def test_costs_that_do_not_split_into_heads_are_refused(shapes):
    costs = {str(i): np.zeros(s) for i, s in enumerate(shapes)}
    with pytest.raises(ValueError, match="head_block_plans: costs must be square, of one size that 4 heads divide"):
        head_block_plans(costs, 4)
