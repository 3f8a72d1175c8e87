"""Every model a step makes is logged as an MLflow model that takes raw images, and can be
registered under a name (`--register-as`), with its lineage on the version."""
from __future__ import annotations

from torch import nn

from ofexp import tracking
from ofexp.data import DatasetInfo, DataSplits, registry
from ofexp.errors import ConfigError
from ofexp.metrics import TEST_ACCURACY_KEY, TEST_LOSS_KEY
from ofexp.models.serving import RawImageNetwork, raw_examples
from ofexp.tracking.model_registry import check_model_name, check_registered_shape, register_logged_model
from ofexp.tracking.names import TAG_RUN_ID, TAG_STAGE


def check_register_as(register_as: str | None, log_model: bool) -> None:
    """ConfigError, before anything runs, for a registration that cannot happen: a name MLflow would
    refuse (`tracking.model_registry.check_model_name`), or no model logged."""
    if register_as is None:
        return
    check_model_name(register_as)
    if not log_model:
        raise ConfigError("--register-as registers the logged MLflow model: drop --no-log-model")


def served_input_shape(splits: DataSplits) -> list[int]:
    """[C, H, W] of the raw images the model logged for `splits` takes (`log_served_model`)."""
    info = splits.info
    size = raw_size(info)
    return [info.in_channels, size, size]


def raw_size(info: DatasetInfo) -> int:
    """The side of the raw images a served model of this data takes: the data set's own (its
    registry entry's raw_size), or the loaded size for images of any size (image folders)."""
    entry = registry.registered().get(info.name)
    return (entry.raw_size if entry is not None else None) or info.input_size


def check_registration(register_as: str | None, shape) -> None:
    """Before any run: ConfigError when `register_as` already names models of another input shape
    ([C, H, W]), so that one registered name never serves two input formats."""
    if register_as:
        check_registered_shape(register_as, list(shape))


def log_foreign_model(network: nn.Module, parents, cfg) -> str | None:
    """For parents given by model URI (`pipeline.foreign.ForeignParents`): record the input the
    fused network takes, link the parents' logged models as the run's inputs, and log the
    network as they were logged (pt2 or pickle, their signature, an input example) unless
    `cfg.log_model` is off; register it as `cfg.register_as`. Returns its model ID."""
    tracking.model_uris.log_model_input({**parents.model_input.to_record(), "parents": list(cfg.parents)})
    tracking.model_uris.log_parent_models([p.model_id for p in parents.logged])
    if not cfg.log_model:
        return None
    first = parents.logged[0]
    model_id = tracking.log_mlflow_model(network.cpu(), parents.example, signature=first.signature, pt2=first.pt2)
    tracking.set_tags({tracking.TAG_LOGGED_MODEL: model_id})
    if cfg.register_as:
        run_id = tracking.active_run_id()
        lineage = {TAG_RUN_ID: run_id, TAG_STAGE: "fuse", tracking.TAG_PARENTS: ",".join(cfg.parents)}
        shape = ", ".join(map(str, parents.example.shape[1:]))
        register_logged_model(model_id, cfg.register_as, lineage,
                              f"The model of ofexp fuse run {run_id}, made from {', '.join(cfg.parents)}. "
                                          f"It takes inputs of shape `[n, {shape}]` like its parents.")
    return model_id


def log_served_model(network: nn.Module, splits: DataSplits, *, stage: str, parents: tuple[str, ...] = (),
                     register_as: str | None = None) -> str:
    """Log `network` (on the CPU) behind the loader's resize and normalisation as the active run's
    MLflow model; register it as `register_as` when given. Returns the logged model's ID."""
    info = splits.info
    served = RawImageNetwork(network.cpu().eval(), info.mean, info.std, raw_size(info), info.input_size).eval()
    model_id = tracking.log_mlflow_model(served, raw_examples(served, splits.test_x[:2].cpu()))
    tracking.set_tags({tracking.TAG_LOGGED_MODEL: model_id})
    if register_as:
        run_id = tracking.active_run_id()
        made_from = f", made from runs {', '.join(parents)}" if parents else ""
        lineage = {TAG_RUN_ID: run_id, TAG_STAGE: stage,
                   **({tracking.TAG_PARENTS: ",".join(parents)} if parents else {})}
        register_logged_model(model_id, register_as, lineage,
                              f"The model of ofexp {stage} run {run_id}{made_from}. It takes pixel values in "
                              f"[0, 1] of shape `[n, {info.in_channels}, {served.raw_size}, {served.raw_size}]` "
                              f"({info.name}) and returns logits for {info.num_classes} classes.")
    return model_id


def log_test_metrics(test: dict, model_id: str | None) -> None:
    """The model's own metrics, test accuracy and loss, on the run and (when one was logged) on its
    logged model, which is what MLflow's logged-model page and the registry show for it."""
    tracking.log_metrics({TEST_ACCURACY_KEY: test["accuracy"], TEST_LOSS_KEY: test["loss"]}, model_id=model_id)


__all__ = ["check_register_as", "check_registration", "served_input_shape", "log_foreign_model", "log_served_model", "log_test_metrics"]
