"""ResNet18, CIFAR variant: 3x3 stem, BasicBlock stages [2, 2, 2, 2], global avg pool, Linear."""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import nn

from ofexp.models.spec import ModelSpec

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels at width 1, stride of the first block)
BLOCKS_PER_STAGE = 2


class BlockPlan(NamedTuple):
    stage: int
    index: int
    c_in: int
    c_out: int
    stride: int

    @property
    def shortcut(self) -> bool:
        """A 1x1 conv shortcut is needed where the block changes the map's shape."""
        return self.stride != 1 or self.c_in != self.c_out


def stem_channels(spec: ModelSpec) -> int:
    return spec.channels(STAGES[0][0])


def block_plan(spec: ModelSpec) -> list[BlockPlan]:
    """Every BasicBlock in forward order; the model and its alignment spec both walk this."""
    plan = []
    c_in = stem_channels(spec)
    for stage, (base, stride) in enumerate(STAGES):
        c_out = spec.channels(base)
        for index in range(BLOCKS_PER_STAGE):
            plan.append(BlockPlan(stage, index, c_in, c_out, stride if index == 0 else 1))
            c_in = c_out
    return plan


def _norm(c: int, batchnorm: bool) -> nn.Module:
    # Identity has no state, so BN-free nets have no bn* keys at all.
    return nn.BatchNorm2d(c) if batchnorm else nn.Identity()


class BasicBlock(nn.Module):
    """relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))."""

    # forward only chains and adds its children's outputs (ofexp.metrics.hessian_exact relies on it)
    piecewise_linear_forward = True

    def __init__(self, p: BlockPlan, bias: bool, batchnorm: bool):
        super().__init__()
        self.conv1 = nn.Conv2d(p.c_in, p.c_out, 3, stride=p.stride, padding=1, bias=bias)
        self.bn1 = _norm(p.c_out, batchnorm)
        self.conv2 = nn.Conv2d(p.c_out, p.c_out, 3, stride=1, padding=1, bias=bias)
        self.bn2 = _norm(p.c_out, batchnorm)
        self.shortcut = nn.Sequential()
        if p.shortcut:
            self.shortcut.append(nn.Conv2d(p.c_in, p.c_out, 1, stride=p.stride, bias=bias))
            if batchnorm:
                self.shortcut.append(nn.BatchNorm2d(p.c_out))
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [B, c_in, H, W]
        out = self.relu(self.bn1(self.conv1(x)))  # [B, c_out, H/s, W/s]
        out = self.bn2(self.conv2(out))  # [B, c_out, H/s, W/s]
        return self.relu(out + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR ResNet18 for ``[B, C, H, W]`` inputs with H = W >= 32."""

    # forward only chains and adds its children's outputs (ofexp.metrics.hessian_exact relies on it)
    piecewise_linear_forward = True

    def __init__(self, spec: ModelSpec):
        super().__init__()
        c = stem_channels(spec)
        self.conv1 = nn.Conv2d(spec.in_channels, c, 3, stride=1, padding=1, bias=spec.bias)
        self.bn1 = _norm(c, spec.batchnorm)
        self.relu = nn.ReLU()
        self.layers = nn.ModuleList(nn.Sequential() for _ in STAGES)
        for p in block_plan(spec):
            self.layers[p.stage].append(BasicBlock(p, spec.bias, spec.batchnorm))
            c = p.c_out
        # Same as the report's 4x4 average pool for 32x32 inputs (the map is 4x4 there).
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c, spec.num_classes, bias=spec.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # [B, 64w, H, W]
        for stage in self.layers:
            x = stage(x)  # [B, c_stage, H/s, W/s]
        x = self.pool(x).flatten(1)  # [B, 512w]
        return self.classifier(x)  # [B, classes]
