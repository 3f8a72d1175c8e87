"""Networks ofexp did not write: torchvision's classifiers and the user's own factories.

`--model` names a network in one of three forms (docs/commands.md, "Models"):

- ofexp's own architectures: ``mlp``, ``vgg11``, ``resnet18``;
- ``torchvision:<name>``: a classifier of ``torchvision.models.list_models(module=torchvision.models)``;
- ``<module>:<function>``: a factory importable from PYTHONPATH, called with the keyword
  arguments plus ``num_classes``, that returns an ``nn.Module``.

Keyword arguments (``--model-kwargs``) are plain JSON values: numbers, strings, booleans,
null and lists of them. They are kept as a sorted tuple of ``(key, value)`` pairs, lists
as tuples, so that a spec stays frozen and hashable.

A spec.json is read back from runs that anyone may have written (docs/reliability.md):
building a network from it must never import code the user did not choose. torchvision
names are checked against torchvision's own list; a factory is built only when it is
trusted, that is named in the environment variable ``OFEXP_TRUSTED_FACTORIES``
(comma-separated ``module:function`` names). Naming a factory with ``--model`` trusts it
for that command and the processes it starts (`trust_factory`).
"""
from __future__ import annotations

import functools
import importlib
import json
import math
import os
import re
import shlex

from torch import Tensor, nn

from ofexp.errors import ConfigError

OWN_ARCHITECTURES = ("mlp", "vgg11", "resnet18")
TORCHVISION_PREFIX = "torchvision:"
TRUSTED_FACTORIES_ENV = "OFEXP_TRUSTED_FACTORIES"

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_FACTORY = re.compile(rf"{_IDENT}(\.{_IDENT})*:{_IDENT}")
_KEY = re.compile(_IDENT)
# num_classes comes from the data set; pretrained weights would be a download ofexp never does.
_RESERVED = {"num_classes": "the number of classes comes from the data set; drop it",
             "weights": "ofexp trains from scratch and downloads nothing; drop it",
             "weights_backbone": "ofexp trains from scratch and downloads nothing; drop it"}
MAX_KWARGS_CHARS = 1000  # as canonical JSON; an MLflow param holds it whole
_MAX_DEPTH = 3

Kwargs = tuple[tuple[str, object], ...]


def model_form(arch: str, what: str = "model") -> str:
    """'own', 'torchvision' or 'factory'; ConfigError (naming `what`) for a name of none of these forms."""
    if arch in OWN_ARCHITECTURES:
        return "own"
    if isinstance(arch, str) and arch.startswith(TORCHVISION_PREFIX):
        return "torchvision"
    if isinstance(arch, str) and _FACTORY.fullmatch(arch):
        return "factory"
    raise ConfigError(f"unknown {what} {str(arch)[:80]!r}; use one of {', '.join(OWN_ARCHITECTURES)}, "
                      "torchvision:<name> (e.g. torchvision:resnet18) or <module>:<function>")


def is_foreign(arch: str) -> bool:
    """True for a torchvision or factory model, False for ofexp's own architectures."""
    return model_form(arch) != "own"


@functools.lru_cache(maxsize=1)
def torchvision_classifiers() -> tuple[str, ...]:
    """The classification models torchvision can build (detection and video models are not classifiers)."""
    import torchvision.models

    return tuple(torchvision.models.list_models(module=torchvision.models))


def check_model_name(arch: str, what: str = "model") -> None:
    """ConfigError unless `arch` is an own architecture, a torchvision classifier or a factory name."""
    if model_form(arch, what) == "torchvision":
        name = arch[len(TORCHVISION_PREFIX):]
        if name not in torchvision_classifiers():
            raise ConfigError(f"torchvision has no classifier {name[:80]!r}; use a name from "
                              "torchvision.models.list_models(module=torchvision.models), e.g. torchvision:resnet18")


# --- keyword arguments ------------------------------------------------------------------------


def _plain(value: object, where: str, depth: int = 0) -> object:
    """`value` as a hashable plain value (lists become tuples); ConfigError for anything else."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ConfigError(f"model kwargs: {where}={value!r} is not finite; use a finite number")
        return value
    if isinstance(value, (list, tuple)) and depth < _MAX_DEPTH:
        return tuple(_plain(v, where, depth + 1) for v in value)
    raise ConfigError(f"model kwargs: {where} is a {type(value).__name__}; use numbers, strings, true/false, "
                      f"null or lists of them (nested at most {_MAX_DEPTH} deep)")


def normalise_kwargs(kwargs: object) -> Kwargs:
    """Sorted ((key, plain value), ...) from a dict or pairs; ConfigError names a bad key or value."""
    if isinstance(kwargs, dict):
        pairs = list(kwargs.items())
    elif isinstance(kwargs, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in kwargs):
        pairs = [tuple(p) for p in kwargs]
    else:
        raise ConfigError(f"model kwargs must be a JSON object of keyword arguments, got {type(kwargs).__name__}; "
                          'pass e.g. {"width_mult": 0.5}')
    keys = [k for k, _ in pairs]
    for key in keys:
        if not isinstance(key, str) or not _KEY.fullmatch(key):
            raise ConfigError(f"model kwargs: key {str(key)[:40]!r} is not a Python identifier; use keyword names")
        if key in _RESERVED:
            raise ConfigError(f"model kwargs: {key!r} is not allowed: {_RESERVED[key]}")
    if len(set(keys)) != len(keys):
        raise ConfigError("model kwargs: a key is given twice; give each keyword once")
    normal = tuple(sorted((k, _plain(v, k)) for k, v in pairs))
    if len(kwargs_json(normal)) > MAX_KWARGS_CHARS:
        raise ConfigError(f"model kwargs are longer than {MAX_KWARGS_CHARS} characters as JSON; "
                          "pass fewer or shorter values, or write a factory (<module>:<function>)")
    return normal


def kwargs_dict(kwargs: Kwargs) -> dict:
    """The keyword arguments as the constructor gets them (tuples back to lists)."""
    def unfreeze(v):
        return [unfreeze(x) for x in v] if isinstance(v, tuple) else v
    return {k: unfreeze(v) for k, v in kwargs}


def kwargs_json(kwargs: Kwargs) -> str:
    """Canonical JSON: sorted keys, no spaces ('{}' for none). Equal kwargs give equal text."""
    return json.dumps(kwargs_dict(kwargs), sort_keys=True, separators=(",", ":"))


def parse_kwargs(text: str | None, option: str = "--model-kwargs") -> Kwargs:
    """Keyword arguments from the command line: a JSON object, or key=value pairs joined by commas
    (each value read as JSON when it is, else as a string); '', 'none' and '{}' mean none."""
    text = (text or "").strip()
    if text in ("", "none", "{}"):
        return ()
    fix = f'pass a JSON object like \'{{"width_mult": 0.5}}\' or key=value pairs like width_mult=0.5'
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"{option} is not valid JSON ({err.msg} at column {err.colno}); {fix}") from None
        return normalise_kwargs(value)
    if text.startswith(("[", '"')) or "=" not in text:
        raise ConfigError(f"{option} {text[:60]!r} is not a JSON object; {fix}")
    pairs = []
    for item in text.split(","):
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"{option}: {item.strip()[:40]!r} is not key=value; {fix}")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw.strip()
        pairs.append((key.strip(), value))
    return normalise_kwargs(pairs)


def kwargs_words(kwargs: Kwargs) -> str | None:
    """The key=value form of `kwargs` when it reads back the same and needs no shell quoting, else None."""
    words = []
    for key, value in kwargs:
        if isinstance(value, str):
            try:
                json.loads(value)
                return None  # "1" would read back as a number
            except json.JSONDecodeError:
                text = value
        elif isinstance(value, tuple):
            return None
        else:
            text = json.dumps(value)
        words.append(f"{key}={text}")
    joined = ",".join(words)
    return joined if joined and shlex.quote(joined) == joined and parse_kwargs(joined) == kwargs else None


class ModelName(str):
    """A --model value that carries its --model-kwargs: the command line's options reach the
    train config in one value (ofexp/cli/options.py `model_options`). Compares as the name."""

    kwargs: Kwargs

    def __new__(cls, name: str, kwargs: Kwargs = ()) -> ModelName:
        self = super().__new__(cls, name)
        self.kwargs = normalise_kwargs(kwargs)
        return self


# --- trust ------------------------------------------------------------------------------------


def trusted_factories() -> frozenset[str]:
    """The factories this process may import: those in $OFEXP_TRUSTED_FACTORIES."""
    return frozenset(n.strip() for n in os.environ.get(TRUSTED_FACTORIES_ENV, "").split(",") if n.strip())


def trust_factory(arch: str) -> None:
    """Trust the factory `arch` the user named (no-op for other models), in this process and the
    processes it starts: it joins $OFEXP_TRUSTED_FACTORIES."""
    if model_form(arch) == "factory" and arch not in trusted_factories():
        os.environ[TRUSTED_FACTORIES_ENV] = ",".join(sorted(trusted_factories() | {arch}))


# --- building ---------------------------------------------------------------------------------


class GreyToRGB(nn.Module):
    """A 3-channel network fed 1-channel images: the grey channel is repeated three times."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: Tensor) -> Tensor:  # [n, 1, H, W] -> the network's output
        return self.network(x.expand(-1, 3, -1, -1))


def build_foreign(arch: str, kwargs: Kwargs, num_classes: int, in_channels: int) -> nn.Module:
    """A freshly initialised torchvision or factory network; ConfigError, in one line, when it
    cannot be built (unknown name, untrusted or missing factory, bad kwargs, not a Module)."""
    form = model_form(arch)
    check_model_name(arch)
    if form == "torchvision":
        import torchvision.models

        network = _call(arch, torchvision.models.get_model, kwargs, num_classes, arch[len(TORCHVISION_PREFIX):])
        return GreyToRGB(network) if in_channels == 1 else network
    factory = _import_factory(arch)
    return _call(arch, factory, kwargs, num_classes)


def _import_factory(arch: str):
    if arch not in trusted_factories():
        raise ConfigError(f"factory {arch!r} is not trusted, so ofexp will not import it; name it with "
                          f"--model {arch} or add it to ${TRUSTED_FACTORIES_ENV} (comma-separated) if you trust it")
    module_name, _, function = arch.partition(":")
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # the user's module: any import error is theirs to fix
        raise ConfigError(f"cannot import {module_name!r} for factory {arch!r} ({type(exc).__name__}: "
                          f"{_one_line(exc)}); put its folder on PYTHONPATH") from None
    factory = getattr(module, function, None)
    if not callable(factory):
        raise ConfigError(f"module {module_name!r} has no function {function!r}; name a callable that returns "
                          "an nn.Module as <module>:<function>")
    return factory


def _call(arch: str, factory, kwargs: Kwargs, num_classes: int, *args) -> nn.Module:
    try:
        network = factory(*args, **kwargs_dict(kwargs), num_classes=num_classes)
    except Exception as exc:  # a constructor refusing its arguments
        shown = kwargs_json(kwargs)
        raise ConfigError(f"{arch} cannot be built with num_classes={num_classes} and kwargs {shown} "
                          f"({type(exc).__name__}: {_one_line(exc)}); fix --model-kwargs") from None
    if not isinstance(network, nn.Module):
        raise ConfigError(f"{arch} returned a {type(network).__name__}, not an nn.Module; "
                          "make the factory return the network")
    return network


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def has_batchnorm(model: nn.Module) -> bool:
    """Whether `model` holds batch-norm layers that track running statistics (to recompute after fusion)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats for m in model.modules())


__all__ = ["GreyToRGB", "ModelName", "OWN_ARCHITECTURES", "TORCHVISION_PREFIX", "TRUSTED_FACTORIES_ENV", "build_foreign",
           "check_model_name", "has_batchnorm", "is_foreign", "kwargs_dict", "kwargs_json", "kwargs_words",
           "model_form", "normalise_kwargs", "parse_kwargs", "trust_factory", "trusted_factories"]
