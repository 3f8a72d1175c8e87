"""Recompute batch-norm running statistics, which averaging (naive or aligned) gets wrong."""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm


@torch.no_grad()
def recompute_batchnorm_stats(model: nn.Module, inputs: torch.Tensor, batch_size: int = 256) -> None:
    r"""Reset and re-estimate every batch-norm layer's running mean and variance on ``inputs``.

    Each layer's statistics become the cumulative average (``momentum=None``)
    over the batches of the per-batch mean :math:`\mu_b` and unbiased variance
    :math:`\sigma^2_b` of its input, computed in train mode. ``inputs`` is split
    into batches of near-equal size, so that the equal-weight average over
    batches is (nearly) the average over samples. Momenta, the train/eval mode
    of every module and all parameters are left as they were. No-op for a
    model without batch-norm.

    Parameters
    ----------
    model : nn.Module
        The network, updated in place.
    inputs : torch.Tensor, shape [N, ...], N >= 2
        Training samples in the model's input format.
    batch_size : int
        Largest batch to run at once; >= 2.
    """
    bns = [m for m in model.modules() if isinstance(m, _BatchNorm) and m.track_running_stats]
    if not bns:
        return
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 2:
        raise ValueError(f"batch_size={batch_size!r} must be an int >= 2; e.g. use 256")
    if len(inputs) < 2:
        raise ValueError(f"inputs has {len(inputs)} sample(s); batch-norm statistics need at least 2")
    momenta = [m.momentum for m in bns]
    modes = [(m, m.training) for m in model.modules()]
    device = bns[0].running_mean.device
    try:
        for m in bns:
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average over the batches
        model.train()
        for x in torch.tensor_split(inputs, math.ceil(len(inputs) / batch_size)):
            model(x.to(device))
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        for m, training in modes:
            m.train(training)
