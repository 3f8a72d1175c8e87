"""Registering a run's logged model in MLflow's Model Registry, with its lineage."""
from __future__ import annotations

from typing import Mapping

import mlflow
from mlflow.exceptions import MlflowException

from ofexp.errors import ConfigError, OfexpError
from ofexp.tracking.names import TAG_REGISTERED
from ofexp.tracking.runs import tracking_uri



def register_logged_model(model_id: str, name: str, lineage: Mapping[str, str], description: str) -> str:
    """Register the LoggedModel `model_id` as a new version of registered model `name`, tag the
    version with `lineage` (the run, its stage and its parent runs) and describe it; return
    the version number. A refused name or store is one ConfigError / OfexpError line."""
    try:
        version = mlflow.register_model(f"models:/{model_id}", name, tags=dict(lineage)).version
        mlflow.MlflowClient().update_model_version(name, version, description=description)
    except MlflowException as exc:
        first = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
        if "INVALID_PARAMETER_VALUE" in str(exc.error_code):
            raise ConfigError(f"--register-as {name!r} was refused by {tracking_uri()}: {first}; "
                              "pick another model name") from None
        raise OfexpError(f"cannot register the model as {name!r} on {tracking_uri()}: {first}") from exc
    mlflow.set_tag(TAG_REGISTERED, f"{name}/{version}")
    return str(version)


__all__ = ["TAG_REGISTERED", "register_logged_model"]
