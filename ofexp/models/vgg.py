"""VGG11: (conv3x3 [-> BN] -> ReLU | max-pool) features -> global avg pool -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from ofexp.models.spec import ModelSpec

CONFIG = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")


def layer_plan(spec: ModelSpec) -> list[tuple[str, int]]:
    """Modules of ``features`` in order, as (kind, channels), kind in conv | bn | relu | pool.

    The single source of the ``features.<i>`` indices: the model and its
    alignment spec both walk this list, so they cannot disagree.
    """
    plan: list[tuple[str, int]] = []
    c = 0
    for item in CONFIG:
        if item == "M":
            plan.append(("pool", c))
            continue
        c = spec.channels(item)
        plan.append(("conv", c))
        if spec.batchnorm:
            plan.append(("bn", c))
        plan.append(("relu", c))
    return plan


class VGG11(nn.Module):
    """VGG11 for ``[B, C, H, W]`` inputs with H = W >= 32."""

    # forward only chains and adds its children's outputs (ofexp.metrics.hessian_exact relies on it)
    piecewise_linear_forward = True

    def __init__(self, spec: ModelSpec):
        super().__init__()
        c_in = spec.in_channels
        layers: list[nn.Module] = []
        for kind, c in layer_plan(spec):
            if kind == "conv":
                layers.append(nn.Conv2d(c_in, c, kernel_size=3, padding=1, bias=spec.bias))
                c_in = c
            elif kind == "bn":
                layers.append(nn.BatchNorm2d(c))
            elif kind == "relu":
                layers.append(nn.ReLU())
            else:
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        self.features = nn.Sequential(*layers)
        # Identity at 32x32 (the map is already 1x1); lets larger inputs work unchanged.
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_in, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # [B, C_last, H/32, W/32]
        x = self.pool(x).flatten(1)  # [B, C_last]
        return self.classifier(x)  # [B, classes]
