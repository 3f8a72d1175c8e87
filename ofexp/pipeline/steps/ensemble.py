"""The ensemble step: the prediction ensemble of train or fuse runs, logged as an evaluable run.

The ensemble averages its members' softmax outputs (`ofexp.models.ensemble`). It is
the accuracy ceiling that fusion is compared with, at k times the inference cost.
"""
from __future__ import annotations

import sys
from dataclasses import dataclass

from tqdm import tqdm

from ofexp import tracking
from ofexp.data import DataSplits, load_dataset
from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.metrics import TEST_ACCURACY_KEY
from ofexp.models.ensemble import COMBINE, Ensemble, EnsembleSpec
from ofexp.pipeline.steps.serving import (check_register_as, check_registration, log_served_model, log_test_metrics,
                                    served_input_shape)
from ofexp.tracking.artifacts import (ALLOW_UNFINISHED_OPTION, ENSEMBLE_STAGE, ModelRun, describe_unfinished,
                                      unfinished_inputs, unfinished_tags)
from ofexp.tracking.names import parent_tag
from ofexp.training import evaluate, resolve_device
from ofexp.training.speed import float32_kernels

ENSEMBLE_WEIGHTS = "weights/ensemble.pt"  # the members' state dicts, keys 'members.<i>.<name>'


@dataclass(frozen=True)
class EnsembleConfig:
    """The ensemble of `parents` (train or fuse run IDs, k ≥ 2, distinct)."""

    parents: tuple[str, ...]
    device: str = "auto"
    run_name: str | None = None
    log_model: bool = True  # also log the ensemble as an MLflow model (raw images in)
    register_as: str | None = None  # a Model Registry name for it
    # Parents that are not FINISHED are refused unless this is set; the ensemble run is then
    # tagged ofexp.unfinished_inputs. Not a param: it changes nothing the ensemble computes.
    allow_unfinished: bool = False

    def __post_init__(self) -> None:
        if len(self.parents) < 2:
            raise ConfigError(f"an ensemble needs at least 2 parent runs, got {len(self.parents)}; "
                              "pass --parents ID,ID")
        if len(set(self.parents)) != len(self.parents):
            raise ConfigError("--parents lists the same run twice; pass distinct train or fuse runs")
        check_register_as(self.register_as, self.log_model)

    def params(self) -> dict[str, object]:
        return {"parents": ",".join(self.parents), "members": len(self.parents), "combine": COMBINE,
                "device": self.device}


def run_ensemble(cfg: EnsembleConfig, splits: DataSplits | None = None) -> str:
    """Log the ensemble of the parent runs as a run of stage 'ensemble'; return its ID.

    Artifacts: spec.json (the members' specs, and the parent run IDs under
    "parents"), weights/ensemble.pt (every member's weights, so the run loads on
    its own with `ofexp.tracking.load_model`). Metrics: prediction/accuracy and
    test_loss of the ensemble (its loss is the NLL of the mean probabilities),
    and prediction/accuracy/member_<i>. Parents are checked before the run starts: train or fuse
    runs only, FINISHED ones unless `cfg.allow_unfinished` (the run is then tagged
    ofexp.unfinished_inputs), weights that fit their spec and hold no NaN or inf, same data.
    """
    device = resolve_device(cfg.device)
    members = [tracking.fetch_model_run(run_id, allow_unfinished=cfg.allow_unfinished,
                                        accept_option=ALLOW_UNFINISHED_OPTION) for run_id in cfg.parents]
    _check_same_data(cfg.parents, members)
    unfinished = unfinished_inputs(members)
    if unfinished:
        tqdm.write(f"warning: {describe_unfinished(unfinished)}", file=sys.stderr)
    spec = EnsembleSpec(tuple(m.spec for m in members))
    model = Ensemble([m.model for m in members], spec).eval()
    data = members[0].data
    splits = splits if splits is not None else load_dataset(data)
    check_registration(cfg.register_as, served_input_shape(splits))
    tags = {tracking.TAG_PARENTS: ",".join(cfg.parents),
            **{parent_tag(i): rid for i, rid in enumerate(cfg.parents, start=1)},
            **unfinished_tags(unfinished)}
    name = cfg.run_name or f"ensemble of {len(members)} {'/'.join(sorted({m.spec.arch for m in members}))} {data.name}"
    with tracking.stage_run(ENSEMBLE_STAGE, run_name=name, params=cfg.params(), tags=tags) as run:
        tracking.log_spec(spec, data, parents=cfg.parents)
        tracking.log_state_dict(model.state_dict(), ENSEMBLE_WEIGHTS)
        model_id = None
        if cfg.log_model:
            model_id = log_served_model(model, splits, stage=ENSEMBLE_STAGE, parents=cfg.parents,
                                        register_as=cfg.register_as)
        model.to(device)  # the members are its submodules: they move too
        with float32_kernels():  # IEEE float32 on CUDA too, as ofexp trains and measures
            test = evaluate(model, splits.test_x, splits.test_y, device=device)
            member_acc = [evaluate(m.model, splits.test_x, splits.test_y, device=device)["accuracy"]
                          for m in members]
        log_test_metrics(test, model_id)
        tracking.log_metrics({f"{TEST_ACCURACY_KEY}/member_{i}": a for i, a in enumerate(member_acc, start=1)})
        lines = [f"Prediction ensemble (mean of softmax outputs) of {len(members)} runs:"]
        lines += [f"- member {i}: run {rid} (test accuracy {a:.4f})"
                  for i, (rid, a) in enumerate(zip(cfg.parents, member_acc), start=1)]
        lines.append(f"Ensemble test accuracy: {test['accuracy']:.4f}.")
        if unfinished:
            lines.append(describe_unfinished(unfinished))
        tracking.set_description("\n".join(lines))
        return run.info.run_id


def _check_same_data(run_ids: tuple[str, ...], members: list[ModelRun]) -> None:
    first = members[0].data.split_key
    for run_id, member in zip(run_ids[1:], members[1:]):
        if member.data.split_key != first:
            raise IncompatibleModelsError(
                f"runs {run_ids[0]} and {run_id} were trained on different data ({first} vs "
                f"{member.data.split_key}); ensemble runs of the same dataset and split")


def study_ensemble_step(ctx, step, parents: tuple[str, ...]) -> str:
    """The study's `ensemble` model of one seed (`step` of the study plan): the ensemble of
    `parents`, the seed's parent runs. `ctx` is the study's SeedContext."""
    tcfg = ctx.cfg.train
    cfg = EnsembleConfig(parents=parents, device=tcfg.device, log_model=tcfg.log_model, run_name=step.run_name)
    return ctx.step(step.kind, ENSEMBLE_STAGE, cfg.params(), {tracking.TAG_PARENTS: ",".join(parents)},
                    lambda: run_ensemble(cfg, ctx.data()))
