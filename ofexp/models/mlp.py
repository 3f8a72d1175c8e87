"""Multi-layer perceptron for small inputs: flatten -> (Linear [-> BN] -> ReLU) x 3 -> Linear."""

from __future__ import annotations

import torch
from torch import nn

from ofexp.models.spec import ModelSpec

HIDDEN = (512, 256, 128)


def layer_plan(spec: ModelSpec) -> list[tuple[str, int]]:
    """Modules of ``features`` in order, as (kind, channels) with kind in linear | bn | relu.

    The single source of the ``features.<i>`` indices: the model and its
    alignment spec both walk this list, so they cannot disagree.
    """
    plan = []
    for base in HIDDEN:
        c = spec.channels(base)
        plan.append(("linear", c))
        if spec.batchnorm:
            plan.append(("bn", c))
        plan.append(("relu", c))
    return plan


class MLP(nn.Module):
    """MLP on flattened ``[B, C, H, W]`` inputs; see ``layer_plan`` for the hidden layers."""

    # forward only chains and adds its children's outputs (ofexp.metrics.hessian_exact relies on it)
    piecewise_linear_forward = True

    def __init__(self, spec: ModelSpec):
        super().__init__()
        n_in = spec.in_channels * spec.input_size**2
        layers: list[nn.Module] = []
        for kind, c in layer_plan(spec):
            if kind == "linear":
                layers.append(nn.Linear(n_in, c, bias=spec.bias))
                n_in = c
            elif kind == "bn":
                layers.append(nn.BatchNorm1d(c))
            else:
                layers.append(nn.ReLU())
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(n_in, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)  # [B, C*H*W]
        x = self.features(x)  # [B, hidden_last]
        return self.classifier(x)  # [B, classes]
