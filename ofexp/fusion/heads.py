"""Transport plans for attention: heads move as blocks, each head's dimensions move within it."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from ofexp.fusion.transport import solve_transport


def head_block_plans(costs: Mapping[str, np.ndarray], n_heads: int, solver: str = "exact",
                     reg: float = 0.01) -> dict[str, np.ndarray]:
    r"""Plans for the groups of one attention module, which share a permutation of the heads.

    Each group's n = h * d neurons are h heads of d dimensions. For every parent head i and
    target head j, each group g gets the plan of its dimensions
    :math:`T^g_{ij} = \mathrm{solve}(M^g_{ij})`, with :math:`M^g_{ij}` the [d, d] block of
    g's cost between the two heads; the heads' cost is
    :math:`C_{ij} = \sum_g \langle T^g_{ij}, M^g_{ij} \rangle` and their plan
    :math:`\Pi = \mathrm{solve}(C)`. The plan of g is the block matrix
    :math:`P^g[(i, a), (j, b)] = \Pi_{ij} \, T^g_{ij}[a, b]`, which has uniform marginals
    1/n when Π and every T do (1/h, 1/d), and is a scaled permutation that moves whole heads
    when the solver is exact.

    Parameters
    ----------
    costs : mapping of str to np.ndarray, each of shape [n, n]
        Cost between the parent's and the target's neurons of each group (n = h * d, equal widths).
    n_heads : int
        h, the number of heads.
    solver, reg : str, float
        See ``solve_transport``; used for the heads and for the dimensions inside them.

    Returns
    -------
    dict[str, np.ndarray]
        Group -> plan [n, n].
    """
    shapes = {cost.shape for cost in costs.values()}
    n = next(iter(shapes))[0]
    if len(shapes) != 1 or n != next(iter(shapes))[1] or n % n_heads:
        raise ValueError(f"head_block_plans: costs must be square, of one size that {n_heads} heads divide; "
                         f"got shapes {sorted(shapes)}")
    d = n // n_heads
    blocks = {g: cost.reshape(n_heads, d, n_heads, d).transpose(0, 2, 1, 3) for g, cost in costs.items()}  # [h, h, d, d]
    inner = {g: np.empty_like(b) for g, b in blocks.items()}  # [h, h, d, d]
    head_cost = np.zeros((n_heads, n_heads))  # [h, h]
    for g, b in blocks.items():
        for i in range(n_heads):
            for j in range(n_heads):
                inner[g][i, j] = solve_transport(b[i, j], solver=solver, reg=reg)
                head_cost[i, j] += float((inner[g][i, j] * b[i, j]).sum())
    heads = solve_transport(head_cost, solver=solver, reg=reg)  # [h, h]
    # [h, h, d, d] -> [h, d, h, d] -> [n, n]
    return {g: (heads[:, :, None, None] * t).transpose(0, 2, 1, 3).reshape(n, n) for g, t in inner.items()}
