"""PyTorch models anywhere in MLflow, named by model URI rather than by ofexp run ID.

    runs:/<run ID>/<path>         models:/<name>/<version>
    models:/<name>@<alias>        models:/<model ID>   (MLflow 3's logged models)

A model logged in MLflow 3's default pt2 format loads as a graph of ATen ops;
`fusion.modularize` gives it its layers back as modules, so that alignment, REPAIR and
the measures see the same network as a pickled one.
"""
from __future__ import annotations

import json
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from torch import nn

from ofexp.errors import ArtifactError, ConfigError, RunLookupError
from ofexp.fusion.modularize import is_exported_graph, modules_from_graph
from ofexp.tracking.artifacts import keeping_active_model
from ofexp.tracking.integrity import check_finite
from ofexp.tracking.runs import tracking_uri

MODEL_URI_FORMS = "runs:/<run ID>/<path>, models:/<name>/<version>, models:/<name>@<alias> or models:/<model ID>"
_URI = re.compile(r"^(runs:/[^/\s]+/\S+|models:/[^\s/@]+(/[^\s/]+|@[^\s/]+)?)$")
# what ofexp records beside a model it fused from URIs: the input the model takes
MODEL_INPUT_FILE = "model_input.json"


def is_model_uri(ref: str) -> bool:
    """Whether `ref` is given as an MLflow model URI (rather than an ofexp run ID)."""
    return isinstance(ref, str) and ref.strip().startswith(("runs:/", "models:/"))


def check_model_uri(uri: str) -> str:
    if not _URI.match(uri):
        raise ConfigError(f"{uri!r} is not a model URI ofexp reads; use {MODEL_URI_FORMS}")
    return uri


@dataclass
class LoggedModel:
    """A PyTorch model read from MLflow by URI, with what its logger recorded about its input."""

    uri: str
    model: nn.Module  # on the CPU, in eval mode, layers as modules
    input_shape: tuple[int | None, ...] | None  # the signature's, batch axis None; None without a signature
    signature: object | None  # mlflow.models.ModelSignature
    model_id: str | None
    run_id: str | None
    registered_name: str | None
    pt2: bool  # logged in the pt2 (torch.export) format, else pickled

    @property
    def label(self) -> str:
        """A short name for run names: the registered name, or the network's class."""
        return self.registered_name or type(self.model).__name__


def fetch_logged_model(uri: str) -> LoggedModel:
    """Read the PyTorch model at `uri`; RunLookupError or ArtifactError in one line when there
    is none, it is not a PyTorch model, it cannot be loaded, or its weights are not finite.

    A pickled model is unpickled: it runs code from the model's files, like
    `mlflow.pytorch.load_model` itself. Fuse and evaluate models you trust.
    """
    import mlflow.pytorch  # deferred: ~1 s of imports that run-ID commands never need

    uri = check_model_uri(uri.strip())
    try:
        info = mlflow.models.get_model_info(uri)
    except (MlflowException, OSError) as exc:
        raise RunLookupError(f"no model at {uri} on {tracking_uri()} ({_first_line(exc)}); check the URI "
                             f"({MODEL_URI_FORMS}) and MLFLOW_TRACKING_URI") from None
    if "pytorch" not in (info.flavors or {}):
        flavors = ", ".join(f for f in info.flavors or {} if f != "python_function") or "no"
        raise ArtifactError(f"the model at {uri} has {flavors} flavour, not pytorch; ofexp fuses and measures "
                            "models logged with mlflow.pytorch.log_model")
    try:
        with keeping_active_model():
            loaded = mlflow.pytorch.load_model(uri, map_location="cpu")
    except Exception as exc:  # unpickling and torch.export raise many types
        raise ArtifactError(f"cannot load the PyTorch model at {uri}: {type(exc).__name__}: {_first_line(exc)}; "
                            "load it with mlflow.pytorch.load_model on this machine to see why") from None
    if not isinstance(loaded, nn.Module):
        raise ArtifactError(f"the model at {uri} loads as a {type(loaded).__name__}, not a torch.nn.Module")
    pt2 = is_exported_graph(loaded)
    model = modules_from_graph(loaded).eval()
    check_finite(model.state_dict(), f"the model at {uri}", "log finite weights, or pick another model")
    return LoggedModel(uri, model, _input_shape(info.signature), info.signature, info.model_id, info.run_id,
                       _registered_name(uri), pt2)


def _registered_name(uri: str) -> str | None:
    if not uri.startswith("models:/") or uri.startswith("models:/m-"):
        return None
    return re.split(r"[/@]", uri[len("models:/"):])[0]


def _input_shape(signature) -> tuple[int | None, ...] | None:
    """The one tensor input's shape in a model signature, -1 (any size) as None."""
    inputs = getattr(signature, "inputs", None)
    specs = inputs.inputs if inputs is not None else []
    if len(specs) != 1 or not hasattr(specs[0], "shape"):
        return None
    return tuple(None if n == -1 else int(n) for n in specs[0].shape)


def _first_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:240] if text else type(exc).__name__


def log_parent_models(model_ids: list[str | None]) -> None:
    """Record the parents' logged models as inputs of the active run: the UI shows the lineage."""
    from mlflow.entities import LoggedModelInput

    known = [LoggedModelInput(model_id) for model_id in model_ids if model_id]
    if known:  # the client, not mlflow.log_inputs: that refuses models outside Databricks
        mlflow.MlflowClient().log_inputs(mlflow.active_run().info.run_id, models=known)


def log_model_input(record: dict) -> None:
    """Log what the run's model takes as input (data set, size, channels, pixels)."""
    mlflow.log_dict(record, MODEL_INPUT_FILE)


def recorded_model_input(model: LoggedModel) -> dict | None:
    """The model input an ofexp fuse run recorded beside the model at `model.uri`, if any."""
    if not model.run_id:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(run_id=model.run_id, artifact_path=MODEL_INPUT_FILE,
                                                       dst_path=tmp)
        except (MlflowException, OSError):
            return None
        try:
            record = json.loads(Path(path).read_text())
        except ValueError:
            return None
    return record if isinstance(record, dict) else None
