"""The alignment spec of any ``nn.Module``, traced from its graph with ``torch.fx``.

Every tensor the network computes gets a label per axis: ``None`` (never permuted:
the input, spatial and sequence axes, the classes) or a *group variable*. A
Linear or Conv output opens a new variable; elementwise ops pass labels on;
operands that are added, multiplied or concatenated side by side must be
permuted alike, so their variables are unified (union-find): one permutation per
residual stream. ``cat`` along a channel axis and ``flatten`` of a channel axis
with spatial ones give *block-structured* axes (``groups.Layout``). A variable
unified with an unpermuted axis is never permuted. What no rule covers is
refused, naming the node, before anything is fused.

The result names each group after the module that first writes it, orders the
state dict's keys as the network does, and picks each group's *probes*: the
modules whose outputs hold the group's pre-activations (a writer's batch-norm,
else the writer itself), which activation alignment, REPAIR and the diagnostics read.
"""

from __future__ import annotations

import functools

import torch
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp, TensorMetadata

from ofexp.errors import ConfigError
from ofexp.models import ModelSpec, build_model
from ofexp.fusion import trace_rules as rules
from ofexp.fusion.groups import AlignmentSpec


class UntraceableModelError(ConfigError):
    """A network whose graph fx cannot trace, or that holds an op no alignment rule covers."""


class _UnionFind:
    """Group variables 1, 2, ...; variable 0 is FIXED, the class of every unpermuted axis."""

    def __init__(self) -> None:
        self.parent = [0]

    def new(self) -> int:
        self.parent.append(len(self.parent))
        return len(self.parent) - 1

    def find(self, v: int) -> int:
        while self.parent[v] != v:
            self.parent[v] = self.parent[self.parent[v]]
            v = self.parent[v]
        return v

    def union(self, a: int, b: int) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))  # FIXED (0) always stays the root of its class
            self.parent[hi] = lo


class _Tracer:
    """Walks an fx graph once, labelling every tensor axis; see the module docstring."""

    def __init__(self, model: nn.Module, graph: fx.GraphModule) -> None:
        self.model, self.graph = model, graph
        self.modules = dict(model.named_modules())
        self.vars = _UnionFind()
        self.labels: dict[fx.Node, tuple] = {}
        self.bound: dict[str, tuple] = {}  # state-dict key -> label per axis
        self.writes: list[tuple[fx.Node, int]] = []  # (writer node, its output variable)
        self.var_names: dict[int, str] = {}  # variables named by their rule (attention's qk, vo)
        self.heads: list[tuple[str, int, int, int]] = []  # (attention module, heads, qk var, vo var)
        self.token_reads: list[tuple[fx.Node, int, str]] = []  # (module node, variable, where: see TOKEN_PROBES)
        self.state = model.state_dict()

    # -- labels ------------------------------------------------------------------------------
    def shape(self, node) -> tuple[int, ...] | None:
        meta = node.meta.get("tensor_meta") if isinstance(node, fx.Node) else None
        return tuple(meta.shape) if isinstance(meta, TensorMetadata) else None

    def label(self, node) -> tuple | None:
        return self.labels.get(node) if isinstance(node, fx.Node) else None

    def unify(self, a, b) -> None:
        """Axis labels a and b must be permuted alike."""
        if a is None and b is None:
            return
        if isinstance(a, tuple) or isinstance(b, tuple):
            if isinstance(a, tuple) and isinstance(b, tuple) and [[n for _, n in s] for s in a] == [[n for _, n in s] for s in b]:
                for sa, sb in zip(a, b):
                    for (ga, _), (gb, _) in zip(sa, sb):
                        self.unify(ga, gb)
                return
            for v in rules.axis_vars(a) + rules.axis_vars(b):
                self.vars.union(v, 0)  # block structures that do not line up: leave them unpermuted
            return
        self.vars.union(0 if a is None else a, 0 if b is None else b)

    def bind(self, key: str, label: tuple) -> None:
        """Tensor `key` of the state dict carries `label`; a tensor used twice unifies both."""
        if key in self.bound:
            for a, b in zip(self.bound[key], label):
                self.unify(a, b)
        else:
            self.bound[key] = label

    def name_var(self, var: int, name: str) -> None:
        self.var_names[var] = name

    def fresh(self, shape: tuple[int, ...]) -> tuple:
        return tuple(self.vars.new() if n > 1 else None for n in shape)

    def refuse(self, node: fx.Node, why: str) -> None:
        path = rules.module_path(node)
        inputs = [self.label(a) for a in node.all_input_nodes]
        vs = {self.vars.find(v) for lab in inputs if lab for ax in lab for v in rules.axis_vars(ax)} - {0}
        keys = [k for k, lab in self.bound.items() if any(self.vars.find(v) in vs for ax in lab for v in rules.axis_vars(ax))]
        left = ", ".join(keys[:3]) + (f" and {len(keys) - 3} more" if len(keys) > 3 else "")
        raise UntraceableModelError(
            f"cannot align {node.op} {rules.target_name(node)} at {path or 'the top level'} (node {node.name}): {why}; "
            f"it would leave {left or 'its inputs'} unaligned. Fuse without alignment (--method naive), "
            "or wrap the op in a module whose symmetry ofexp knows"
        )

    # -- the walk ----------------------------------------------------------------------------
    def run(self) -> None:
        for node in self.graph.graph.nodes:
            shape = self.shape(node)
            if node.op == "placeholder":
                if shape is not None:
                    self.labels[node] = (None,) * len(shape)
            elif node.op == "get_attr":
                if shape is not None:
                    self.labels[node] = self.fresh(shape)
                    self.bind(node.target, self.labels[node])
            elif node.op == "output":
                for arg in rules.flat_args(node.args):
                    for ax in self.label(arg) or ():
                        self.unify(ax, None)  # the network's outputs (classes) are never permuted
            elif node.op == "call_module":
                self.labels_of(node, rules.module_rule(self, node, self.modules[node.target]), shape)
            else:
                self.labels_of(node, rules.function_rule(self, node), shape)

    def labels_of(self, node: fx.Node, out, shape) -> None:
        if isinstance(out, rules.Several):
            self.labels[node] = out
            return
        if shape is None:  # no single tensor: a size, an assert, or several tensors
            if isinstance(node.meta.get("tensor_meta"), (tuple, list)) and self.permuted_inputs(node):
                self.refuse(node, "it returns several tensors, which ofexp does not follow")
            return
        if out is rules.UNKNOWN or out is rules.NOT_A_TENSOR:
            if self.permuted_inputs(node):
                self.refuse(node, "no alignment rule covers this op")
            out = (None,) * len(shape)
        self.labels[node] = out

    def permuted_inputs(self, node: fx.Node) -> bool:
        return any(self.vars.find(v) != 0 for a in node.all_input_nodes
                   for ax in (self.label(a) or ()) for v in rules.axis_vars(ax))

    # -- the result --------------------------------------------------------------------------
    def spec(self, state_keys: list[str]) -> AlignmentSpec:
        names = self.group_names(state_keys)

        def resolve(ax):
            if ax is None:
                return None
            if isinstance(ax, tuple):
                return rules.simplify(tuple(tuple((names.get(self.vars.find(g)) if g is not None else None, n)
                                                  for g, n in seg) for seg in ax))
            return names.get(self.vars.find(ax))

        axes = {}
        for key in state_keys:
            label = self.bound.get(key)
            shape = tuple(self.state[key].shape)
            axes[key] = tuple(resolve(ax) for ax in label) if label is not None else (None,) * len(shape)
        heads = {path: (n, (names[self.vars.find(qk)], names[self.vars.find(vo)]))
                 for path, n, qk, vo in self.heads
                 if n > 1 and self.vars.find(qk) in names and self.vars.find(vo) in names}
        return AlignmentSpec(axes, self.probes(names), heads, self.token_probes(names))

    def group_names(self, state_keys: list[str]) -> dict[int, str]:
        """Root variable -> group name: the module path of the group's first writer."""
        names: dict[int, str] = {self.vars.find(v): name for v, name in self.var_names.items()
                                 if self.vars.find(v) != 0}
        for key in state_keys:
            label = self.bound.get(key)
            if not label or isinstance(label[0], tuple) or label[0] is None:
                continue
            root = self.vars.find(label[0])
            if root != 0 and root not in names:
                base = key.rsplit(".", 1)[0] if "." in key else key
                names[root] = base if base not in names.values() else f"{base}#{root}"
        return names

    def calls(self) -> dict[str, int]:
        calls: dict[str, int] = {}
        for node in self.graph.graph.nodes:
            if node.op == "call_module":
                calls[node.target] = calls.get(node.target, 0) + 1
        return calls

    def token_probes(self, names: dict[int, str]) -> dict[str, tuple[tuple[str, str], ...]]:
        calls, probes = self.calls(), {}
        for node, var, where in self.token_reads:
            group = names.get(self.vars.find(var))
            if group is not None and calls.get(node.target) == 1 and (node.target, where) not in probes.get(group, ()):
                probes[group] = probes.get(group, ()) + ((node.target, where),)
        return probes

    def probes(self, names: dict[int, str]) -> dict[str, tuple[str, ...]]:
        calls = self.calls()
        probes: dict[str, list[str]] = {}
        for node, var in self.writes:
            group = names.get(self.vars.find(var))
            users = list(node.users)
            if len(users) == 1 and users[0].op == "call_module" and rules.is_batchnorm(self.modules[users[0].target]):
                node = users[0]  # the pre-activation: after batch-norm
            if group is None or calls.get(node.target) != 1:
                continue  # a module called twice shows its hook only the last call
            probes.setdefault(group, [])
            if node.target not in probes[group]:
                probes[group].append(node.target)
        return {g: tuple(p) for g, p in probes.items()}


def trace_alignment(model: nn.Module, example_input: torch.Tensor) -> AlignmentSpec:
    """The ``AlignmentSpec`` of ``model``, derived from its fx graph on ``example_input``.

    Parameters
    ----------
    model : nn.Module
        Any network that ``torch.fx.symbolic_trace`` can trace; its state dict is
        what the spec describes. It is run once (eval mode, no gradients).
    example_input : torch.Tensor, shape [B, ...]
        An input in the model's format; only its shape and dtype matter.

    Returns
    -------
    AlignmentSpec
        Every state-dict key with the group of each axis; the network's input and
        output axes are never permuted.

    Raises
    ------
    UntraceableModelError
        fx cannot trace the model, or an op would leave a permuted axis unaligned
        (the message names the node, its module path and the tensors concerned).
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"trace_alignment: model must be an nn.Module, got {type(model).__name__}")
    if not isinstance(example_input, torch.Tensor):
        raise ConfigError("trace_alignment: example_input must be a tensor in the model's input format, e.g. "
                          "torch.zeros(2, 3, 32, 32)")
    try:
        graph = fx.symbolic_trace(model)
    except Exception as exc:  # fx raises many types on data-dependent control flow
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UntraceableModelError(f"torch.fx cannot trace {type(model).__name__}: {first}; make its forward "
                                    "free of data-dependent control flow") from None
    training = model.training
    try:
        model.eval()
        with torch.no_grad():
            ShapeProp(graph).propagate(example_input.to(_device_of(model)))
    except Exception as exc:
        raise UntraceableModelError(f"{type(model).__name__} does not run on an input of shape "
                                    f"{list(example_input.shape)}: {str(exc).splitlines()[0]}; pass an input in "
                                    "the model's format") from None
    finally:
        model.train(training)
    tracer = _Tracer(model, graph)
    tracer.run()
    return tracer.spec(list(tracer.state))


def alignment_spec(model: nn.Module | ModelSpec, example_input: torch.Tensor | None = None) -> AlignmentSpec:
    """The alignment spec of ``model``: traced on ``example_input``, or, for a network ofexp
    built (``model.spec`` a ModelSpec) or a ModelSpec itself, on a zero batch of its input shape.

    ConfigError for a network ofexp did not build when no ``example_input`` is given.
    """
    if isinstance(model, ModelSpec):
        return _own_spec(model)
    if example_input is None:
        if isinstance(getattr(model, "spec", None), ModelSpec):
            return _own_spec(model.spec)
        raise ConfigError(f"alignment_spec: pass example_input=<a batch in the model's input format> to trace a "
                          f"{type(model).__name__}, which ofexp did not build")
    return trace_alignment(model, example_input)


@functools.lru_cache(maxsize=64)
def _own_spec(spec: ModelSpec) -> AlignmentSpec:
    with torch.device("meta"):  # shapes only: no weights to initialise
        model = build_model(spec)
        example = torch.zeros(2, spec.in_channels, spec.input_size, spec.input_size)
    return trace_alignment(model, example)


def _device_of(model: nn.Module) -> torch.device:
    tensor = next(iter(model.parameters()), None)
    return tensor.device if tensor is not None else torch.device("cpu")

