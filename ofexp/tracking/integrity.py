"""What a run recorded about itself, checked whenever its artifacts are read back.

Artifacts live in a store other processes (and people) can write to, so reading a
run's files trusts nothing the run did not vouch for (docs/reliability.md, "A run's
files are read back only as the run recorded them"):

- **Tensor files** (weights, alignment plans, checkpoints): their sha256 is recorded in
  the tag `ofexp.sha256.<artifact path>` when they are logged. A file read back must
  have that digest, or it is refused: someone or something rewrote it after the fact.
  A run that records digests (tag `ofexp.digests`, or any digest) must have one for
  every tensor file read: a deleted tag is refused like a wrong digest.
- **spec.json**: the data block (data set, folder, split, image size) and the
  architecture must agree with the params of the run that trained the weights (the
  run itself, or through `ofexp.parent_run_ids`, its first parent). An edited spec
  would point the reader at another folder, or make it download; it is refused.
- **State dicts** must fit the network the spec builds, tensor for tensor, and hold
  only finite values.
"""
from __future__ import annotations

import hashlib
import math
from collections.abc import Mapping
from pathlib import Path

import mlflow
import torch
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from torch import nn

from ofexp.data import DataConfig
from ofexp.errors import ArtifactError, NonFiniteWeightsError
from ofexp.models import ModelSpec
from ofexp.models.ensemble import EnsembleSpec
from ofexp.tracking.names import TAG_DIGESTS, TAG_PARENTS, TAG_SHA256_PREFIX
from ofexp.tracking.runs import param_str, same_param

SPEC_FILE = "spec.json"
_MAX_LINEAGE_DEPTH = 4  # fine-tuned ← fused ← trained: the params are at most a few hops up


def digest_tag(artifact_path: str) -> str:
    """The tag that records `artifact_path`'s sha256."""
    return TAG_SHA256_PREFIX + artifact_path


def sha256_hex(blob: bytes) -> str:
    return hashlib.sha256(blob).hexdigest()


def file_sha256(local_file: Path) -> str:
    with open(local_file, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_digest(artifact_path: str, local_file: Path) -> None:
    """Tag the active run with the sha256 of `local_file`, which it logs as `artifact_path`."""
    mlflow.set_tag(digest_tag(artifact_path), file_sha256(local_file))


def log_artifact_with_digest(run_id: str, local_file: Path, artifact_path: str, replaces: str | None = None) -> str:
    """Upload `local_file` as run `run_id`'s `artifact_path` and tag its sha256; return the digest.

    A file logged once is tagged after the upload (a tag without its file would mislead). A
    file that replaces one (a checkpoint, each epoch) has digest `replaces`: until the upload
    is done, the tag names both files, so a run killed in between holds a file its tag
    vouches for, whichever of the two it is.
    """
    digest = file_sha256(local_file)
    client = mlflow.MlflowClient()
    if replaces and replaces != digest:
        client.set_tag(run_id, digest_tag(artifact_path), f"{digest} {replaces}")
    folder = str(Path(artifact_path).parent)
    client.log_artifact(run_id, str(local_file), None if folder == "." else folder)
    client.set_tag(run_id, digest_tag(artifact_path), digest)
    return digest


def recorded_digests(run: Run, artifact_path: str) -> tuple[str, ...]:
    """The digests the run vouches for under `artifact_path` (two while a replacement uploads)."""
    return tuple(run.data.tags.get(digest_tag(artifact_path), "").split())


def records_digests(run: Run) -> bool:
    """Whether the run was logged by an ofexp that records a digest for every tensor file: it says
    so in its tag ofexp.digests, or it carries any digest. Only runs from before digests did not."""
    return TAG_DIGESTS in run.data.tags or any(key.startswith(TAG_SHA256_PREFIX) for key in run.data.tags)


def check_digest(run: Run, artifact_path: str, blob: bytes, *, required: bool | None = None) -> None:
    """ArtifactError when `blob` is not the file the run recorded under `artifact_path`, or when
    the digest is `required` but missing (a deleted tag is refused like a wrong one). By default
    it is required when the run records digests (`records_digests`).

    Whatever the run's status: `--allow-unfinished` takes an unfinished run, not a rewritten
    file. Only runs logged before digests were recorded are read as they are.
    """
    run_id, tag = run.info.run_id, digest_tag(artifact_path)
    recorded = recorded_digests(run, artifact_path)
    if not recorded:
        if not (records_digests(run) if required is None else required):
            return
        still = " or the run is still writing it," if run.info.status == "RUNNING" else ""
        raise ArtifactError(
            f"run {run_id}'s {artifact_path} has no digest (tag {tag}), though the run records one for every "
            f"tensor file: the tag was deleted,{still} or the file was logged by something other than ofexp, so "
            f"nothing vouches for it; re-run the step that made it")
    actual = sha256_hex(blob)
    if actual not in recorded:
        raise ArtifactError(
            f"run {run_id}'s {artifact_path} is not the file the run recorded (sha256 {actual[:12]}… against "
            f"{recorded[0][:12]}… in tag {tag}): it was changed after the run wrote it; "
            f"re-run the step that made it, or restore the original file")


def parent_run_ids(run: Run) -> tuple[str, ...]:
    """The runs a fuse or ensemble run was made from, in order (tag ofexp.parent_run_ids)."""
    joined = run.data.tags.get(TAG_PARENTS, "")
    return tuple(part for part in joined.split(",") if part)


_REMAKE = "re-run the step that made it"


def _params_source(run: Run) -> Run | None:
    """The run whose params say how the weights were trained: `run` itself when it logged the
    data set (train and fine-tune runs), else its first parent's source; None if there is none."""
    for _ in range(_MAX_LINEAGE_DEPTH):
        if "dataset" in run.data.params:
            return run
        parents = parent_run_ids(run)
        if not parents:
            return None
        try:
            run = mlflow.MlflowClient().get_run(parents[0])
        except MlflowException:
            return None  # a deleted or foreign parent: there is nothing to check against
    return None


def _same(spec_value: object, param: str | None) -> bool:
    if param is None:
        return True  # a run from before the param existed
    if isinstance(spec_value, bool):
        return same_param(param, param_str(spec_value))
    if isinstance(spec_value, float):
        try:
            return math.isclose(spec_value, float(param), rel_tol=1e-9)
        except ValueError:
            return False
    return str(spec_value) == param


def check_spec_against_params(run: Run, spec: ModelSpec | EnsembleSpec, data: DataConfig, *,
                              vouched: bool = False) -> None:
    """ArtifactError when the run's spec.json disagrees with the params it was trained under.

    Compared: the data block (data set, folder, validation fraction, split seed, image
    size) and, for a single network, the architecture, bias and batch-norm. The width is
    left to the weights' shapes (a fused network takes its target parent's width). When
    no params are left to compare (a fuse run whose parents were deleted), a spec that is
    not `vouched` for by its digest (a run from before specs had one) may not name a data
    folder: nothing says the run used it, and reading it would list whatever is there.
    """
    source = _params_source(run)
    if source is None:
        if not vouched and parent_run_ids(run) and data.data_dir is not None:
            raise ArtifactError(
                f"run {run.info.run_id}'s {SPEC_FILE} names data folder {data.data_dir!r}, but nothing vouches "
                f"for it: its lineage's train run is gone and the spec carries no digest (it was logged by an "
                f"ofexp from before specs had one), so it may have been edited; {_REMAKE} from runs that exist")
        return
    params = source.data.params
    expected = [("data.name", data.name, params.get("dataset")),
                ("data.data_dir", data.resolved_data_dir or "none", params.get("data_dir")),
                ("data.val_fraction", float(data.val_fraction), params.get("val_fraction")),
                ("data.split_seed", data.split_seed, params.get("split_seed")),
                ("data.image_size", data.image_size, params.get("image_size"))]
    if isinstance(spec, ModelSpec):
        expected += [("model.arch", spec.arch, params.get("model")), ("model.bias", spec.bias, params.get("bias")),
                     ("model.batchnorm", spec.batchnorm, params.get("batchnorm"))]
        if "model_kwargs" in params:  # runs from before --model-kwargs do not log it
            from ofexp.models.foreign import kwargs_json

            kwargs = kwargs_json(spec.kwargs) if spec.kwargs else "none"
            expected.append(("model.kwargs", kwargs, params["model_kwargs"]))
    for field, value, param in expected:
        if not _same(value, param):
            whose = "its" if source is run else f"its lineage's train run {source.info.run_id}"
            raise ArtifactError(
                f"run {run.info.run_id}'s spec.json says {field}={value!r}, but {whose} params say {param!r}: "
                f"the spec was changed after the run wrote it, so neither its network nor its data can be trusted; "
                f"re-run the step that made it")


def load_state_checked(model: nn.Module, state: object, run_id: str, artifact: str,
                       spec: ModelSpec | EnsembleSpec | None = None) -> None:
    """Load a run's state dict into `model`, refusing, in one line that names the run and the
    first offending tensor: a file that is no state dict, tensors missing, left over or of
    another shape than the network its spec.json builds, and NaN or infinite values."""
    if not isinstance(state, Mapping) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                                 for k, v in state.items()):
        raise ArtifactError(f"run {run_id}'s {artifact} is not a state dict (tensor names to tensors); {_REMAKE}")
    expected = model.state_dict()
    problems = []
    for key, tensor in expected.items():
        if key not in state:
            problems.append(f"tensor {key!r} (shape {list(tensor.shape)}) is missing from the weights")
        elif state[key].shape != tensor.shape:
            problems.append(f"tensor {key!r} has shape {list(state[key].shape)} in the weights, but the network "
                            f"needs {list(tensor.shape)}")
    problems += [f"the weights hold tensor {key!r} (shape {list(state[key].shape)}), which the network lacks"
                 for key in state if key not in expected]
    if problems:
        built = f" ({describe_spec(spec)})" if spec is not None else ""
        extra = len(problems) - 1
        more = f" (and {extra} more mismatch{'es' if extra > 1 else ''})" if extra else ""
        raise ArtifactError(f"run {run_id}'s {artifact} does not fit the network its {SPEC_FILE} builds{built}: "
                            f"{problems[0]}{more}; the run's spec and weights disagree: {_REMAKE}")
    check_finite(state, f"run {run_id}'s {artifact}",
                 f"{_REMAKE} (a train run that diverged: train again with a lower --lr or a --grad-clip)")
    model.load_state_dict(state)


def describe_spec(spec: ModelSpec | EnsembleSpec) -> str:
    """A few words for a network spec: 'mlp width 0.25', 'ensemble of 2'."""
    if isinstance(spec, EnsembleSpec):
        return f"ensemble of {len(spec.members)}"
    return f"{spec.arch} width {spec.width:g}"


def check_finite(state: Mapping[str, torch.Tensor], what: str, fix: str) -> None:
    """NonFiniteWeightsError naming the first tensor of `state` that holds NaN or infinite values.
    `what` names the weights ("run X's weights/final.pt"), `fix` how to get good ones."""
    bad = []
    for key, tensor in state.items():
        if tensor.is_floating_point() or tensor.is_complex():
            finite = torch.isfinite(tensor)
            if not bool(finite.all()):
                bad.append((key, tensor, finite))
    if not bad:
        return
    key, tensor, finite = bad[0]
    nan = int(torch.isnan(tensor).sum())
    inf = tensor.numel() - int(finite.sum()) - nan
    counts = " and ".join(c for c in (f"{nan} NaN" if nan else "", f"{inf} infinite" if inf else "") if c)
    more = f" (and {len(bad) - 1} more tensor{'s' if len(bad) > 2 else ''})" if len(bad) > 1 else ""
    raise NonFiniteWeightsError(f"{what} holds non-finite weights: tensor {key!r} has {counts} of its "
                                f"{tensor.numel()} values{more}, so anything measured on it is meaningless; {fix}")


__all__ = ["SPEC_FILE", "TAG_SHA256_PREFIX", "check_digest", "check_finite", "check_spec_against_params", "describe_spec",
           "digest_tag", "file_sha256", "load_state_checked", "log_artifact_with_digest", "parent_run_ids",
           "record_digest", "recorded_digests", "records_digests", "sha256_hex"]
