"""The prediction ensemble: one classifier whose probabilities are the mean of its members'.

It is the reference ceiling of model fusion (Singh & Jaggi 2020): k networks
cost k forward passes, where a fused network costs one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from ofexp.errors import ConfigError
from ofexp.models import build_model
from ofexp.models.spec import ModelSpec

ENSEMBLE_ARCH = "ensemble"
# The only combination rule: the mean of the members' softmax outputs.
COMBINE = "mean_softmax"


@dataclass(frozen=True)
class EnsembleSpec:
    """k ≥ 2 member specs that read the same inputs and predict the same classes.

    Members may differ in architecture, width, bias and batch-norm; only the
    input shape (in_channels, input_size) and num_classes must agree.
    """

    members: tuple[ModelSpec, ...]

    def __post_init__(self) -> None:
        members = tuple(self.members)
        object.__setattr__(self, "members", members)
        if len(members) < 2 or not all(isinstance(m, ModelSpec) for m in members):
            raise ConfigError(f"an ensemble needs at least 2 member ModelSpecs, got {len(members)}; "
                              "pass --parents ID,ID")
        shape = _io_shape(members[0])
        for i, member in enumerate(members[1:], start=2):
            if _io_shape(member) != shape:
                raise ConfigError(
                    f"ensemble member {i} reads/predicts (in_channels, input_size, num_classes)="
                    f"{_io_shape(member)}, member 1 {shape}; ensemble models of the same data")

    # The fields that code written for a single ModelSpec reads (shapes, not architecture).
    arch = ENSEMBLE_ARCH

    @property
    def num_classes(self) -> int:
        return self.members[0].num_classes

    @property
    def in_channels(self) -> int:
        return self.members[0].in_channels

    @property
    def input_size(self) -> int:
        return self.members[0].input_size

    @property
    def batchnorm(self) -> bool:
        return any(m.batchnorm for m in self.members)

    def to_dict(self) -> dict:
        """JSON-safe: {"arch": "ensemble", "combine": "mean_softmax", "members": [spec dicts]}."""
        return {"arch": ENSEMBLE_ARCH, "combine": COMBINE, "members": [m.to_dict() for m in self.members]}

    @classmethod
    def from_dict(cls, d: dict) -> EnsembleSpec:
        """Validated spec from `to_dict`'s output; ConfigError names a bad or missing key."""
        if not isinstance(d, dict) or d.get("arch") != ENSEMBLE_ARCH:
            raise ConfigError(f"ensemble spec: expected an object with arch {ENSEMBLE_ARCH!r}; pass EnsembleSpec.to_dict()")
        if d.get("combine", COMBINE) != COMBINE:
            raise ConfigError(f"ensemble spec: unknown combine rule {d.get('combine')!r}; only {COMBINE!r} exists")
        members = d.get("members")
        if not isinstance(members, list):
            raise ConfigError("ensemble spec: 'members' must be a list of model specs")
        return cls(tuple(ModelSpec.from_dict(m) for m in members))


def _io_shape(spec: ModelSpec) -> tuple[int, int, int]:
    return spec.in_channels, spec.input_size, spec.num_classes


def spec_from_dict(d: dict) -> ModelSpec | EnsembleSpec:
    """A ModelSpec, or an EnsembleSpec when d["arch"] is "ensemble"."""
    if isinstance(d, dict) and d.get("arch") == ENSEMBLE_ARCH:
        return EnsembleSpec.from_dict(d)
    return ModelSpec.from_dict(d)


class Ensemble(nn.Module):
    r"""Average of the members' class probabilities, returned as log-probabilities.

    With members :math:`f_1..f_k` and :math:`p_i = \mathrm{softmax}(f_i(x))`, the
    ensemble predicts :math:`\bar p = \frac1k \sum_i p_i`. `forward` returns
    :math:`\log \bar p` (computed as logsumexp of the members' log-softmax minus
    log k, which never takes the log of an underflowed 0), so that code written for
    logits works unchanged: its softmax is :math:`\bar p`, its argmax the
    ensemble's prediction, and its cross-entropy the ensemble's negative
    log-likelihood. `predict_proba` returns :math:`\bar p` itself.
    """

    def __init__(self, members: list[nn.Module], spec: EnsembleSpec | None = None):
        super().__init__()
        if len(members) < 2:
            raise ConfigError(f"an ensemble needs at least 2 members, got {len(members)}")
        self.members = nn.ModuleList(members)
        self.spec = spec or EnsembleSpec(tuple(m.spec for m in members))

    def member_log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's log-softmax: [k, B, classes] for x [B, C, H, W]."""
        return torch.stack([torch.log_softmax(m(x), dim=1) for m in self.members])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        log_probs = self.member_log_probs(x)  # [k, B, classes]
        return torch.logsumexp(log_probs, dim=0) - math.log(len(self.members))  # [B, classes]

    @torch.no_grad()
    def predict_proba(self, x: torch.Tensor) -> torch.Tensor:
        """Mean of the members' softmax outputs: [B, classes], rows sum to 1."""
        return torch.stack([torch.softmax(m(x), dim=1) for m in self.members]).mean(dim=0)


def build_ensemble(spec: EnsembleSpec) -> Ensemble:
    """An Ensemble of freshly built members (load a state dict into it to restore one)."""
    return Ensemble([build_model(m) for m in spec.members], spec)


__all__ = ["COMBINE", "ENSEMBLE_ARCH", "Ensemble", "EnsembleSpec", "build_ensemble", "spec_from_dict"]
