"""The alignment rule of ``nn.MultiheadAttention`` (used by ``trace_rules.module_rule``)."""

from __future__ import annotations

from torch import fx, nn


class Several:
    """The labels of an op that returns several tensors (``None`` for an output that is not one);
    iterating it yields every axis of every output, so that checks on permuted inputs see them all."""

    def __init__(self, items: list) -> None:
        self.items = items

    def __iter__(self):
        return (ax for lab in self.items if lab is not None for ax in lab)


def _vars(label) -> list[int]:
    """The group variables of a label's axes (a layout's factors included)."""
    out = []
    for ax in label:
        if isinstance(ax, tuple):
            out += [g for seg in ax for g, _ in seg if g is not None]
        elif ax is not None:
            out.append(ax)
    return out


def _call_arg(node: fx.Node, i: int, name: str, default=None):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def attention_rule(tr, node: fx.Node, m: nn.MultiheadAttention, p: str) -> Several:
    """nn.MultiheadAttention: per head, queries and keys share one permutation of the head's
    dimensions and values and the output projection's inputs share another; the heads themselves
    are permuted as blocks (``AlignmentSpec.heads``). Returns (output, attention weights)."""
    q, k, v = (tr.label(_call_arg(node, i, name)) for i, name in enumerate(("query", "key", "value")))
    if q is None or k is None or v is None:
        tr.refuse(node, "its query, key or value is not a tensor ofexp follows")
    for arg in ("key_padding_mask", "attn_mask"):
        mask = tr.label(_call_arg(node, {"key_padding_mask": 3, "attn_mask": 5}[arg], arg))
        if mask is not None and any(tr.vars.find(var) != 0 for var in _vars(mask)):
            tr.refuse(node, f"its {arg} carries a permuted axis")
    if any(ax is not None for lab in (q, k, v) for ax in lab[:-1]):
        tr.refuse(node, "attention mixes its sequence and batch axes, which must not be permuted")
    e = m.embed_dim
    qk, vo, out = tr.vars.new(), tr.vars.new(), tr.vars.new()
    tr.name_var(qk, f"{p}.qk")
    tr.name_var(vo, f"{p}.vo")
    if m.in_proj_weight is not None:  # query, key and value of one width share one [3E, E] matrix
        tr.unify(q[-1], k[-1])
        tr.unify(q[-1], v[-1])
        tr.bind(f"{p}.in_proj_weight", ((((qk, e),), ((qk, e),), ((vo, e),)), q[-1]))
    else:
        for name, var, lab in (("q", qk, q), ("k", qk, k), ("v", vo, v)):
            tr.bind(f"{p}.{name}_proj_weight", (var, lab[-1]))
    if m.in_proj_bias is not None:
        tr.bind(f"{p}.in_proj_bias", ((((qk, e),), ((qk, e),), ((vo, e),)),))
    for name, var in (("bias_k", qk), ("bias_v", vo)):
        if getattr(m, name, None) is not None:
            tr.bind(f"{p}.{name}", (None, None, var))
    tr.bind(f"{p}.out_proj.weight", (out, vo))
    if m.out_proj.bias is not None:
        tr.bind(f"{p}.out_proj.bias", (out,))
    tr.heads.append((p, m.num_heads, qk, vo))
    tr.token_reads += [(node, qk, "query-key"), (node, vo, "value")]
    metas = node.meta.get("tensor_meta") or (None, None)
    weights = (None,) * len(metas[1].shape) if getattr(metas[1], "shape", None) is not None else None
    return Several([tuple(q[:-1]) + (out,), weights])
