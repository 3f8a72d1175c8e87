"""What a measure may look at: the model, its data and its reference weights."""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from functools import cached_property
from typing import Callable

import torch
from torch import nn

from ofexp.data import DataSplits
from ofexp.errors import ConfigError
from ofexp.metrics.flatness import pac_bayes_sigma
from ofexp.metrics.sharpness import SearchBudget, SearchResult, parameter_vector, reference_vector, sharpness_sigma
from ofexp.training import evaluate


@dataclass
class MeasureContext:
    """Inputs shared by all measures of one model, with passes cached across measures.

    `reference_weights` returns θ₀ (DESIGN §5) on demand, so that measures that
    don't need it never download it. `budget` sets the σ searches' work (the report's
    by default; `SearchBudget.quick()` for tests), `sharpness_worst` their worst case
    ("max", Jiang et al. 2019, or the report's "min"; see `sharpness_deviation`), and
    `seed` every random draw: each measure's stream derives from (seed, its purpose),
    so values don't depend on which other measures ran, or in what order. Each σ
    search runs once and serves its three measures.
    """

    model: nn.Module
    splits: DataSplits
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    reference_weights: Callable[[], dict[str, torch.Tensor]] | None = None
    batch_size: int = 512
    budget: SearchBudget = field(default_factory=SearchBudget)
    sharpness_worst: str = "max"
    seed: int = 0
    hessian_batch_size: int = 100  # test images for the Hessian measures

    @cached_property
    def test_eval(self) -> dict[str, float]:
        return evaluate(self.model, self.splits.test_x, self.splits.test_y, batch_size=self.batch_size, device=self.device)

    @cached_property
    def train_eval(self) -> dict[str, float]:
        return evaluate(self.model, self.splits.train_x, self.splits.train_y, batch_size=self.batch_size, device=self.device)

    def generator(self, purpose: str, *, cpu: bool = False) -> torch.Generator:
        """A fresh generator on the device (or the CPU), seeded from (seed, purpose)."""
        seed = (self.seed * 1_000_003 + zlib.crc32(purpose.encode())) % 2**63
        try:
            gen = torch.Generator() if cpu else torch.Generator(device=self.device)
        except RuntimeError:  # a backend without its own generators: draw on the CPU
            gen = torch.Generator()
        return gen.manual_seed(seed)

    @property
    def train_loss(self) -> float:
        """L of DESIGN §5: the true mean training cross-entropy."""
        return self.train_eval["loss"]

    @property
    def num_train(self) -> int:
        """m: the training-set size."""
        return int(self.splits.train_x.shape[0])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """One input of the data set's shape, [1, C, H, W]."""
        return (1, *self.splits.train_x.shape[1:])

    @cached_property
    def theta(self) -> torch.Tensor:
        """θ: the model's parameters (not buffers) as one flat vector [ω]."""
        return parameter_vector(self.model)

    @cached_property
    def theta0(self) -> torch.Tensor:
        """θ₀: the reference weights' parameters as a flat vector [ω] (their buffers are ignored)."""
        if self.reference_weights is None:
            raise ConfigError(
                "this measure needs reference weights θ₀; give MeasureContext a reference_weights callable"
            )
        return reference_vector(self.model, self.reference_weights())

    @cached_property
    def hessian_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """One seeded random batch of `hessian_batch_size` test images and labels, on the device."""
        n = self.splits.test_x.shape[0]
        idx = torch.randperm(n, generator=self.generator("hessian_batch", cpu=True))[: self.hessian_batch_size]
        return self.splits.test_x[idx].to(self.device), self.splits.test_y[idx].to(self.device)

    @cached_property
    def _train_on_device(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.splits.train_x.to(self.device), self.splits.train_y.to(self.device)

    def _sharpness(self, magnitude_aware: bool) -> SearchResult:
        x, y = self._train_on_device
        purpose = "sharpness_mag" if magnitude_aware else "sharpness"
        return sharpness_sigma(self.model, x, y, magnitude_aware=magnitude_aware, loss=self.train_loss,
                               budget=self.budget, worst=self.sharpness_worst, generator=self.generator(purpose))

    def _pac_bayes(self, magnitude_aware: bool) -> SearchResult:
        x, y = self._train_on_device
        purpose = "pac_bayes_mag" if magnitude_aware else "pac_bayes"
        return pac_bayes_sigma(self.model, x, y, magnitude_aware=magnitude_aware, loss=self.train_loss,
                               budget=self.budget, generator=self.generator(purpose))

    @cached_property
    def sharpness_search(self) -> SearchResult:
        """σ of the plain sharpness measures (sharpness_flatness, _init, _orig)."""
        return self._sharpness(False)

    @cached_property
    def sharpness_mag_search(self) -> SearchResult:
        """σ′ of the magnitude-aware sharpness measures."""
        return self._sharpness(True)

    @cached_property
    def pac_bayes_search(self) -> SearchResult:
        """σ of the plain PAC-Bayes measures."""
        return self._pac_bayes(False)

    @cached_property
    def pac_bayes_mag_search(self) -> SearchResult:
        """σ′ of the magnitude-aware PAC-Bayes measures."""
        return self._pac_bayes(True)
