"""The exact Hessian trace of a piecewise-linear network, from per-sample gradients.

For L(θ) = (1/N) Σₙ ℓ(f(xₙ; θ), yₙ), ℓ the cross-entropy and pₙ = softmax(fₙ):

    ∇²L = (1/N) Σₙ [ Jₙᵀ Aₙ Jₙ + Σ_c (p_nc − [yₙ = c]) ∇²f_nc ],   Aₙ = diag(pₙ) − pₙpₙᵀ.

In a network made of Linear, Conv2d and eval-mode BatchNorm layers joined by
piecewise-linear maps (ReLU, max and average pooling, flattening, additions), each
output is, within one activation pattern, linear in every single parameter: the
parameter multiplies a quantity that does not depend on it, and everything after it
is linear. So ∂²f/∂θᵢ² = 0, the second term has a zero diagonal, and

    tr(∇²L) = (1/N) Σₙ tr(Jₙᵀ Aₙ Jₙ) = (1/N) Σₙ Σ_c p_nc ‖∇_θ ℓ(f(xₙ), c)‖²,

using Aₙ = Σ_c p_nc (e_c − pₙ)(e_c − pₙ)ᵀ and Jₙᵀ(pₙ − e_c) = ∇_θ ℓ(fₙ, c). The
double-backward Hessian-vector products agree: autograd differentiates ReLU's and
max-pooling's backward as zero, so their Hessian has the same zero diagonal.

One backward pass per class c, with cotangents √p_nc (pₙ − e_c) on the logits, gives
every layer's output gradient gₙ; a parameter's per-sample gradient is then a sum of
outer products of gₙ with the layer's input uₙ over positions, whose squared norm is
computed without forming the summed gradient: ‖Σₚ gₚuₚᵀ‖² directly (a batched
matmul) or as Σₚ,q (gₚ·g_q)(uₚ·u_q), whichever costs less. The cost is about C
backward passes of the batch, against one HVP (a forward, backward and double
backward) per Hutchinson sample, and the result has no sampling error.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ofexp.models import eval_mode

PARAMETER_LAYERS = (nn.Linear, nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d)
PIECEWISE_LINEAR = (nn.ReLU, nn.MaxPool2d, nn.AvgPool2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Identity, nn.Dropout)
# Floats of one chunk's per-sample gradient matrices [n, out, in] in the direct product.
DIRECT_CHUNK_FLOATS = 16 * 2**20
# Unfolded conv inputs are kept across the C backward passes while they fit in this many floats.
UNFOLD_CACHE_FLOATS = 64 * 2**20


def exact_trace_unsupported(model: nn.Module) -> str | None:
    """Why ``hessian_trace_exact`` does not apply to ``model``, or None when it does.

    It applies when every leaf module is a parameter layer (Linear, Conv2d with
    groups=1 and zero padding, BatchNorm with running statistics) or a
    piecewise-linear map (not in place), every container is an ``nn.Sequential``, an
    ``nn.ModuleList`` or declares ``piecewise_linear_forward = True`` (its forward only
    chains and adds its children's outputs, as ofexp's MLP, VGG11 and ResNet18 do), and
    every parameter belongs to exactly one parameter layer.
    """
    owned = 0
    for name, module in model.named_modules():
        label = name or type(module).__name__
        plain_container = type(module) in (nn.Sequential, nn.ModuleList)
        if any(True for _ in module.children()):
            if not (plain_container or getattr(module, "piecewise_linear_forward", False)):
                return f"{label} ({type(module).__name__}) does not declare piecewise_linear_forward"
            if any(True for _ in module.parameters(recurse=False)):
                return f"{label} holds parameters of its own"
            continue
        if plain_container:
            continue  # an empty Sequential is the identity
        if isinstance(module, PIECEWISE_LINEAR):
            if getattr(module, "inplace", False):
                return f"{label} works in place"
            continue
        if not isinstance(module, PARAMETER_LAYERS):
            return f"{label} ({type(module).__name__}) is not a linear or piecewise-linear layer"
        if isinstance(module, nn.Conv2d) and (module.groups != 1 or module.padding_mode != "zeros"):
            return f"{label} uses groups or non-zero padding"
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.running_mean is None:
            return f"{label} has no running statistics (it normalises by batch statistics)"
        owned += sum(p.numel() for p in module.parameters(recurse=False))
    if owned != sum(p.numel() for p in model.parameters()):
        return "some parameters are shared between layers"
    return None


def _outer_norms(g: Tensor, u: Tensor) -> Tensor:
    """‖Σₚ gₙₚ uₙₚᵀ‖²_F per sample: g [n, P, o], u [n, P, i] -> [n]."""
    n, positions, o = g.shape
    i = u.shape[2]
    if positions == 1:
        return g[:, 0].square().sum(1) * u[:, 0].square().sum(1)
    if positions * (o + i) <= o * i:  # Gram form: n·P²·(o+i) flops against n·P·o·i
        return (g @ g.transpose(1, 2)).mul_(u @ u.transpose(1, 2)).sum((1, 2))  # [n, P, P] -> [n]
    step = max(1, DIRECT_CHUNK_FLOATS // (o * i))
    return torch.cat([(gc.transpose(1, 2) @ uc).square().sum((1, 2))  # [c, o, i] -> [c]
                      for gc, uc in zip(g.split(step), u.split(step))])


def _conv_weight_norms(conv: nn.Conv2d, a: Tensor, g: Tensor, cache: dict) -> Tensor:
    """Per-sample ‖∂ℓ/∂W‖² [n] of a conv from its input a [n, in, H, W] and output gradient g [n, out, H', W']."""
    o, positions = g.shape[1], g.shape[2] * g.shape[3]
    i = conv.weight[0].numel()  # in · k · k
    if positions * (o + i) > o * i and positions >= 256:
        # Large maps: each sample's weight gradient as one group of a grouped convolution,
        # 2-3x faster than unfolding (measured on CPU) and without the unfolded copy.
        step, out = max(1, DIRECT_CHUNK_FLOATS // (o * i)), []
        for ac, gc in zip(a.split(step), g.split(step)):
            c = ac.shape[0]
            w = torch.nn.grad.conv2d_weight(ac.reshape(1, -1, *ac.shape[2:]), (c * o, *conv.weight.shape[1:]),
                                            gc.reshape(1, -1, *gc.shape[2:]), conv.stride, conv.padding,
                                            conv.dilation, groups=c)  # [c·out, in, k, k]
            out.append(w.view(c, -1).square().sum(1))
        return torch.cat(out)
    u = cache.get(conv)
    if u is None:
        u = F.unfold(a, conv.kernel_size, conv.dilation, conv.padding, conv.stride)  # [n, in·k·k, P]
        if cache.setdefault("floats", 0) + u.numel() <= UNFOLD_CACHE_FLOATS:
            cache[conv], cache["floats"] = u, cache["floats"] + u.numel()
    return _outer_norms(g.flatten(2).transpose(1, 2), u.transpose(1, 2))


def _layer_norms(module: nn.Module, a: Tensor, g: Tensor, cache: dict) -> Tensor:
    """Per-sample squared gradient norm [n] of ``module``'s parameters, from its input a and output gradient g."""
    n = g.shape[0]
    total = g.new_zeros(n)
    if isinstance(module, nn.Linear):
        gs, us = g.reshape(n, -1, g.shape[-1]), a.reshape(n, -1, a.shape[-1])  # [n, P, out], [n, P, in]
        total += _outer_norms(gs, us)
        if module.bias is not None:
            total += gs.sum(1).square().sum(1)
    elif isinstance(module, nn.Conv2d):
        gs = g.flatten(2)  # [n, out, P]
        total += _conv_weight_norms(module, a, g, cache)
        if module.bias is not None:
            total += gs.sum(2).square().sum(1)
    elif module.affine:  # eval-mode batch-norm: y = γ x̂ + β, per channel
        shape = (1, -1) + (1,) * (a.ndim - 2)
        xhat = (a - module.running_mean.view(shape)) / torch.sqrt(module.running_var.view(shape) + module.eps)
        gs, xs = g.reshape(n, g.shape[1], -1), xhat.reshape(n, a.shape[1], -1)  # [n, C, P]
        total += (gs * xs).sum(2).square().sum(1) + gs.sum(2).square().sum(1)
    return total


def hessian_trace_exact(model: nn.Module, inputs: Tensor, targets: Tensor) -> float:
    r"""tr(H) of the mean cross-entropy of (inputs [N, ...], targets [N]), exactly, for piecewise-linear nets.

    .. math:: \mathrm{tr}\,\nabla^2 L = \frac1N \sum_n \sum_c p_{nc}\,
              \|\nabla_\theta \ell(f(x_n), c)\|^2

    (see the module docstring for why this equals the Hessian's trace on such
    networks). ``targets`` do not enter: on these networks the trace depends on the
    predictions only. The model runs in eval mode (restored afterwards), like the
    Hessian-vector products of ``hessian_trace``. Cost: one forward and C backward
    passes of the batch (C = number of classes).

    Raises
    ------
    ValueError
        If the model is not of the supported kind (``exact_trace_unsupported``).
    """
    reason = exact_trace_unsupported(model)
    if reason is not None:
        raise ValueError(f"hessian_trace_exact: {reason}; use hessian_trace(method='hutchinson')")
    if inputs.shape[0] != targets.shape[0] or inputs.shape[0] == 0:
        raise ValueError(f"hessian_trace_exact: inputs ({inputs.shape[0]}) and targets ({targets.shape[0]}) "
                         "must be the same non-zero number of samples")
    layers = [m for m in model.modules()
              if isinstance(m, PARAMETER_LAYERS) and any(True for _ in m.parameters(recurse=False))]
    seen: dict[nn.Module, tuple[Tensor, Tensor]] = {}

    def keep(module, args, out):
        if module in seen:
            raise ValueError(f"hessian_trace_exact: {type(module).__name__} runs twice in one forward pass")
        seen[module] = (args[0].detach(), out)

    hooks = [m.register_forward_hook(keep) for m in layers]
    try:
        with eval_mode(model), torch.enable_grad():
            logits = model(inputs.detach().requires_grad_(True))  # [N, C]; the graph reaches every layer output
    finally:
        for h in hooks:
            h.remove()
    layers = [m for m in layers if m in seen]
    outs = [seen[m][1] for m in layers]
    probs = logits.detach().softmax(dim=1)  # [N, C]
    total, cache = 0.0, {}
    for c in range(logits.shape[1]):
        cot = probs.clone()
        cot[:, c] -= 1.0
        cot.mul_(probs[:, c : c + 1].sqrt())  # √p_nc (p_n − e_c): weights sample n's norm by p_nc
        grads = torch.autograd.grad(logits, outs, grad_outputs=cot, retain_graph=c + 1 < logits.shape[1],
                                    allow_unused=True)  # a layer off the logits' path has zero gradient
        with torch.no_grad():
            total += float(sum(_layer_norms(m, seen[m][0], g, cache).sum()
                               for m, g in zip(layers, grads) if g is not None))
    value = total / inputs.shape[0]
    if not math.isfinite(value):
        raise ValueError("hessian_trace_exact: the trace is not finite (NaN or infinite logits)")
    return value
