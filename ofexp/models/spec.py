"""ModelSpec: the JSON-safe description that every stage rebuilds a network from.

A spec travels with every weights artifact, so a later stage never has to guess
the architecture. Construction validates every field, so an invalid spec cannot
exist: from_dict/from_json add the checks that only make sense for raw input
(unknown and missing keys).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass

from ofexp.errors import ConfigError

ARCHITECTURES = ("mlp", "vgg11", "resnet18")

# VGG11 halves the map 5 times and the CIFAR ResNet18 3 times; below 32 pixels
# VGG's last pool would see an empty map, and 32 is the size both were designed for.
MIN_INPUT_SIZE = {"mlp": 1, "vgg11": 32, "resnet18": 32}

# Inclusive bounds; anything outside is a typo, not an experiment.
_INT_RANGES = {
    "num_classes": (2, 100_000),
    "in_channels": (1, 64),
    "input_size": (1, 1024),
}
_MAX_WIDTH = 16.0


def _check_int(name: str, value: object) -> None:
    lo, hi = _INT_RANGES[name]
    # bool is an int subclass; True as a class count is always a mistake.
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(
            f"model spec: {name}={value!r} must be an integer; use an integer in [{lo}, {hi}]"
        )
    if not lo <= value <= hi:
        raise ConfigError(f"model spec: {name}={value} is out of range; use an integer in [{lo}, {hi}]")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"model spec: {name}={value!r} must be a boolean; use true or false")


@dataclass(frozen=True)
class ModelSpec:
    """Architecture and shape of a classifier network.

    Parameters
    ----------
    arch : str
        One of ``ARCHITECTURES``.
    num_classes : int
        Number of outputs of the classifier, in [2, 100000].
    in_channels : int
        Channels of the input images, in [1, 64].
    input_size : int
        Height (= width) of the square inputs, in [1, 1024]; >= 32 for vgg11 and resnet18.
    width : float
        Channel multiplier in (0, 16]: a layer of c channels gets ``max(1, round(c * width))``.
    bias : bool
        Bias on every conv and linear layer, the classifier included.
    batchnorm : bool
        Batch-norm after every hidden conv / linear layer.
    """

    arch: str
    num_classes: int
    in_channels: int
    input_size: int
    width: float = 1.0
    bias: bool = False
    batchnorm: bool = False

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ConfigError(
                f"model spec: unknown arch {self.arch!r}; use one of {', '.join(ARCHITECTURES)}"
            )
        for name in _INT_RANGES:
            _check_int(name, getattr(self, name))
        w = self.width
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ConfigError(f"model spec: width={w!r} must be a number; use e.g. 1.0 or 0.25")
        if not 0 < w <= _MAX_WIDTH:
            raise ConfigError(f"model spec: width={w} is out of range; use a number in (0, {_MAX_WIDTH:g}]")
        # Store 1 and 1.0 identically so that equal specs compare and serialise equal.
        object.__setattr__(self, "width", float(w))
        _check_bool("bias", self.bias)
        _check_bool("batchnorm", self.batchnorm)
        min_size = MIN_INPUT_SIZE[self.arch]
        if self.input_size < min_size:
            raise ConfigError(
                f"model spec: input_size={self.input_size} is too small for {self.arch}; "
                f"use input_size >= {min_size} (resize the data) or arch 'mlp'"
            )

    def channels(self, base: int) -> int:
        """Width-scaled channel count of a layer that has ``base`` channels at width 1."""
        return max(1, round(base * self.width))

    def to_dict(self) -> dict:
        """JSON-safe dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ModelSpec:
        """Validated spec from a dict; ConfigError names any unknown, missing or bad key."""
        if not isinstance(d, dict):
            raise ConfigError(f"model spec: expected a JSON object, got {type(d).__name__}; pass a dict")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in fields)
        if unknown:
            raise ConfigError(
                f"model spec: unknown key {unknown[0]!r}; valid keys are {', '.join(fields)}"
            )
        required = [n for n, f in fields.items() if f.default is dataclasses.MISSING]
        missing = [n for n in required if n not in d]
        if missing:
            raise ConfigError(
                f"model spec: missing key {missing[0]!r}; add it (required: {', '.join(required)})"
            )
        return cls(**d)

    def to_json(self) -> str:
        """Spec as a JSON string (sorted keys, so equal specs give equal strings)."""
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_json(cls, s: str) -> ModelSpec:
        """Validated spec from a JSON string; ConfigError on invalid JSON or fields."""
        try:
            d = json.loads(s)
        except (TypeError, json.JSONDecodeError) as e:
            raise ConfigError(
                f"model spec: not valid JSON ({e}); pass the output of ModelSpec.to_json"
            ) from None
        return cls.from_dict(d)
