"""Opt-in speed-ups of the training loop: channels_last, torch.compile and TF32 on CUDA.

All are off by default so that default runs stay plain float32 eager PyTorch, comparable
to the report's training. channels_last and compile do not change the math, but may change
the order of floating-point sums (other conv kernels, fused ops); TF32 rounds the inputs
of CUDA convolutions and matrix products to 10 mantissa bits. Runs with them on are close
to, not bit-identical with, runs with them off, so they are logged as run params.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, fields

import torch
from torch import Tensor, nn

from ofexp.options import option, option_params


@dataclass(frozen=True)
class SpeedOptions:
    """How the loop lays out and runs the network; none of it is a hyperparameter."""

    # NHWC activations and conv weights: faster conv kernels on many CPUs/GPUs
    channels_last: bool = option(False, "Train in channels_last (NHWC) memory layout; faster convs on many machines.")
    # torch.compile the forward pass (pays a one-off compile time per run)
    compile: bool = option(False, "torch.compile the network (one-off compile time per run; pays off on long runs).")
    # CUDA convs and matmuls in TF32 (tensor cores); CPU runs are unaffected
    tf32: bool = option(False, "On CUDA, run float32 convs and matmuls in TF32 (faster, lower precision); "
                        "off: IEEE float32.")

    def to_params(self) -> dict[str, str]:
        return option_params(self)

    @classmethod
    def from_params(cls, params: Mapping[str, object]) -> SpeedOptions:
        """From CLI flags (bools) or run params ("true"/"false", older runs "True"/"False"); a missing flag is off.

        Runs logged before a flag existed lack its param and were trained with it off.
        """
        return cls(**{f.name: str(params.get(f.name, False)).lower() == "true" for f in fields(cls)})

    def numerics(self) -> Iterator[None]:
        """The CUDA kernel settings training runs under (see ``float32_kernels``)."""
        return float32_kernels(tf32=self.tf32)

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


@contextmanager
def float32_kernels(tf32: bool = False) -> Iterator[None]:
    """Run the block's CUDA float32 convolutions and matmuls in IEEE float32, deterministically.

    PyTorch lets cuDNN convolutions use TF32 by default on Ampere and later GPUs, which
    would make a default GPU run lower-precision than the report's float32 training, and
    lets cuDNN pick non-deterministic backward kernels, which would break "same seed, same
    weights" and bit-identical ``--resume``. ``tf32=True`` allows TF32 (faster on tensor
    cores). The caller's settings come back afterwards. No effect on CPU kernels.
    """
    # the legacy flags: they set cuDNN's conv and RNN precision together, which keeps
    # PyTorch's own consistency check on the legacy getters happy for callers that use them
    matmul = torch.backends.cuda.matmul
    before = matmul.allow_tf32
    matmul.allow_tf32 = tf32
    try:
        with torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                        deterministic=True, allow_tf32=tf32):
            yield
    finally:
        matmul.allow_tf32 = before
