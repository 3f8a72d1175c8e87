"""The network as a served model sees it: raw images in, logits out.

ofexp's networks read images resized to the study's `--image-size` and normalised with
the training split's mean and std. A caller of a served model knows neither (the mean
and std are recorded only in the run that computed them), so the model ofexp logs for
MLflow wraps the network in `RawImageNetwork`: it takes pixel values in [0, 1] at the
data set's own size (its registry entry's `raw_size`), resizes them as ofexp's loader does (bilinear) and normalises them
inside. Given the same raw images, it predicts exactly what ofexp measured.

It also refuses what it cannot read: non-finite values and values outside [0, 1] (8-bit
pixels of 0-255, digits' raw 0-16) raise with a message that says what is expected. The
checks are `torch._assert_async` ops, which `torch.export` keeps in the pt2 graph MLflow
logs, so `mlflow models serve` answers such a request with HTTP 400 instead of logits.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# Slack on [0, 1]: pixels un-normalised from a loader's tensors (x * std + mean) land a few
# float32 ulps outside it, and those are the images the network was measured on.
PIXEL_SLACK = 1e-4


class RawImageNetwork(nn.Module):
    """`network` behind the loader's resize and normalisation.

    Input: [n, C, raw_size, raw_size] pixel values in [0, 1]; output: the network's logits
    [n, num_classes]. `mean` and `std` are per channel (length C).
    """

    def __init__(self, network: nn.Module, mean: Sequence[float], std: Sequence[float],
                 raw_size: int, input_size: int) -> None:
        super().__init__()
        if len(mean) != len(std):
            raise ValueError(f"mean has {len(mean)} channels but std has {len(std)}")
        self.network = network
        self.raw_size, self.input_size = raw_size, input_size
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))  # [1, C, 1, 1]
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))  # [1, C, 1, 1]
        expected = f"float32 pixel values in [0, 1] of shape [n, {len(mean)}, {raw_size}, {raw_size}]"
        self.non_finite_message = f"the input holds NaN or infinite values; this model takes {expected}"
        self.out_of_range_message = (f"the input holds values outside [0, 1]; this model takes {expected} "
                                     "(divide 8-bit pixels by 255)")

    def forward(self, x: Tensor) -> Tensor:  # [n, C, raw, raw] in [0, 1] -> [n, classes]
        torch._assert_async(torch.isfinite(x).all(), self.non_finite_message)
        torch._assert_async(((x >= -PIXEL_SLACK) & (x <= 1 + PIXEL_SLACK)).all(), self.out_of_range_message)
        if self.raw_size != self.input_size:
            # the loaders' resize: bilinear, antialiased only when shrinking
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bilinear", align_corners=False,
                              antialias=self.input_size < self.raw_size)
        return self.network((x - self.mean) / self.std)


def raw_examples(model: RawImageNetwork, normalised: Tensor) -> Tensor:
    """Raw-image examples [n, C, raw, raw] in [0, 1] made from normalised inputs [n, C, H, W]: for
    the logged model's input example, which shows callers the format."""
    x = normalised * model.std + model.mean  # [n, C, H, W] in [0, 1]
    if model.raw_size != model.input_size:
        x = F.interpolate(x, size=(model.raw_size, model.raw_size), mode="bilinear", align_corners=False,
                          antialias=model.raw_size < model.input_size)
    return x.clamp_(0.0, 1.0)


__all__ = ["PIXEL_SLACK", "RawImageNetwork", "raw_examples"]
