"""What a measure may look at: the model, its data and its reference weights."""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from ofexp.data import DataSplits
from ofexp.training import evaluate


@dataclass
class MeasureContext:
    """Inputs shared by all measures of one model, with passes cached across measures.

    `reference_weights` returns θ₀ (DESIGN §5) on demand, so that measures that
    don't need it never download it.
    """

    model: nn.Module
    splits: DataSplits
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reference_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    batch_size: int = 512

    @cached_property
    def test_eval(self) -> dict[str, float]:
        return evaluate(self.model, self.splits.test_x, self.splits.test_y, batch_size=self.batch_size, device=self.device)

    @cached_property
    def train_eval(self) -> dict[str, float]:
        return evaluate(self.model, self.splits.train_x, self.splits.train_y, batch_size=self.batch_size, device=self.device)
