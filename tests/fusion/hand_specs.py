"""The alignment specs ofexp wrote by hand for its own architectures, before they were traced.

Kept as the oracle of tests/fusion/test_trace.py: the traced specs must have the same groups,
and fusing with either must give bit-identical weights.
"""
from __future__ import annotations

from ofexp.fusion.groups import AlignmentSpec, Axes
from ofexp.models import ModelSpec
from ofexp.models import mlp, resnet, vgg


def _layer_axes(name: str, out: str | None, inp: str | None, conv: bool, bias: bool) -> dict[str, Axes]:
    spatial = (None, None) if conv else ()  # a conv weight is [n_out, n_in, kh, kw]
    axes: dict[str, Axes] = {f"{name}.weight": (out, inp, *spatial)}
    if bias:
        axes[f"{name}.bias"] = (out,)
    return axes


def _bn_axes(name: str, group: str) -> dict[str, Axes]:
    stats = ("weight", "bias", "running_mean", "running_var")
    axes: dict[str, Axes] = {f"{name}.{k}": (group,) for k in stats}
    axes[f"{name}.num_batches_tracked"] = ()
    return axes


def _chain_spec(plan: list[tuple[str, int]], bias: bool) -> AlignmentSpec:
    """MLP / VGG: each hidden layer's outputs are a group, read by the next layer."""
    axes: dict[str, Axes] = {}
    probes: dict[str, tuple[str, ...]] = {}
    prev: str | None = None  # the network input is never permuted
    for i, (kind, _) in enumerate(plan):
        name = f"features.{i}"
        if kind in ("linear", "conv"):
            axes.update(_layer_axes(name, name, prev, kind == "conv", bias))
            prev = name
            probes[name] = (name,)
        elif kind == "bn":
            axes.update(_bn_axes(name, prev))
            probes[prev] = (name,)  # pre-activation = after BN, before ReLU
    axes.update(_layer_axes("classifier", None, prev, False, bias))
    return AlignmentSpec(axes, probes)


def _resnet_spec(spec: ModelSpec) -> AlignmentSpec:
    """ResNet18: one group per stage's residual stream, one per block's inner channels."""
    bias, bn = spec.bias, spec.batchnorm
    stream = "layers.0.stream"  # the stem writes stage 0's stream
    axes = _layer_axes("conv1", stream, None, True, bias)
    axes.update(_bn_axes("bn1", stream) if bn else {})
    probes: dict[str, list[str]] = {stream: ["bn1" if bn else "conv1"]}
    for p in resnet.block_plan(spec):
        prefix = f"layers.{p.stage}.{p.index}"
        inner, out = f"{prefix}.inner", f"layers.{p.stage}.stream"
        if not p.shortcut and out != stream:
            raise AssertionError(f"identity shortcut across streams in {prefix}")  # block_plan bug
        axes.update(_layer_axes(f"{prefix}.conv1", inner, stream, True, bias))
        axes.update(_bn_axes(f"{prefix}.bn1", inner) if bn else {})
        axes.update(_layer_axes(f"{prefix}.conv2", out, inner, True, bias))
        axes.update(_bn_axes(f"{prefix}.bn2", out) if bn else {})
        if p.shortcut:
            axes.update(_layer_axes(f"{prefix}.shortcut.0", out, stream, True, bias))
            axes.update(_bn_axes(f"{prefix}.shortcut.1", out) if bn else {})
        probes[inner] = [f"{prefix}.bn1" if bn else f"{prefix}.conv1"]
        # The stream's pre-activation is bn2(conv2) + shortcut; probe its terms, since
        # post-ReLU block outputs have dead channels that tie in the cost.
        probes.setdefault(out, []).append(f"{prefix}.bn2" if bn else f"{prefix}.conv2")
        if p.shortcut:
            probes[out].append(f"{prefix}.shortcut.{1 if bn else 0}")
        stream = out
    axes.update(_layer_axes("classifier", None, stream, False, bias))
    return AlignmentSpec(axes, {g: tuple(v) for g, v in probes.items()})


def hand_alignment_spec(spec: ModelSpec) -> AlignmentSpec:
    """The alignment groups of the network that ``build_model(spec)`` builds.

    Classifier outputs are never permuted; nor is the network input.
    """
    if spec.arch == "mlp":
        return _chain_spec(mlp.layer_plan(spec), spec.bias)
    if spec.arch == "vgg11":
        return _chain_spec(vgg.layer_plan(spec), spec.bias)
    return _resnet_spec(spec)
