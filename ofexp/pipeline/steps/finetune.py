"""Fine-tuning: a train run that starts from another run's weights instead of a fresh init.

The paper's second claim (Singh & Jaggi 2020) is that a fused model, briefly
fine-tuned, matches its parents; `ofexp train --init-from RUN_ID` is that step.
The network's spec and data come from the source run (a train or fuse run);
options that contradict them are refused before any run starts.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping

from ofexp import tracking
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.errors import ArtifactError, ConfigError
from ofexp.fusion import recompute_batchnorm_stats
from ofexp.models import ModelSpec, has_batchnorm, kwargs_json
from ofexp.pipeline.steps.train import TrainConfig, fit_and_log, log_inputs, model_spec_for
from ofexp.tracking import names, runs
from ofexp.tracking.names import TAG_INIT_FROM, TAG_INIT_FROM_STAGE
from ofexp.training import Recipe, SpeedOptions, make_recipe, resolve_device


# The fine-tuning recipe, derived from a base recipe (--recipe, default "default"): a few
# epochs at a tenth of its learning rate, cosine decay, no warm-up (the weights are already
# trained; warming up from lr≈0 would waste the short budget). Batch size, momentum, weight
# decay and clipping stay the base recipe's. --epochs/--lr/... override these values.
FINETUNE_EPOCHS = 3
FINETUNE_LR_FACTOR = 0.1
FINETUNE_RECIPE_NAME = "finetune"

# CLI option -> how to read the source's value, for the contradiction check.
_SPEC_OPTIONS = {
    "model": lambda spec, data: spec.arch,
    "model_kwargs": lambda spec, data: kwargs_json(spec.kwargs) if spec.kwargs else "none",
    "width": lambda spec, data: spec.width,
    "bias": lambda spec, data: spec.bias,
    "batchnorm": lambda spec, data: spec.batchnorm,
    "dataset": lambda spec, data: data.name,
    "val_fraction": lambda spec, data: data.val_fraction,
    "split_seed": lambda spec, data: data.split_seed,
    "image_size": lambda spec, data: data.image_size,
}
_RECIPE_OVERRIDES = ("epochs", "batch_size", "lr", "weight_decay", "warmup_epochs", "grad_clip")


def finetune_recipe(base: str | Recipe = "default", **overrides) -> Recipe:
    """The fine-tuning recipe built on `base` (a recipe or its name); `overrides` (None = keep) win."""
    recipe = base if isinstance(base, Recipe) else make_recipe(base)
    tuned = replace(recipe, name=FINETUNE_RECIPE_NAME, epochs=FINETUNE_EPOCHS, lr=recipe.lr * FINETUNE_LR_FACTOR,
                    warmup_epochs=0.0, schedule="cosine", milestones=())
    return replace(tuned, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class FinetuneConfig:
    """A fine-tuning run of `source` (a train or fuse run ID).

    `expect` holds (option, value) pairs the user gave for the spec and data
    (model, model_kwargs, width, bias, batchnorm, dataset, val_fraction, split_seed,
    image_size); any that differs from the source run is refused. `data_dir`
    only relocates the source's data; `data` replaces the DataConfig read from
    the source's spec.json, and must describe the same split (the study passes
    its own, so that its params, and so its cache key, are known in advance).
    """

    source: str
    recipe: Recipe | None = None  # None: finetune_recipe(base_recipe)
    base_recipe: str = "default"
    seed: int = 0
    device: str = "auto"
    log_model: bool = True
    data_dir: str | None = None
    run_name: str | None = None
    expect: tuple[tuple[str, object], ...] = ()
    progress: bool = True
    data: DataConfig | None = None
    speed: SpeedOptions = SpeedOptions()  # --channels-last, --compile, --tf32: not hyperparameters

    def __post_init__(self) -> None:
        if self.recipe is None:
            object.__setattr__(self, "recipe", finetune_recipe(self.base_recipe))
        unknown = [k for k, _ in self.expect if k not in _SPEC_OPTIONS]
        if unknown:
            raise ConfigError(f"cannot check option(s) {', '.join(unknown)} against a source run; "
                              f"use only {', '.join(_SPEC_OPTIONS)}")


def finetune_config_from_options(source: str, given: Mapping[str, object]) -> FinetuneConfig:
    """A FinetuneConfig from the `ofexp train` options the user gave (name -> value).

    Recipe options override the fine-tuning recipe, spec and data options are
    checked against the source run, and --init (a fresh initialisation) is refused.
    """
    given = {k: v for k, v in given.items() if v is not None}
    if "init" in given:
        raise ConfigError(f"--init {given['init']} contradicts --init-from {source}: the weights come from "
                          "that run; drop --init")
    base = str(given.get("recipe", "default"))
    recipe = finetune_recipe(base, **{k: given.get(k) for k in _RECIPE_OVERRIDES})
    return FinetuneConfig(
        source=source, recipe=recipe, base_recipe=base, seed=int(given.get("seed", 0)),
        device=str(given.get("device", "auto")), log_model=bool(given.get("log_model", True)),
        data_dir=given.get("data_dir"), run_name=given.get("run_name"),
        speed=SpeedOptions.from_params(given),
        expect=tuple((k, given[k]) for k in _SPEC_OPTIONS if k in given),
    )


def check_against_source(cfg: FinetuneConfig, source_id: str, spec: ModelSpec, data) -> None:
    """Refuse options that contradict the source run's spec or data, naming each."""
    clashes = []
    for option, value in cfg.expect:
        saved = _SPEC_OPTIONS[option](spec, data)
        same = math.isclose(float(saved), float(value)) if isinstance(saved, float) else saved == value
        if not same:
            clashes.append(f"--{option.replace('_', '-')} {_show(value)} (run: {_show(saved)})")
    if clashes:
        raise ConfigError(f"--init-from {source_id} fixes the network and data, and these options contradict it: "
                          f"{', '.join(clashes)}; drop them (the spec comes from the source run)")


def _show(value: object) -> str:
    return str(value).lower() if isinstance(value, bool) else str(value)


def finetune_train_config(cfg: FinetuneConfig, spec: ModelSpec, data: DataConfig) -> TrainConfig:
    """The TrainConfig a fine-tuning run of a `spec` network on `data` records."""
    return TrainConfig(model=spec.arch, model_kwargs=spec.kwargs, data=data, width=spec.width, bias=spec.bias,
                       batchnorm=spec.batchnorm,
                       recipe=cfg.recipe, seed=cfg.seed, device=cfg.device, log_model=cfg.log_model,
                       run_name=cfg.run_name, progress=cfg.progress, speed=cfg.speed)


def finetune_params(cfg: FinetuneConfig, tcfg: TrainConfig) -> dict[str, object]:
    """The params run_finetune logs: the train params, `init_from` and `finetune_base_recipe`."""
    return {**tcfg.params(), "init_from": cfg.source, "finetune_base_recipe": cfg.base_recipe}


def _data_for(cfg: FinetuneConfig, source_data: DataConfig) -> DataConfig:
    data = cfg.data or source_data
    if _split_key(data) != _split_key(source_data):
        raise ConfigError(f"run {cfg.source} was trained on {_split_key(source_data)}, not {_split_key(data)}; "
                          "fine-tune on the source's dataset and split")
    # a --data-dir the user gives is theirs, not the run's: its errors name the option, not the run
    return replace(data, data_dir=cfg.data_dir, recorded_by=None) if cfg.data_dir else data


def _split_key(data: DataConfig) -> tuple:
    return data.name, data.image_size, data.split_seed, data.val_fraction


def run_finetune(cfg: FinetuneConfig, splits: DataSplits | None = None) -> str:
    """Fine-tune a train or fuse run's weights in a new train run; return its ID.

    The run is a train run (evaluable, resumable) with params `init_from` and
    `finetune_base_recipe`, tags ofexp.init_from / ofexp.init_from_stage, and
    weights/initial.pt equal, bit for bit, to the source's weights (a train
    run's final, a fuse run's fused). A batch-norm network's running statistics
    are then recomputed on the training data before the first epoch, since a
    fused network's are wrong (docs/design.md §4). Bad input raises before the run starts.
    """
    source = tracking.fetch_model_run(cfg.source)  # refuses evaluate, study and ensemble runs
    check_against_source(cfg, cfg.source, source.spec, source.data)
    data = _data_for(cfg, source.data)
    spec = source.spec
    tcfg = finetune_train_config(cfg, spec, data)
    device = resolve_device(tcfg.device)
    splits = splits if splits is not None else load_dataset(data)
    if model_spec_for(tcfg, splits) != spec:
        raise ArtifactError(f"run {cfg.source}'s spec.json ({spec}) does not fit its data {data.name}; "
                            "fine-tune a run made by ofexp")
    model = source.model
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    stage = source.stage
    name = cfg.run_name or f"finetune {source.run.info.run_name or cfg.source}"
    params = finetune_params(cfg, tcfg)
    tags = {**runs.process_tags(), names.TAG_LOG_MODEL: runs.param_str(cfg.log_model),
            TAG_INIT_FROM: cfg.source, TAG_INIT_FROM_STAGE: stage}
    description = (f"Fine-tunes {stage} run {cfg.source} ({spec.arch}, width {spec.width}) on {data.name} "
                   f"for {cfg.recipe.epochs} epochs at lr {cfg.recipe.lr:g}, seed {cfg.seed}.")
    with tracking.stage_run("train", run_name=name, params=params, tags=tags, description=description) as run:
        log_inputs(splits)
        tracking.log_spec(spec, data)
        tracking.log_state_dict(initial, "weights/initial.pt")
        if has_batchnorm(model):  # ofexp's networks with --batchnorm, and any foreign one that has it
            recompute_batchnorm_stats(model, splits.train_x)
        model.train()
        fit_and_log(tcfg, model, splits, device, parents=(cfg.source,))
        return run.info.run_id


# --- in the study ---------------------------------------------------------------------------


def study_finetune_step(ctx, step, source: str) -> str:
    """The study's fine-tuned model of one seed (`step`, a train step of the study plan whose
    config is the fine-tuning's TrainConfig): fine-tune run `source`, the seed's fused model.

    `ctx` is the study's SeedContext (cfg, data(), step). The recipe is the study's own with
    FINETUNE_LR_FACTOR of its lr, `finetune_epochs` epochs and no warm-up (the plan's config).
    """
    tcfg = step.config
    cfg = FinetuneConfig(
        source=source, recipe=tcfg.recipe, base_recipe=ctx.cfg.train.recipe.name, seed=tcfg.seed,
        device=tcfg.device, log_model=tcfg.log_model, progress=tcfg.progress, data=tcfg.data, speed=tcfg.speed,
        run_name=step.run_name,
    )
    # the fused network has the parents' spec, so the run's params are known before the data is loaded
    params = finetune_params(cfg, replace(tcfg, run_name=cfg.run_name))
    tags = {TAG_INIT_FROM: source, **({names.TAG_LOG_MODEL: "true"} if cfg.log_model else {})}
    return ctx.step(step.kind, "train", params, tags, lambda: run_finetune(cfg, ctx.data()))
