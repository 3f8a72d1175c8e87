"""Parents given as MLflow model URIs: read, checked and fed before any run exists.

A model that ofexp did not build carries no spec.json: the user names its input
(`ModelInput`), which is checked against the model's signature and a forward pass,
and its alignment groups are traced from the network and checked by permutation.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ofexp.data import DataSplits, load_dataset
from ofexp.data.model_input import ModelInput, adapt, check_model_input
from ofexp.errors import ConfigError
from ofexp.fusion import check_alignment_spec, trace_alignment
from ofexp.fusion.groups import AlignmentSpec
from ofexp.fusion.naive import check_same_tensors
from ofexp.tracking.model_uris import (MODEL_INPUT_FILE, LoggedModel, fetch_logged_model, is_model_uri,
                                       recorded_model_input)
from ofexp.training import evaluate

# How many training images the forward-pass check and the tracer run on.
_EXAMPLES = 2


def split_refs(refs: tuple[str, ...], option: str = "--parents") -> bool:
    """True when `refs` are model URIs, False when run IDs; ConfigError when mixed."""
    uris = [is_model_uri(r) for r in refs]
    if any(uris) and not all(uris):
        raise ConfigError(f"{option} mixes run IDs and model URIs; pass runs:/<run ID>/model for an ofexp run "
                          "to give them all as URIs")
    return bool(uris) and all(uris)


@dataclass
class ForeignParents:
    logged: list[LoggedModel]
    model_input: ModelInput
    splits: DataSplits  # in the models' input format
    accuracies: list[float]  # each parent's test accuracy on `splits`
    alignment: AlignmentSpec | None  # traced and checked; None when only naive fusion is asked

    @property
    def models(self) -> list[nn.Module]:
        return [p.model for p in self.logged]

    @property
    def label(self) -> str:
        return self.logged[0].label

    @property
    def example(self) -> torch.Tensor:
        return self.splits.test_x[:_EXAMPLES]  # [2, C, H, W]


def load_foreign_parents(uris: tuple[str, ...], model_input: ModelInput | None, *, trace: bool,
                         splits: DataSplits | None = None) -> ForeignParents:
    """Read the parents, refuse (one line, before any run exists) models of different
    architectures, an input they do not take, and a traced spec that fails the check."""
    logged = [fetch_logged_model(uri) for uri in uris]
    check_same_tensors([p.model for p in logged], names=[p.uri for p in logged])
    model_input, splits = _input_and_data(logged[0], model_input, splits)
    for p in logged:
        _check_takes_input(p, splits)
    example = splits.test_x[:_EXAMPLES]
    alignment = None
    if trace:
        alignment = trace_alignment(logged[-1].model, example)
        check_alignment_spec(logged[-1].model, alignment, example)
    cpu = torch.device("cpu")
    accuracies = [evaluate(p.model, splits.test_x, splits.test_y, device=cpu)["accuracy"] for p in logged]
    return ForeignParents(logged, model_input, splits, accuracies, alignment)


def load_foreign_model(uri: str, model_input: ModelInput | None,
                       splits: DataSplits | None = None) -> tuple[LoggedModel, ModelInput, DataSplits]:
    """One model by URI with its data in its input format, checked (for `ofexp evaluate`)."""
    logged = fetch_logged_model(uri)
    model_input, splits = _input_and_data(logged, model_input, splits)
    _check_takes_input(logged, splits)
    return logged, model_input, splits


def _input_and_data(model: LoggedModel, model_input: ModelInput | None,
                    splits: DataSplits | None) -> tuple[ModelInput, DataSplits]:
    """The input the model takes (given, or as its fuse run recorded it), and the data in it."""
    model_input = model_input or _recorded_input(model)
    return model_input, adapt(splits if splits is not None else load_dataset(model_input.data), model_input)


def _check_takes_input(model: LoggedModel, splits: DataSplits) -> None:
    check_model_input(model.model, splits.test_x[:_EXAMPLES], splits.info.num_classes,
                      signature_shape=model.input_shape, what=f"the model at {model.uri}")


def _recorded_input(model: LoggedModel) -> ModelInput:
    """The input an ofexp fuse run recorded for its model; else the user must name it."""
    record = recorded_model_input(model)
    if record is None:
        raise ConfigError(f"the model at {model.uri} was not made by ofexp: name the data it takes with --dataset "
                          "(and --image-size, --channels, --pixels)")
    try:
        return ModelInput.from_record(record, recorded_by=f"run {model.run_id}")
    except (KeyError, TypeError, ValueError) as exc:
        raise ConfigError(f"run {model.run_id}'s {MODEL_INPUT_FILE} is invalid ({exc}); name the "
                          "data with --dataset, --image-size, --channels and --pixels") from None

