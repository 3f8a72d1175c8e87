"""Activations of neurons that sit on the last axis of token tensors [B, S, n] (transformers).

``AlignmentSpec.token_probes`` names, per group, where its neurons show: the input of a
LayerNorm (the residual stream it normalises), the output of a Linear applied to tokens
(an MLP's hidden layer), or an attention module's query-and-key or value projections.
"""
from __future__ import annotations

import torch
from torch import nn

from ofexp.fusion.groups import AlignmentSpec

TOKEN_PROBES = ("input", "output", "query-key", "value")


def _neurons_first(t: torch.Tensor) -> torch.Tensor:
    """[..., n] -> [n, prod(...)]: one row of samples per neuron."""
    return t.reshape(-1, t.shape[-1]).T.to(torch.float64)


def attention_projections(m: nn.MultiheadAttention, query: torch.Tensor, key: torch.Tensor,
                          value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The query, key and value projections [..., E] that ``m`` computes before splitting heads."""
    if m.in_proj_weight is not None:
        w_q, w_k, w_v = m.in_proj_weight.chunk(3)  # each [E, E]
    else:
        w_q, w_k, w_v = m.q_proj_weight, m.k_proj_weight, m.v_proj_weight
    b_q, b_k, b_v = m.in_proj_bias.chunk(3) if m.in_proj_bias is not None else (None, None, None)
    linear = nn.functional.linear
    return linear(query, w_q, b_q), linear(key, w_k, b_k), linear(value, w_v, b_v)


def _hook(module: nn.Module, where: str, record):
    """Register a hook that passes ``record`` the module's neurons at ``where``, [n, samples]."""
    if where == "output":
        return module.register_forward_hook(lambda m, args, out: record(_neurons_first(out)))
    if where == "input":
        return module.register_forward_pre_hook(lambda m, args: record(_neurons_first(args[0])))

    def projections(m, args, kwargs):
        names = ("query", "key", "value")
        q, k, v = attention_projections(m, *(args[i] if len(args) > i else kwargs[n] for i, n in enumerate(names)))
        # a query-key neuron shows in both projections: its samples side by side
        record(torch.cat([_neurons_first(q), _neurons_first(k)], dim=1) if where == "query-key" else _neurons_first(v))

    return module.register_forward_pre_hook(projections, with_kwargs=True)


def register_token_hooks(model: nn.Module, spec: AlignmentSpec, parts: dict[str, list[torch.Tensor]]) -> list:
    """Hooks that append, per group with token probes, its neurons' values [n, samples] to ``parts``
    on the next forward pass; the caller removes them."""
    modules = dict(model.named_modules())
    hooks = []
    for group, probes in spec.token_probes.items():
        for name, where in probes:
            if where not in TOKEN_PROBES:
                raise ValueError(f"token probe {name!r} of group {group!r}: unknown place {where!r}; "
                                 f"use one of {', '.join(TOKEN_PROBES)}")
            hooks.append(_hook(modules[name], where, lambda rows, group=group: parts.setdefault(group, []).append(rows)))
    return hooks
