"""How each op moves alignment groups from its inputs to its outputs (used by ``trace.py``).

A label has one entry per tensor axis: ``None`` (never permuted), an ``int`` group
variable, or a layout: a tuple of segments, each a tuple of ``(variable | None, size)``
factors in row-major order (``groups.Layout``, with variables for group names).
A rule returns the output's label, ``UNKNOWN`` (no rule: refused if a permuted axis
flows in) or ``NOT_A_TENSOR`` (shapes, sizes, asserts: nothing to follow).
"""

from __future__ import annotations

import math

from torch import fx, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ofexp.fusion.trace_attention import Several, attention_rule

UNKNOWN = object()
NOT_A_TENSOR = object()


_POOLS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
          nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d,
          nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d, nn.Upsample, nn.UpsamplingNearest2d)
_PASS = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
         nn.ReLU, nn.ReLU6, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid,
         nn.LeakyReLU, nn.ELU, nn.SELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Softmax, nn.LogSoftmax)
# Functions and methods that act elementwise: each output neuron depends on the same neuron in.
_UNARY = {"relu", "relu_", "relu6", "gelu", "silu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "leaky_relu",
          "elu", "selu", "mish", "softplus", "hardtanh", "dropout", "neg", "abs", "exp", "log", "clamp", "clamp_",
          "clip", "contiguous", "clone", "detach", "float", "half", "double", "to", "type_as", "softmax",
          "log_softmax", "sqrt", "rsqrt", "square", "sigmoid_", "tanh_", "mul_", "add_", "alias", "_to_copy"}
_BINARY = {"add", "sub", "mul", "truediv", "div", "pow", "maximum", "minimum", "iadd", "isub", "imul",
           "itruediv", "__add__", "__radd__", "__sub__", "__mul__", "__rmul__", "__truediv__"}
_POOL_FUNCTIONS = {"adaptive_avg_pool1d", "adaptive_avg_pool2d", "adaptive_avg_pool3d", "adaptive_max_pool2d",
                   "avg_pool1d", "avg_pool2d", "avg_pool3d", "max_pool1d", "max_pool2d", "max_pool3d", "interpolate"}
_REDUCTIONS = {"mean", "sum", "amax", "amin"}


def is_batchnorm(module: nn.Module) -> bool:
    return isinstance(module, _BatchNorm)


def target_name(node: fx.Node) -> str:
    """The op's name: 'relu' for F.relu, Tensor.relu and a loaded pt2 model's aten.relu(_).default."""
    t = node.target
    packet = getattr(t, "overloadpacket", None)  # an ATen op of an exported graph
    if packet is not None:
        name = packet.__name__
        return name[:-1] if name.endswith("_") and not name.startswith("_") else name
    return t if isinstance(t, str) else getattr(t, "__name__", str(t))


def module_path(node: fx.Node) -> str:
    if node.op == "call_module":
        return node.target
    stack = node.meta.get("nn_module_stack") or {}
    return next(reversed(stack.keys()), "") if stack else ""


def flat_args(args) -> list:
    out = []
    for a in args if isinstance(args, (list, tuple)) else [args]:
        if isinstance(a, (list, tuple)):
            out += flat_args(a)
        elif isinstance(a, dict):
            out += flat_args(list(a.values()))
        else:
            out.append(a)
    return out


def axis_vars(ax) -> list[int]:
    if ax is None:
        return []
    if isinstance(ax, tuple):
        return [g for seg in ax for g, _ in seg if g is not None]
    return [ax]


def simplify(layout):
    """A layout with size-1 factors dropped and neighbouring unpermuted factors merged;
    a single group (or None) when that is all it holds."""
    segments = []
    for seg in layout:
        factors: list[tuple] = []
        for g, n in seg:
            if n == 1:
                continue
            if g is None and factors and factors[-1][0] is None:
                factors[-1] = (None, factors[-1][1] * n)
            else:
                factors.append((g, n))
        if not factors:
            continue
        if all(g is None for g, _ in factors) and segments and all(g is None for g, _ in segments[-1]):
            total = math.prod(n for _, n in segments[-1]) * math.prod(n for _, n in factors)
            segments[-1] = ((None, total),)
        else:
            segments.append(tuple(factors) if any(g is not None for g, _ in factors)
                            else ((None, math.prod(n for _, n in factors)),))
    if all(g is None for seg in segments for g, _ in seg):
        return None
    if len(segments) == 1 and len(segments[0]) == 1:
        return segments[0][0][0]
    return tuple(segments)


def _factors(ax, size: int) -> tuple:
    """An axis label as the factors of one segment (a layout of several segments cannot merge)."""
    if ax is None or not isinstance(ax, tuple):
        return ((ax, size),)
    if len(ax) != 1:
        raise ValueError("concatenated axis merged with another")
    return ax[0]


def _merge(labels, shape) -> object:
    """The label of axes merged row-major into one (flatten, view)."""
    kept = [(ax, n) for ax, n in zip(labels, shape) if n > 1]
    if len(kept) == 1:
        return kept[0][0]
    multi = [i for i, (ax, _) in enumerate(kept) if isinstance(ax, tuple) and len(ax) > 1]
    if not multi:
        return simplify((tuple(f for ax, n in kept for f in _factors(ax, n)),))
    # a concatenated axis [s1 | s2] followed by axes T: index = c * |T| + t gives [s1 x T | s2 x T],
    # repeated once per index of unpermuted axes before it
    at = multi[0]
    if len(multi) > 1 or any(ax is not None for ax, _ in kept[:at]):
        raise ValueError("concatenated axis merged with another")
    tail = tuple(f for ax, n in kept[at + 1:] for f in _factors(ax, n))
    repeat = math.prod(n for _, n in kept[:at])
    return simplify(tuple(seg + tail for seg in kept[at][0]) * repeat)


def _reshape(tr, node, x, out_shape):
    """view / reshape / flatten: merges and splits of axes, blockwise."""
    lab, ins = tr.label(x), tr.shape(x)
    out, i, j = [], 0, 0
    try:
        while i < len(ins) or j < len(out_shape):
            block_in, block_out, pi, po = [], [], 1, 1
            if i < len(ins):
                block_in.append(i), (pi := pi * ins[i]), (i := i + 1)
            if j < len(out_shape):
                block_out.append(j), (po := po * out_shape[j]), (j := j + 1)
            while pi != po:
                if pi < po:
                    block_in.append(i), (pi := pi * ins[i]), (i := i + 1)
                else:
                    block_out.append(j), (po := po * out_shape[j]), (j := j + 1)
            labels = [lab[k] for k in block_in]
            if all(ax is None for ax in labels):
                out += [None] * len(block_out)
            elif len(block_out) == 1:
                out.append(_merge(labels, [ins[k] for k in block_in]))
            else:
                factors = _factors(labels[0], ins[block_in[0]]) if len(block_in) == 1 else None
                if factors is None or [n for _, n in factors] != [out_shape[k] for k in block_out]:
                    tr.refuse(node, "it splits a permuted axis in a way that mixes its neurons")
                out += [g for g, _ in factors]
    except (IndexError, ValueError):
        tr.refuse(node, "it reshapes a permuted axis in a way ofexp cannot follow")
    return tuple(out)


def _broadcast(tr, node, operands) -> tuple:
    """Elementwise ops: operands line up from the right and are permuted alike."""
    shape = tr.shape(node)
    out = [None] * len(shape)
    for k in range(1, len(shape) + 1):
        here = [(tr.label(a)[-k], tr.shape(a)[-k]) for a in operands
                if tr.label(a) is not None and len(tr.label(a)) >= k]
        here = [ax for ax, n in here if n == shape[-k] and n > 1]
        for ax in here[1:]:
            tr.unify(here[0], ax)
        out[-k] = here[0] if here else None
    return tuple(out)


def _cat(tr, node):
    tensors = node.args[0] if node.args else node.kwargs["tensors"]
    dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
    labels = [tr.label(t) for t in tensors]
    if any(lab is None for lab in labels):
        return UNKNOWN
    nd = len(labels[0])
    dim %= nd
    for k in range(nd):
        if k != dim:
            for lab in labels[1:]:
                tr.unify(labels[0][k], lab[k])
    segments = []
    for t, lab in zip(tensors, labels):
        ax, n = lab[dim], tr.shape(t)[dim]
        segments += list(ax) if isinstance(ax, tuple) else [((ax, n),)]
    return tuple(simplify(tuple(segments)) if k == dim else labels[0][k] for k in range(nd))


def _reduce(tr, node, x):
    lab = tr.label(x)
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    keep = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    dims = range(len(lab)) if dims is None else ([dims] if isinstance(dims, int) else list(dims))
    dims = {d % len(lab) for d in dims}
    if any(lab[d] is not None for d in dims):
        tr.refuse(node, "it reduces over a permuted axis")
    return tuple(None if k in dims else ax for k, ax in enumerate(lab) if keep or k not in dims)


def _getitem(tr, node, x, index):
    lab = list(tr.label(x))
    items = list(index) if isinstance(index, tuple) else [index]
    if Ellipsis in items:
        at = items.index(Ellipsis)
        fill = len(lab) - (len(items) - 1 - sum(1 for i in items if i is None))
        items[at:at + 1] = [slice(None)] * fill
    out, k = [], 0
    for item in items:
        if item is None:
            out.append(None)
            continue
        if isinstance(item, fx.Node) or not isinstance(item, (int, slice)):
            return UNKNOWN
        if lab[k] is not None and item != slice(None):
            tr.refuse(node, "it selects part of a permuted axis")
        if isinstance(item, slice):
            out.append(lab[k])
        k += 1
    return tuple(out + lab[k:])


def _select(tr, node, x, name: str):
    lab = list(tr.label(x))
    dim = node.args[1] % len(lab) if len(node.args) > 1 else 0
    whole = name == "slice" and tr.shape(node)[dim] == tr.shape(x)[dim]
    if lab[dim] is not None and not whole:
        tr.refuse(node, "it selects part of a permuted axis")
    return tuple(lab) if name == "slice" else tuple(lab[:dim] + lab[dim + 1:])


def _dims(node) -> list[int]:
    dims = node.args[1:] if node.args[1:] else node.kwargs.get("dims", ())
    return list(dims[0]) if len(dims) == 1 and isinstance(dims[0], (list, tuple)) else list(dims)


def function_rule(tr, node: fx.Node):
    """Label of a call_function / call_method node's output."""
    name = target_name(node)
    meta = node.meta.get("tensor_meta")
    if meta is None:
        return NOT_A_TENSOR
    tensors = [a for a in flat_args(list(node.args) + list(node.kwargs.values())) if tr.label(a) is not None]
    x = node.args[0] if node.args else None
    if name in _BINARY:
        return _broadcast(tr, node, tensors)
    if name in _UNARY and tr.label(x) is not None:
        return tr.label(x)
    if name in ("cat", "concat", "concatenate"):
        return _cat(tr, node)
    if tr.label(x) is None:
        return UNKNOWN
    if name in ("flatten", "view", "reshape", "unflatten"):
        return _reshape(tr, node, x, tr.shape(node))
    if name in _POOL_FUNCTIONS:
        return _pooled(tr, node, tr.label(x))
    if name == "permute":
        return tuple(tr.label(x)[d] for d in _dims(node))
    if name in ("transpose", "swapaxes"):
        a, b = (d % len(tr.label(x)) for d in node.args[1:3])
        lab = list(tr.label(x))
        lab[a], lab[b] = lab[b], lab[a]
        return tuple(lab)
    if name in _REDUCTIONS:
        return _reduce(tr, node, x)
    if name == "getitem":
        if isinstance(tr.label(x), Several):  # one output of a module that returns several
            items = tr.label(x).items
            return items[node.args[1]] if isinstance(node.args[1], int) and items[node.args[1]] else UNKNOWN
        return _getitem(tr, node, x, node.args[1])
    if name in ("select", "slice"):  # ATen's forms of x[:, 0] and x[:, a:b]
        return _select(tr, node, x, name)
    if name == "unsqueeze":
        lab = list(tr.label(x))
        lab.insert(node.args[1] % (len(lab) + 1), None)
        return tuple(lab)
    if name in ("expand", "expand_as"):
        lab = tr.label(x)
        return (None,) * (len(tr.shape(node)) - len(lab)) + tuple(lab)
    return UNKNOWN


def _pooled(tr, node, lab):
    if any(ax is not None for ax in lab[2:]):
        tr.refuse(node, "it pools over a permuted axis")
    return tuple(lab[:2]) + (None,) * (len(tr.shape(node)) - 2)


def module_rule(tr, node: fx.Node, m: nn.Module):
    """Label of a call_module node's output; binds the module's tensors to their groups."""
    x = node.args[0] if node.args else None
    lab, p = tr.label(x), node.target
    if isinstance(m, nn.MultiheadAttention):
        return attention_rule(tr, node, m, p)
    if lab is None:
        return UNKNOWN
    if isinstance(m, nn.Linear):
        g = tr.vars.new()
        tr.bind(f"{p}.weight", (g, lab[-1]))
        if m.bias is not None:
            tr.bind(f"{p}.bias", (g,))
        if len(lab) == 2:  # a probe needs the neurons on axis 1
            tr.writes.append((node, g))
        else:  # tokens [B, S, n]: the neurons on the last axis
            tr.token_reads.append((node, g, "output"))
        return tuple(lab[:-1]) + (g,)
    if isinstance(m, _ConvNd) and not m.transposed:
        return _conv(tr, node, m, lab, p)
    if isinstance(m, (_BatchNorm, _InstanceNorm)) or (isinstance(m, nn.GroupNorm) and m.num_groups in (1, m.num_channels)):
        for name in ("weight", "bias", "running_mean", "running_var"):
            if getattr(m, name, None) is not None:
                tr.bind(f"{p}.{name}", (lab[1],))
        if getattr(m, "num_batches_tracked", None) is not None:
            tr.bind(f"{p}.num_batches_tracked", ())
        return lab
    if isinstance(m, nn.GroupNorm):
        tr.refuse(node, f"GroupNorm with {m.num_groups} groups of channels is not permutation-equivariant "
                        "(only 1 group, or one per channel, is)")
    if isinstance(m, nn.LayerNorm):
        k = len(m.normalized_shape)
        if k == 1 and lab[-1] is not None:  # its input is the stream it normalises (a transformer's residual)
            tr.token_reads.append((node, lab[-1], "input"))
        for name in ("weight", "bias"):
            if getattr(m, name, None) is not None:
                tr.bind(f"{p}.{name}", tuple(lab[-k:]))
        return lab
    if isinstance(m, _PASS):
        return lab
    if isinstance(m, _POOLS):
        return _pooled(tr, node, lab)
    if isinstance(m, nn.Flatten):
        return _reshape(tr, node, x, tr.shape(node))
    return UNKNOWN


def _conv(tr, node, m: _ConvNd, lab, p: str):
    spatial = (None,) * (m.weight.ndim - 2)
    c = lab[1]
    if m.groups == 1:
        g = tr.vars.new()
        tr.bind(f"{p}.weight", (g, c, *spatial))
    elif m.groups == m.in_channels == m.out_channels:
        g = c  # depthwise: output channel j reads input channel j only, so both move together
        tr.bind(f"{p}.weight", (c, None, *spatial))
    else:
        tr.refuse(node, f"a grouped conv (groups={m.groups}, {m.in_channels} -> {m.out_channels} channels) mixes "
                        "channels within groups; ofexp aligns only ordinary and depthwise convs")
    if m.bias is not None:
        tr.bind(f"{p}.bias", (g,))
    if isinstance(g, int):
        tr.writes.append((node, g))
    return (lab[0], g) + (None,) * (len(tr.shape(node)) - 2)


__all__ = ["NOT_A_TENSOR", "UNKNOWN", "Several", "function_rule", "module_rule", "simplify"]
