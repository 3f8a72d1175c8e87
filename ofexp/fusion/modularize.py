"""Layers back as modules in a network that `torch.export` flattened into ATen ops.

MLflow 3 logs PyTorch models in the pt2 format by default: `mlflow.pytorch.load_model`
then returns an fx GraphModule whose convolutions, linear and normalisation layers are
ATen calls (`aten.conv2d(x, weight, bias, ...)`) on parameters held at their original
paths (`features.0.0.weight`). Alignment traces modules, reads activations through
module hooks, and REPAIR rescales a module's weight; so each such call is replaced by
the equivalent `nn.Conv2d`, `nn.Linear`, `nn.BatchNorm2d` or `nn.LayerNorm` at that path,
holding the very same parameter and buffer tensors; a multi-head self-attention's ops
(projections, heads, `scaled_dot_product_attention`) become its `nn.MultiheadAttention`. The state dict, its keys and the
network's function do not change.
"""
from __future__ import annotations

import copy
import operator

import torch
from torch import fx, nn

from ofexp.errors import ConfigError


def _overload_name(node: fx.Node) -> str | None:
    """'conv2d' for aten.conv2d.default; None for anything that is not an ATen op."""
    packet = getattr(node.target, "overloadpacket", None)
    return getattr(packet, "__name__", None) if node.op == "call_function" and packet is not None else None


def is_exported_graph(model: nn.Module) -> bool:
    """Whether `model` is a graph of ATen ops (a loaded pt2 model) rather than a module tree."""
    return isinstance(model, fx.GraphModule) and any(_overload_name(n) for n in model.graph.nodes)


def _arg(node: fx.Node, i: int, name: str, default):
    return node.args[i] if len(node.args) > i else node.kwargs.get(name, default)


def _tensor(gm: fx.GraphModule, node) -> torch.Tensor | None:
    """The parameter or buffer a get_attr node reads (None for a missing optional argument)."""
    if node is None:
        return None
    if not (isinstance(node, fx.Node) and node.op == "get_attr"):
        raise ValueError("its weight is computed, not a stored tensor")
    try:
        return gm.get_parameter(node.target)
    except AttributeError:
        return gm.get_buffer(node.target)


def _owner(key_node, suffix: str) -> str | None:
    """The module path of a layer: its weight's key without '.weight' (None when the key is
    not a layer's own, e.g. attention's 'in_proj_weight': that call stays an ATen op)."""
    if not (isinstance(key_node, fx.Node) and key_node.op == "get_attr"):
        return None
    path, dot, name = key_node.target.rpartition(".")
    return path if dot and name == suffix else None


def _conv(gm, node) -> tuple[nn.Module, list]:
    x, w_node = node.args[0], node.args[1]
    w, b = _tensor(gm, w_node), _tensor(gm, _arg(node, 2, "bias", None))
    dims = w.ndim - 2
    groups = _arg(node, 6, "groups", 1)
    kinds = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
    with torch.device("meta"):  # the real tensors are assigned below
        m = kinds[dims](w.shape[1] * groups, w.shape[0], tuple(w.shape[2:]), stride=_arg(node, 3, "stride", 1),
                        padding=_arg(node, 4, "padding", 0), dilation=_arg(node, 5, "dilation", 1),
                        groups=groups, bias=b is not None)
    m.weight, m.bias = _param(w), _param(b)
    return m, [x]


def _linear(gm, node) -> tuple[nn.Module, list]:
    w, b = _tensor(gm, node.args[1]), _tensor(gm, _arg(node, 2, "bias", None))
    with torch.device("meta"):
        m = nn.Linear(w.shape[1], w.shape[0], bias=b is not None)
    m.weight, m.bias = _param(w), _param(b)
    return m, [node.args[0]]


def _batch_norm(gm, node) -> tuple[nn.Module, list]:
    x = node.args[0]
    w, b = _tensor(gm, node.args[1]), _tensor(gm, node.args[2])
    mean, var = _tensor(gm, node.args[3]), _tensor(gm, node.args[4])
    if mean is None:
        raise ValueError("batch-norm without running statistics")
    kinds = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}
    rank = len(x.meta["val"].shape) if "val" in x.meta else 4
    with torch.device("meta"):
        m = kinds[rank](mean.shape[0], eps=_arg(node, 7, "eps", 1e-5), momentum=_arg(node, 6, "momentum", 0.1),
                        affine=w is not None)
    if w is not None:
        m.weight, m.bias = _param(w), _param(b)
    m.running_mean, m.running_var = mean, var
    return m, [x]


def _layer_norm(gm, node) -> tuple[nn.Module, list]:
    w, b = _tensor(gm, _arg(node, 2, "weight", None)), _tensor(gm, _arg(node, 3, "bias", None))
    with torch.device("meta"):
        m = nn.LayerNorm(list(node.args[1]), eps=_arg(node, 4, "eps", 1e-5), elementwise_affine=w is not None,
                         bias=b is not None)
    if w is not None:
        m.weight = _param(w)
    if b is not None:
        m.bias = _param(b)
    return m, [node.args[0]]


def _param(t: torch.Tensor | None) -> nn.Parameter | None:
    if t is None or isinstance(t, nn.Parameter):
        return t
    return nn.Parameter(t, requires_grad=False)


def _downstream(start: fx.Node, want, limit: int = 40) -> list[fx.Node]:
    """Nodes that ``want`` accepts among the first ``limit`` nodes reachable from ``start``'s users."""
    found, queue, seen = [], list(start.users), set()
    while queue and len(seen) < limit:
        node = queue.pop(0)
        if node in seen:
            continue
        seen.add(node)
        if want(node):
            found.append(node)
        else:
            queue += list(node.users)
    return found


def _rebuild_attention(gm: fx.GraphModule, proj: fx.Node) -> bool:
    """Replace the ATen ops of one exported ``nn.MultiheadAttention`` (its [3E, E] input projection,
    the split into heads, ``scaled_dot_product_attention`` and the output projection) by the module
    at its parameters' path. Leaves the graph as it is (False) where the pattern is not plain
    self-attention without masks or dropout."""
    path = _owner(proj.args[1], "in_proj_weight")
    attention = _downstream(proj, lambda n: _overload_name(n) == "scaled_dot_product_attention")
    if not path or len(attention) != 1 or any(a is not None for a in attention[0].args[3:4]) \
            or _arg(attention[0], 4, "dropout_p", 0.0) or _arg(attention[0], 5, "is_causal", False) \
            or _arg(attention[0], 6, "scale", None) is not None:
        return False
    out = _downstream(attention[0], lambda n: _overload_name(n) == "linear"
                      and _owner(n.args[1], "weight") == f"{path}.out_proj")
    if len(out) != 1:
        return False
    w_in, b_in = _tensor(gm, proj.args[1]), _tensor(gm, _arg(proj, 2, "bias", None))
    w_out, b_out = _tensor(gm, out[0].args[1]), _tensor(gm, _arg(out[0], 2, "bias", None))
    heads = attention[0].args[0].meta["val"].shape[1]  # q: [B, h, S, d]
    with torch.device("meta"):
        module = nn.MultiheadAttention(w_out.shape[0], heads, bias=b_in is not None)  # sequence-first, as exported
    module.in_proj_weight, module.in_proj_bias = _param(w_in), _param(b_in)
    module.out_proj.weight, module.out_proj.bias = _param(w_out), _param(b_out)
    _set_module(gm, path, module)
    graph, x = gm.graph, proj.args[0]  # x: [S, B, E]
    with graph.inserting_before(out[0]):
        call = graph.call_module(path, (x, x, x), {"need_weights": False})
        flat = graph.call_function(operator.getitem, (call, 0))  # [S, B, E]
        if out[0].meta["val"].ndim == 2:  # the projection ran on [S * B, E], as torch's own attention does
            flat = graph.call_function(torch.ops.aten.reshape.default, (flat, [-1, w_out.shape[0]]))
    flat.meta = dict(out[0].meta)
    out[0].replace_all_uses_with(flat)
    # the replaced ops: from the input projection up to the output projection (ATen's
    # attention is marked impure, so eliminate_dead_code would keep it)
    replaced, queue = {proj}, list(proj.users)
    while queue:
        node = queue.pop()
        if node not in replaced and node is not flat:
            replaced.add(node)
            queue += [] if node is out[0] else list(node.users)
    for node in reversed(list(graph.nodes)):
        if node in replaced and not node.users:
            graph.erase_node(node)
    return True


def _same_function(a: nn.Module, b: nn.Module, graph: fx.Graph) -> bool:
    """Whether a and b agree on a random input shaped like the graph's placeholders."""
    # a dynamic (symbolic) size, such as an exported batch axis, is taken as 2
    inputs = [torch.randn([d if isinstance(d, int) else 2 for d in n.meta["val"].shape],
                          generator=torch.Generator().manual_seed(0))
              for n in graph.nodes if n.op == "placeholder" and hasattr(n.meta.get("val"), "shape")]
    with torch.no_grad():
        want, got = a(*inputs), b(*inputs)
    want, got = (t[0] if isinstance(t, (tuple, list)) else t for t in (want, got))
    return bool(torch.allclose(want, got, rtol=1e-4, atol=1e-5 * float(want.abs().max().clamp_min(1))))


def _attention_modules(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` with every exported multi-head attention it holds rebuilt as a module, kept only if
    the network still computes the same function (else the copy taken before is returned)."""
    projections = [n for n in gm.graph.nodes if _overload_name(n) == "linear"
                   and _owner(n.args[1], "in_proj_weight")]
    if not projections:
        return gm
    before = copy.deepcopy(gm)
    try:
        if not all(_rebuild_attention(gm, proj) for proj in projections):
            return before
        gm.recompile()
        return gm if _same_function(before, gm, before.graph) else before
    except (KeyError, AttributeError, IndexError, ValueError, RuntimeError, TypeError):
        return before  # the tracer then refuses the attention's ops in one line, naming the node


_LAYERS = {"conv1d": _conv, "conv2d": _conv, "conv3d": _conv, "linear": _linear, "batch_norm": _batch_norm,
           "layer_norm": _layer_norm}
# the argument whose key names the layer (a norm's weight may be None), and that key's last part
_KEY_ARG = {"batch_norm": (3, "running_mean"), "layer_norm": (2, "weight")}


def modules_from_graph(model: nn.Module) -> nn.Module:
    """A copy of `model` with every ATen convolution, linear, batch-norm and layer-norm call
    replaced by the equivalent module at its parameters' path; `model` itself is returned
    when it holds no such calls (an ordinary module tree).

    The copy has the same state-dict keys, tensors and outputs. Its forward takes the
    exported program's inputs and returns its single output (not a 1-tuple).

    Raises
    ------
    ConfigError
        A layer whose weights are computed rather than stored, or two calls of one layer
        with different settings.
    """
    if not is_exported_graph(model):
        return model
    gm = _attention_modules(copy.deepcopy(model))
    graph = gm.graph
    seen: dict[str, fx.Node] = {}
    for node in list(graph.nodes):
        kind = _overload_name(node)
        if kind not in _LAYERS:
            continue
        at, suffix = _KEY_ARG.get(kind, (1, "weight"))
        path = _owner(_arg(node, at, "", None), suffix)
        if not path:
            continue
        try:
            module, args = _LAYERS[kind](gm, node)
        except (ValueError, AttributeError, IndexError, KeyError) as exc:
            raise ConfigError(f"cannot rebuild the {kind} layer at node {node.name} of the exported model: {exc}; "
                              "log the model with serialization_format='pickle' instead") from None
        if path in seen:
            raise ConfigError(f"the exported model calls the {kind} layer {path} twice; log it with "
                              "serialization_format='pickle' so that its modules are kept")
        seen[path] = node
        _set_module(gm, path, module)
        with graph.inserting_before(node):
            call = graph.call_module(path, tuple(args))
        call.meta = dict(node.meta)
        node.replace_all_uses_with(call)
        graph.erase_node(node)
    _drop_unused(graph)
    _plain_codegen(gm)
    return gm.eval()  # as exported for inference; train() now switches batch-norm and dropout too


def _set_module(gm: fx.GraphModule, path: str, module: nn.Module) -> None:
    """Put `module` at `path`, keeping the buffers the old holder had beside the layer's own."""
    parent_path, _, name = path.rpartition(".")
    parent = gm.get_submodule(parent_path)
    old = getattr(parent, name, None)
    if isinstance(old, nn.Module):
        for key, buf in old.named_buffers(recurse=False):  # num_batches_tracked
            if not hasattr(module, key) or getattr(module, key) is None or key == "num_batches_tracked":
                module.register_buffer(key, buf)
    setattr(parent, name, module)


def _drop_unused(graph: fx.Graph) -> None:
    for node in reversed(list(graph.nodes)):
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
        elif node.op == "call_module" and node.target == "_guards_fn" and not node.users:
            graph.erase_node(node)  # the export's input-shape guard: the rebuilt layers check shapes


def _plain_codegen(gm: fx.GraphModule) -> None:
    """Forward with the exported inputs as plain arguments, returning the one output itself."""
    graph = gm.graph
    graph._codegen = fx.graph.CodeGen()
    out = next(n for n in graph.nodes if n.op == "output")
    result = out.args[0]
    if isinstance(result, (tuple, list)) and len(result) == 1:
        out.args = (result[0],)
    graph.lint()
    gm.recompile()
