"""Registering a run's logged model in MLflow's Model Registry, with its lineage, and the checks
that refuse a registration before any run exists: a name MLflow would refuse, and a name whose
versions take another input."""
from __future__ import annotations

import unicodedata
from typing import Mapping, Sequence

import mlflow
from mlflow.exceptions import MlflowException

from ofexp.errors import ConfigError, OfexpError
from ofexp.tracking.names import TAG_LOGGED_MODEL, TAG_REGISTERED
from ofexp.tracking.runs import tracking_uri

# registered_models.name is a VARCHAR(256) in MLflow's SQL schema
MAX_NAME_CHARS = 256


def check_model_name(name: str) -> None:
    """ConfigError in one line for a registered model name MLflow refuses (empty, '/' or ':', '.'
    and '..', longer than its column) or that would not read as one line (control characters)."""
    shown = f"--register-as {name!r}"
    if not name.strip():
        raise ConfigError("--register-as needs a model name, e.g. --register-as fmnist-vgg11-fused")
    if "/" in name or ":" in name:
        fixed = name.replace("/", "-").replace(":", "-")
        raise ConfigError(f"{shown}: a registered model name cannot contain '/' or ':'; e.g. --register-as {fixed}")
    if name.strip() in (".", ".."):
        raise ConfigError(f"{shown}: '.' and '..' are not model names; pick a name such as digits-fused")
    if any(unicodedata.category(c).startswith("C") for c in name) or name != name.strip():
        raise ConfigError(f"{shown}: a model name has no control characters and no leading or trailing spaces")
    if len(name) > MAX_NAME_CHARS:
        raise ConfigError(f"--register-as: the name has {len(name)} characters, MLflow keeps at most {MAX_NAME_CHARS}")


def registered_input_shape(name: str) -> tuple[str, list[int]] | None:
    """(version, input shape without the batch) of the newest version of registered model `name`,
    read from its logged model's signature; None when the name is new or its signature has no
    single tensor input."""
    client = mlflow.MlflowClient()
    quote = "'" if "'" not in name else '"'
    try:
        versions = client.search_model_versions(f"name = {quote}{name}{quote}", max_results=200)
        if not versions:
            return None
        newest = max(versions, key=lambda v: int(v.version))
        signature = mlflow.models.get_model_info(f"models:/{name}/{newest.version}").signature
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        raise OfexpError(f"cannot read registered model {name!r} on {tracking_uri()}: {first}") from None
    specs = signature.inputs.inputs if signature is not None and signature.inputs is not None else []
    if len(specs) != 1 or not hasattr(specs[0], "shape"):
        return None
    return str(newest.version), [int(n) for n in specs[0].shape[1:]]


def check_registered_shape(name: str, shape: Sequence[int]) -> None:
    """ConfigError when registered model `name` already has versions taking inputs of another
    shape than `shape` ([C, H, W]): one name would then serve two input formats."""
    registered = registered_input_shape(name)
    if registered is None:
        return
    version, theirs = registered
    if list(theirs) != list(shape):
        show = lambda s: f"[n, {', '.join(map(str, s))}]"  # noqa: E731
        raise ConfigError(f"--register-as {name!r}: version {version} of that model takes inputs of shape "
                          f"{show(theirs)}, this model takes {show(shape)}; register it under another name, "
                          f"e.g. --register-as {name}-{'x'.join(map(str, shape[1:]))}")


def register_logged_model(model_id: str, name: str, lineage: Mapping[str, str], description: str) -> str:
    """Register the LoggedModel `model_id` as a new version of registered model `name`, tag the
    version with `lineage` (the run, its stage and its parent runs) and the model ID, and describe
    it; return the version number. A refused name or store is one ConfigError / OfexpError line.

    The model ID is a tag as well because MLflow's SQL registry store does not keep a version's
    `model_id` field (its source, models:/<model ID>, names it too)."""
    try:
        tags = {**lineage, TAG_LOGGED_MODEL: model_id}
        version = mlflow.register_model(f"models:/{model_id}", name, tags=tags).version
        mlflow.MlflowClient().update_model_version(name, version, description=description)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if "INVALID_PARAMETER_VALUE" in str(exc.error_code):
            raise ConfigError(f"--register-as {name!r} was refused by {tracking_uri()}: {first}; "
                              "pick another model name") from None
        raise OfexpError(f"cannot register the model as {name!r} on {tracking_uri()}: {first}") from exc
    mlflow.set_tag(TAG_REGISTERED, f"{name}/{version}")
    return str(version)


__all__ = ["MAX_NAME_CHARS", "TAG_REGISTERED", "check_model_name", "check_registered_shape", "register_logged_model",
           "registered_input_shape"]
