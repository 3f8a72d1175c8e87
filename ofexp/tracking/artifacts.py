"""Weights, specs and models as run artifacts, fetched back by run ID.

Weights are state dicts saved with `torch.save` and read with
`torch.load(weights_only=True)`: loading an artifact never runs pickled code.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import mlflow
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from torch import nn

from ofexp.data import DataConfig
from ofexp.data.splits import NOT_RECORDED
from ofexp.options import option_fields
from ofexp.errors import ArtifactError, ConfigError, RunLookupError
from ofexp.models import ModelSpec, build_model
from ofexp.models.ensemble import ENSEMBLE_ARCH, EnsembleSpec, build_ensemble, spec_from_dict
from ofexp.tracking.integrity import (SPEC_FILE, check_digest, check_spec_against_params, load_state_checked,
                                      log_artifact_with_digest, recorded_digests, records_digests)
from ofexp.tracking.names import TAG_DIGESTS, TAG_FAILURE, TAG_STAGE, TAG_UNFINISHED_INPUTS
from ofexp.tracking.runs import tracking_uri

WEIGHTS_DIR = "weights"
CHECKPOINT_FILE = "checkpoint/last.pt"
MODEL_STAGES = ("train", "fuse")
# An ensemble run is evaluable (load_model, ofexp evaluate) but is no single network:
# fusion and fine-tuning refuse it.
ENSEMBLE_STAGE = ENSEMBLE_ARCH
# The weights a model run stands for: a train run's final weights, a fuse run's fused ones,
# an ensemble run's members' (one state dict, keys 'members.<i>.<name>').
DEFAULT_WEIGHTS = {"train": "final", "fuse": "fused", ENSEMBLE_STAGE: "ensemble"}
_RUN_ID = re.compile(r"^[0-9a-zA-Z][\w-]{0,255}$")
# A step reads only FINISHED runs unless told otherwise (--allow-unfinished); a run made from
# others that were not gets this tag: "<run ID>:<status>,..." of those inputs.
FINISHED = "FINISHED"
ALLOW_UNFINISHED_OPTION = "--allow-unfinished"


def get_run_checked(run_id: str, stages: tuple[str, ...] | None = None) -> Run:
    """Fetch a run by ID; refuse malformed, unknown, deleted or wrong-stage runs."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise RunLookupError(f"{run_id!r} is not a run ID; copy the 32-character ID from the MLflow UI or an ofexp command's output")
    try:
        run = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code) or "not found" in str(exc).lower():
            raise RunLookupError(f"run {run_id} does not exist on {tracking_uri()}; check the ID and MLFLOW_TRACKING_URI") from exc
        raise RunLookupError(f"cannot read run {run_id} from {tracking_uri()}: {str(exc).splitlines()[0]}") from exc
    if run.info.lifecycle_stage == "deleted":
        raise RunLookupError(f"run {run_id} is deleted; restore it with `mlflow runs restore --run-id {run_id}` or pick another run")
    if stages is not None:
        check_stage(run, stages)
    return run


def check_stage(run: Run, stages: tuple[str, ...]) -> None:
    """Refuse a run whose ofexp.stage tag is not one of `stages`."""
    stage = run.data.tags.get(TAG_STAGE)
    if stage not in stages:
        kind = stage or "non-ofexp"
        raise RunLookupError(
            f"run {run.info.run_id} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} run, not a {' or '.join(stages)} run; "
            f"pass the ID of a {' or '.join(stages)} run"
        )


def check_finished(run: Run, *, allow_unfinished: bool = False, accept_option: str | None = None) -> None:
    """Refuse a run whose status is not FINISHED (RUNNING, SCHEDULED, FAILED, KILLED): its weights
    may be missing, partial or change under the reader. `accept_option` names the option that
    accepts it anyway, for the message; `allow_unfinished` is that option given."""
    status = run.info.status
    if status == FINISHED or allow_unfinished:
        return
    run_id, stage = run.info.run_id, run.data.tags.get(TAG_STAGE) or "non-ofexp"
    name = f" {run.info.run_name!r}" if run.info.run_name else ""
    if status in ("RUNNING", "SCHEDULED"):
        what = f"is still {status}: its weights are not final, or not there yet"
        fix = "wait until it ends FINISHED (`ofexp runs` lists the running runs) or pass a FINISHED run"
    else:
        reason = " ".join(str(run.data.tags.get(TAG_FAILURE, "")).split())[:200]
        what = f"ended {status}{f' ({reason})' if reason else ''}: its weights may be partial or wrong"
        again = f"`ofexp train --resume {run_id}` finishes it" if stage == "train" else "re-run the step that made it"
        fix = f"{again}, or pass a FINISHED run"
    if accept_option:
        fix += f"; {accept_option} uses it anyway (the new run is tagged {TAG_UNFINISHED_INPUTS})"
    raise RunLookupError(f"run {run_id} ({stage} run{name}) {what}; {fix}")


def unfinished_inputs(loaded: Sequence[ModelRun]) -> dict[str, str]:
    """{run ID: status} of the input runs that are not FINISHED (accepted with --allow-unfinished)."""
    return {m.run.info.run_id: m.run.info.status for m in loaded if m.run.info.status != FINISHED}


def unfinished_tags(unfinished: Mapping[str, str]) -> dict[str, str]:
    """The tag that marks a run made from unfinished inputs ({} when there were none)."""
    if not unfinished:
        return {}
    return {TAG_UNFINISHED_INPUTS: ",".join(f"{run_id}:{status}" for run_id, status in unfinished.items())}


def describe_unfinished(unfinished: Mapping[str, str]) -> str:
    """One sentence naming the unfinished inputs, for the run's description and the stderr warning."""
    runs = ", ".join(f"run {run_id} was {status}" for run_id, status in unfinished.items())
    return (f"Made from unfinished runs, accepted with {ALLOW_UNFINISHED_OPTION}: {runs} when it was read "
            f"(tag {TAG_UNFINISHED_INPUTS}); its results may not stand.")


def log_state_dict(state: Mapping[str, torch.Tensor], artifact_file: str) -> None:
    """Save a state dict as an artifact of the active run (e.g. 'weights/final.pt')."""
    log_tensors({k: v.detach().cpu() for k, v in state.items()}, artifact_file)


def log_tensors(obj: Mapping[str, object], artifact_file: str) -> None:
    """Save a (nested) dict of tensors and plain values, e.g. a checkpoint or transport maps."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / Path(artifact_file).name
        torch.save(obj, path)
        log_artifact_with_digest(mlflow.active_run().info.run_id, path, artifact_file)


def log_spec(model_spec: ModelSpec | EnsembleSpec, data_cfg: DataConfig, parents: tuple[str, ...] = ()) -> None:
    """Log the JSON that any stage needs to rebuild the network and its data (and an
    ensemble's parent run IDs, one per member, under "parents")."""
    blob = {"model": model_spec.to_dict(), "data": data_config_to_dict(data_cfg)}
    if parents:
        blob["parents"] = list(parents)
    with tempfile.TemporaryDirectory() as tmp:  # with its digest: the spec vouches for itself, lineage or not
        path = Path(tmp) / SPEC_FILE
        path.write_text(json.dumps(blob, indent=2))
        log_artifact_with_digest(mlflow.active_run().info.run_id, path, SPEC_FILE)


def data_config_to_dict(cfg: DataConfig) -> dict:
    return cfg.to_record()


def load_spec_from_run(run_id: str) -> tuple[ModelSpec, DataConfig]:
    """The model spec and data config that a train or fuse run logged."""
    run = get_run_checked(run_id, MODEL_STAGES)
    return _parse_spec(run, _read_artifact(run_id, SPEC_FILE))


# spec.json is input from whoever wrote the run: only these keys, and a network of at most
# MAX_PARAMETERS (4 GB of float32) may be rebuilt from it; anything else is refused unbuilt.
_SPEC_KEYS = ("model", "data")
_OPTIONAL_SPEC_KEYS = ("parents",)  # an ensemble's member run IDs
def _record_types() -> dict[str, tuple[type, ...]]:
    """{key: types it may have} of the recorded data options (`DataConfig.to_record`), from their
    defaults: an optional one may be null, a float may be written as an integer."""
    types = {}
    for f in option_fields(DataConfig):
        if f.name in NOT_RECORDED:
            continue
        kind = f.metadata["type"] or type(f.default)
        types[f.name] = (kind, type(None)) if f.default is None else (float, int) if kind is float else (kind,)
    return types


_DATA_FIELDS = _record_types()
MAX_PARAMETERS = 1_000_000_000


def _parse_spec(run: Run, raw: bytes) -> tuple[ModelSpec | EnsembleSpec, DataConfig]:
    """Validate a run's spec.json (keys, types, ranges, size, agreement with the run's params) and
    return its model spec and data config. The data config never downloads: data a run names is
    read where it is, or not at all."""
    run_id = run.info.run_id
    try:
        blob = json.loads(raw)
        _check_keys(blob, _SPEC_KEYS, _OPTIONAL_SPEC_KEYS, "")
        data = blob["data"]
        _check_keys(data, tuple(_DATA_FIELDS), (), "data.")
        for key, kind in _DATA_FIELDS.items():
            if isinstance(data[key], bool) or not isinstance(data[key], kind):
                raise TypeError(f"data.{key}={data[key]!r} has the wrong type")
        parents = blob.get("parents", [])
        if not isinstance(parents, list) or not all(isinstance(p, str) and _RUN_ID.match(p) for p in parents):
            raise TypeError("parents must be a list of run IDs")
        cfg = DataConfig(name=data["name"], data_dir=data["data_dir"], val_fraction=float(data["val_fraction"]),
                         split_seed=data["split_seed"], image_size=data["image_size"], download=False,
                         recorded_by=f"run {run_id}")
        spec = spec_from_dict(blob["model"])
    except (ValueError, KeyError, TypeError) as exc:  # ConfigError is a ValueError
        reason = " ".join(str(exc).split())[:300]
        raise ArtifactError(f"run {run_id} has an invalid {SPEC_FILE} ({reason}); re-run the step that made it") from None
    _check_size(run_id, spec)
    # required where the run says it records digests: runs from before specs had one carry weight digests only
    required, vouched = TAG_DIGESTS in run.data.tags, bool(recorded_digests(run, SPEC_FILE))
    if required and not vouched:
        check_digest(run, SPEC_FILE, raw, required=True)  # refused: its digest tag was deleted
    # the params first, for the sharper message; then the digest, which holds when no params are left
    check_spec_against_params(run, spec, cfg, vouched=vouched)
    check_digest(run, SPEC_FILE, raw, required=required)
    return spec, cfg


def _check_keys(blob: object, required: tuple[str, ...], optional: tuple[str, ...], prefix: str) -> None:
    if not isinstance(blob, dict):
        raise TypeError(f"{prefix.rstrip('.') or 'the file'} must be a JSON object")
    unknown = sorted(set(blob) - set(required) - set(optional))
    missing = [k for k in required if k not in blob]
    if unknown or missing:
        raise ValueError(f"{'unknown' if unknown else 'missing'} key {prefix}{(unknown or missing)[0]}")


def _check_size(run_id: str, spec: ModelSpec | EnsembleSpec) -> None:
    """Refuse specs whose network would be absurdly large, counted on the meta device (no memory).
    A foreign network is built here first: a factory the user does not trust is refused unimported
    (ofexp/models/foreign.py), and one whose constructor refuses the spec's kwargs is refused too."""
    try:
        with torch.device("meta"):
            count = sum(p.numel() for member in getattr(spec, "members", (spec,))
                        for p in build_model(member).parameters())
    except ConfigError as exc:
        raise ArtifactError(f"run {run_id}'s {SPEC_FILE} cannot be built: {exc}") from None
    if count > MAX_PARAMETERS:
        raise ArtifactError(f"run {run_id}'s {SPEC_FILE} describes a network of {count:,} parameters, above "
                            f"ofexp's limit of {MAX_PARAMETERS:,}; refusing to build it")


def load_weights_from_run(run_id: str, name: str | None = None) -> dict[str, torch.Tensor]:
    """A state dict logged by a run: 'final', 'best' or 'initial' for train runs, 'fused' for fuse runs."""
    run = get_run_checked(run_id, MODEL_STAGES)
    name = name or DEFAULT_WEIGHTS[run.data.tags[TAG_STAGE]]
    return _load_tensor_file(run, f"{WEIGHTS_DIR}/{name}.pt")


def check_weights_intact(run: Run) -> None:
    """ArtifactError unless the weights a model run stands for are the file it recorded (a
    study checks this before it reuses a finished run)."""
    artifact = f"{WEIGHTS_DIR}/{DEFAULT_WEIGHTS[run.data.tags[TAG_STAGE]]}.pt"
    if records_digests(run):  # a run from before digests: nothing to check, nothing to fetch
        check_digest(run, artifact, _read_artifact(run.info.run_id, artifact))


def load_checkpoint_from_run(run_id: str) -> dict:
    """The resumable training checkpoint of a train run."""
    return _load_tensor_file(get_run_checked(run_id, ("train",)), CHECKPOINT_FILE)


@dataclass
class ModelRun:
    """A train, fuse (or ensemble) run's network, rebuilt from its artifacts."""

    run: Run
    model: nn.Module
    spec: ModelSpec | EnsembleSpec
    data: DataConfig

    @property
    def stage(self) -> str:
        return self.run.data.tags[TAG_STAGE]


def fetch_model_run(run_id: str, weights: str | None = None, *, ensembles: bool = False,
                    allow_unfinished: bool = False, accept_option: str | None = None) -> ModelRun:
    """Fetch a train or fuse run (or, with `ensembles`, an ensemble run), rebuild its
    network from spec.json and load its weights.

    Refused (RunLookupError, ArtifactError), before anything is built or logged: a run that
    is not FINISHED (unless `allow_unfinished`; `accept_option` names the option that allows
    it, for the message), weights whose tensors do not fit the network of its spec.json,
    and weights that hold NaN or infinite values (NonFiniteWeightsError).
    """
    run = get_run_checked(run_id)
    if not (ensembles and run.data.tags.get(TAG_STAGE) == ENSEMBLE_STAGE):
        check_stage(run, MODEL_STAGES)
    check_finished(run, allow_unfinished=allow_unfinished, accept_option=accept_option)
    spec, data = _parse_spec(run, _read_artifact(run_id, SPEC_FILE))
    model = build_ensemble(spec) if isinstance(spec, EnsembleSpec) else build_model(spec)
    artifact = f"{WEIGHTS_DIR}/{weights or DEFAULT_WEIGHTS[run.data.tags[TAG_STAGE]]}.pt"
    load_state_checked(model, _load_tensor_file(run, artifact), run_id, artifact, spec)
    model.eval()
    return ModelRun(run, model, spec, data)


def load_model(run_id: str, weights: str | None = None, *,
               allow_unfinished: bool = False) -> tuple[nn.Module, ModelSpec | EnsembleSpec]:
    """Rebuild a train, fuse or ensemble run's network and load its weights: `(model, spec)`.
    A run that is not FINISHED is refused unless `allow_unfinished`."""
    loaded = fetch_model_run(run_id, weights, ensembles=True, allow_unfinished=allow_unfinished)
    return loaded.model, loaded.spec


def read_text_artifact(run_id: str, artifact_path: str) -> str:
    """A run's text artifact (e.g. a study's steps.csv); ArtifactError when it cannot be read."""
    return _read_artifact(run_id, artifact_path).decode("utf-8")


def _read_artifact(run_id: str, artifact_path: str) -> bytes:
    with tempfile.TemporaryDirectory() as tmp:
        try:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=artifact_path, dst_path=tmp)
        except (MlflowException, OSError) as exc:
            raise ArtifactError(f"run {run_id} has no readable artifact {artifact_path!r} on {tracking_uri()}; re-run the step that makes it") from exc
        return Path(local).read_bytes()


def _load_tensor_file(run: Run, artifact_path: str) -> dict:
    """A tensor artifact, refused unless it is the file the run recorded (integrity.check_digest)."""
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "blob.pt"
        blob = _read_artifact(run_id, artifact_path)
        check_digest(run, artifact_path, blob)  # whatever the status: --allow-unfinished is no licence
        path.write_bytes(blob)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError...
            raise ArtifactError(
                f"refusing run {run_id}'s artifact {artifact_path!r}: it is corrupt or not a plain tensor file ({type(exc).__name__}); re-run the step that made it"
            ) from exc



PREDICTION_DEVICE = "MLFLOW_DEFAULT_PREDICTION_DEVICE"  # where MLflow's pyfunc loads a PyTorch model


# The step a run's logged model is its output at. MLflow copies every run metric logged at that
# step onto the model, and attaches later ones too, so at its default (0) a fuse run's model
# listed the first point of each interpolation curve and its timings. No metric uses step -1:
# the model carries only what the stage logs with its model ID (its test accuracy and loss).
MODEL_OUTPUT_STEP = -1


@contextmanager
def keeping_active_model():
    """Leave MLflow's active model as it was. Loading a model (log_model loads it to check the
    input example; so does mlflow.pytorch.load_model) makes it the thread's active model, and
    every metric logged afterwards without a model ID was attached to it: a logged model page
    listed the first point of each interpolation curve, and a URI parent got the fuse run's metrics."""
    before = mlflow.get_active_model_id()
    try:
        yield
    finally:
        if mlflow.get_active_model_id() != before:
            mlflow.clear_active_model()
            if before is not None:
                mlflow.set_active_model(model_id=before)


def log_mlflow_model(model: nn.Module, input_example: torch.Tensor, *, signature=None, pt2: bool = True) -> str:
    """Log the network as an MLflow model, in the pickle-free pt2 format unless `pt2` is off
    (a foreign model's parents were pickled), with `signature` when given (else inferred from
    the example); return its model ID.

    Passing pip_requirements explicitly skips MLflow's ~11 s requirement inference.
    """
    import mlflow.pytorch  # deferred: importing it costs ~1 s and most commands never log a model

    requirements = [f"torch=={torch.__version__.split('+')[0]}"]
    # MLflow checks the input example by loading the model through pyfunc, on the GPU when
    # there is one, and a pt2 model exported on the CPU cannot load there: on a GPU machine
    # every train run printed "Got error: ... can't be loaded on 'cuda' device". The check
    # runs on the CPU unless the user chose a device.
    chosen = os.environ.get(PREDICTION_DEVICE)
    os.environ[PREDICTION_DEVICE] = chosen or "cpu"
    try:
        with keeping_active_model():
            info = mlflow.pytorch.log_model(
                model.eval(), name="model", input_example=input_example.cpu().numpy(), signature=signature,
                pip_requirements=requirements, serialization_format="pt2" if pt2 else "pickle",
                step=MODEL_OUTPUT_STEP,
            )
    finally:
        if chosen is None:
            os.environ.pop(PREDICTION_DEVICE, None)
    return info.model_id


def log_dataset_input(name: str, source: str, inputs: torch.Tensor, targets: torch.Tensor, context: str) -> None:
    """Record the data a run used as an MLflow dataset input (name, source, digest).

    The digest is the sha256 of all images and labels, read in place: MLflow's own
    digest flattens a copy of the whole array to hash its first rows (220 MB more peak
    memory on Fashion-MNIST, for a weaker fingerprint).
    """
    x, y = inputs.detach().cpu().contiguous().numpy(), targets.detach().cpu().contiguous().numpy()
    digest = hashlib.sha256(memoryview(x).cast("B"))
    digest.update(memoryview(y).cast("B"))
    dataset = mlflow.data.from_numpy(
        x, targets=y, name=name, digest=digest.hexdigest()[:16],
        source=source if _is_resolvable_source(source) else None,
    )
    # MLflow's store looks a dataset up, then inserts it: two runs logging the same new dataset
    # at once (a `--jobs` study's seeds) can both miss it, and the second insert is refused.
    # Its transaction rolled back whole, so logging again finds the other's dataset and links it.
    for attempt in range(_DATASET_RACE_TRIES):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            if attempt + 1 == _DATASET_RACE_TRIES or not _lost_dataset_insert_race(exc):
                raise


_DATASET_RACE_TRIES = 3


def _lost_dataset_insert_race(exc: MlflowException) -> bool:
    """Whether the store refused a dataset another run inserted first (SQLite, PostgreSQL, MySQL)."""
    text = str(exc).lower()
    return "datasets" in text and ("unique" in text or "duplicate entry" in text)


def _is_resolvable_source(source: str) -> bool:
    # mlflow.data accepts only sources it can resolve: real paths or URIs.
    return bool(source) and (Path(source).exists() or "://" in source)


def has_artifact(run_id: str, artifact_path: str) -> bool:
    """Whether a run holds the artifact file `artifact_path` (e.g. 'checkpoint/last.pt')."""
    parent = str(Path(artifact_path).parent)
    try:
        listing = mlflow.MlflowClient().list_artifacts(run_id, None if parent == "." else parent)
    except (MlflowException, OSError) as exc:
        raise ArtifactError(f"cannot list run {run_id}'s artifacts on {tracking_uri()}: {str(exc).splitlines()[0]}") from exc
    return any(info.path == artifact_path and not info.is_dir for info in listing)
