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
from ofexp.models.foreign import OWN_ARCHITECTURES, check_model_name, kwargs_dict, model_form, normalise_kwargs

ARCHITECTURES = OWN_ARCHITECTURES  # ofexp's own; `arch` also takes torchvision:<name> and <module>:<function>

# VGG11 halves the map 5 times and the CIFAR ResNet18 3 times; below 32 pixels
# VGG's last pool would see an empty map, and 32 is the size both were designed for.
# A foreign network's smallest input is found by running it (train checks a forward pass).
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
        One of ``ARCHITECTURES``, ``torchvision:<name>`` (a torchvision classifier) or
        ``<module>:<function>`` (a factory; built only when trusted, see ofexp/models/foreign.py).
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
    kwargs : tuple of (str, value) pairs
        A foreign network's keyword arguments (plain JSON values), sorted by key; a dict is
        accepted and normalised. Empty for ofexp's own architectures.

    `width`, `bias` and `batchnorm` are options of ofexp's own architectures: a foreign
    network keeps their defaults (1.0, False, False), and whether it has batch-norm is read
    from its modules (`ofexp.models.has_batchnorm`).
    """

    arch: str
    num_classes: int
    in_channels: int
    input_size: int
    width: float = 1.0
    bias: bool = False
    batchnorm: bool = False
    kwargs: tuple = ()

    def __post_init__(self) -> None:
        if not isinstance(self.arch, str):
            raise ConfigError(f"model spec: arch={self.arch!r} must be a string; use e.g. 'mlp'")
        try:
            check_model_name(self.arch, "arch")
            object.__setattr__(self, "kwargs", normalise_kwargs(self.kwargs))
        except ConfigError as exc:
            raise ConfigError(f"model spec: {exc}") from None
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
        if self.foreign:
            self._check_foreign()
            return
        if self.kwargs:
            raise ConfigError(f"model spec: kwargs do not apply to {self.arch}; drop them (use width, bias, batchnorm)")
        min_size = MIN_INPUT_SIZE[self.arch]
        if self.input_size < min_size:
            raise ConfigError(
                f"model spec: input_size={self.input_size} is too small for {self.arch}; "
                f"use input_size >= {min_size} (resize the data) or arch 'mlp'"
            )

    @property
    def foreign(self) -> bool:
        """True for a torchvision or factory network, False for ofexp's own architectures."""
        return model_form(self.arch) != "own"

    def _check_foreign(self) -> None:
        given = [f"{n}={getattr(self, n)!r}" for n, default in (("width", 1.0), ("bias", False), ("batchnorm", False))
                 if getattr(self, n) != default]
        if given:
            raise ConfigError(f"model spec: {given[0]} does not apply to {self.arch} (only to "
                              f"{', '.join(ARCHITECTURES)}); drop it, or pass the network's own kwargs")
        if model_form(self.arch) == "torchvision" and self.in_channels not in (1, 3):
            raise ConfigError(f"model spec: {self.arch} takes 3-channel images (1-channel ones are repeated), not "
                              f"{self.in_channels}; use a factory (<module>:<function>) for other inputs")

    def channels(self, base: int) -> int:
        """Width-scaled channel count of a layer that has ``base`` channels at width 1."""
        return max(1, round(base * self.width))

    def to_dict(self) -> dict:
        """JSON-safe dict of all fields; kwargs as a JSON object, left out when there are none (as
        before they existed)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["kwargs"] = kwargs_dict(self.kwargs)
        if not self.kwargs:
            del d["kwargs"]
        return d

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
