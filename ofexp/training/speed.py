"""Opt-in speed-ups of the training loop: channels_last memory layout and torch.compile.

Both are off by default so that default runs stay plain float32 eager PyTorch, comparable
to the report's training. Neither changes the math, but both may change the order of
floating-point sums (other conv kernels, fused ops), so runs with them on are close to,
not bit-identical with, runs with them off; they are therefore logged as run params.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class SpeedOptions:
    """How the loop lays out and runs the network; none of it is a hyperparameter."""

    channels_last: bool = False  # NHWC activations and conv weights: faster conv kernels on many CPUs/GPUs
    compile: bool = False  # torch.compile the forward pass (pays a one-off compile time per run)

    def to_params(self) -> dict[str, str]:
        return {"channels_last": str(self.channels_last), "compile": str(self.compile)}

    def prepare_inputs(self, x: Tensor) -> Tensor:
        """Images x [n, C, H, W] in the layout the model expects (same shape, maybe NHWC strides)."""
        if self.channels_last and x.dim() == 4:
            return x.contiguous(memory_format=torch.channels_last)  # batches indexed from it stay NHWC
        return x

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Convert `model` in place to the layout; return what to call for forward passes.

        With compile, that is a compiled wrapper sharing `model`'s parameters; the caller
        keeps using `model` itself for state dicts (the wrapper prefixes their keys).
        """
        if self.channels_last:
            model.to(memory_format=torch.channels_last)  # 4-D conv weights only; others unchanged
        return torch.compile(model) if self.compile else model
