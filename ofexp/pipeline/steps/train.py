"""The train step: one MLflow run that trains one network and logs everything needed downstream."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Mapping

from ofexp import tracking
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.errors import ArtifactError, ConfigError, OfexpError, RunLookupError
from ofexp.models import (ARCHITECTURES, ModelSpec, build_model, check_forward, init_weights, is_foreign, kwargs_json,
                          normalise_kwargs, parse_kwargs, trust_factory)
from ofexp.pipeline.steps.serving import (check_register_as, check_registration, log_served_model, log_test_metrics,
                                    served_input_shape)
from ofexp.tracking import names, running_runs, runs
from ofexp.tracking.artifacts import CHECKPOINT_FILE, SPEC_FILE, has_artifact, load_state_checked
from ofexp.tracking.async_log import EpochLogger
from ofexp.models.foreign import kwargs_words
from ofexp.options import SEED, command_params, option, option_params
from ofexp.training import (Recipe, RecipeOptions, SpeedOptions, evaluate, fit, make_recipe, resolve_device,
                            seed_everything)

if TYPE_CHECKING:
    from mlflow.entities import Run


MODEL_HELP = (f"{' | '.join(ARCHITECTURES)} | torchvision:<name> (a torchvision classifier, e.g. "
              "torchvision:resnet18) | <module>:<function> (your factory on PYTHONPATH, called with "
              "--model-kwargs and num_classes; naming it here trusts it, docs/commands.md)")
# Options that are not run params: they change nothing the run computes.
NOT_PARAMS = ("log_model",)  # a tag: the served copy of the same weights (names.TAG_LOG_MODEL)


def _kwargs_param(kwargs: tuple) -> str:
    """--model-kwargs as a run param: canonical JSON, 'none' when there are none."""
    return kwargs_json(kwargs) if kwargs else "none"


@dataclass(frozen=True)
class TrainConfig:
    """One train run. Its options are the fields made with `option()`, these and those of `data`
    (DataConfig), `recipe` (RecipeOptions, resolved into a Recipe) and `speed` (SpeedOptions)."""

    model: str = option("mlp", MODEL_HELP)
    data: DataConfig = field(default_factory=DataConfig)
    width: float = option(1.0, "Channel width multiplier (ofexp's own architectures).")
    bias: bool = option(False, "Biases in every conv and linear layer (ofexp's own architectures).")
    batchnorm: bool = option(False, "Batch-norm after every conv (or hidden linear) layer (ofexp's own "
                             "architectures).")
    recipe: Recipe = field(default_factory=make_recipe)
    seed: int = option(0, "Torch seed: init, shuffling.", kind=SEED)
    device: str = option("auto", "cpu, cuda, mps or auto.")
    log_model: bool = option(True, "Also log the final network as an MLflow model.")
    run_name: str | None = None
    progress: bool = True
    speed: SpeedOptions = field(default_factory=SpeedOptions)  # --channels-last, --compile, --tf32
    register_as: str | None = None  # a Model Registry name for the logged model (not a param)
    # a torchvision or factory model's keyword arguments (--model-kwargs): sorted (key, value) pairs,
    # or a dict; a `ModelName` model brings its own
    model_kwargs: tuple = option((), "Keyword arguments of a torchvision or factory model: a JSON object of plain "
                                 "values, e.g. '{\"width_mult\": 0.5}', or key=value pairs (width_mult=0.5).",
                                 show=_kwargs_param)

    def __post_init__(self) -> None:
        check_register_as(self.register_as, self.log_model)
        carried = getattr(self.model, "kwargs", None)  # a ModelName from the command line
        kwargs = normalise_kwargs(self.model_kwargs)
        if carried is not None and kwargs and kwargs != carried:
            raise ConfigError(f"--model-kwargs {kwargs_json(carried)} and model_kwargs {kwargs_json(kwargs)} "
                              "disagree; give the keyword arguments once")
        object.__setattr__(self, "model", str(self.model))
        object.__setattr__(self, "model_kwargs", carried or kwargs)
        check_model_options(self.model, self.model_kwargs, self.width, self.bias, self.batchnorm)

    def params(self) -> dict[str, str]:
        """Every setting that determines the trained weights, under the options' names: the options
        (but NOT_PARAMS), the data's, and the whole resolved recipe (momentum, schedule... included)."""
        own = {k: v for k, v in option_params(self).items() if k not in NOT_PARAMS}
        return {**own, **self.data.to_params(), **self.recipe.to_params(), **self.speed.to_params()}

    def command_params(self) -> dict[str, str]:
        """`ofexp train`'s options that give this config, as {MLproject parameter: text}: what a
        cluster engine passes to a train step. The data folder is passed as read (the data set's
        default when none was given); --model-kwargs as key=value words where it can be."""
        data_dir = self.data.resolved_data_dir
        return {**command_params(self), **command_params(self.data), **({"data_dir": data_dir} if data_dir else {}),
                **command_params(RecipeOptions.of(self.recipe)), **command_params(self.speed),
                "model_kwargs": (kwargs_words(self.model_kwargs) or kwargs_json(self.model_kwargs))
                if self.model_kwargs else "none"}


def check_model_options(model: str, kwargs: tuple, width: float, bias: bool, batchnorm: bool) -> None:
    """ConfigError, naming the option, for a --model that does not exist and for options that do
    not apply to it: --model-kwargs with ofexp's own architectures, --width/--bias/--batchnorm
    with a torchvision or factory model."""
    try:
        foreign = is_foreign(model)
        # the name and the kwargs alone (shapes come from the data)
        ModelSpec(arch=model, num_classes=2, in_channels=3, input_size=32, kwargs=kwargs if foreign else ())
    except ConfigError as exc:
        raise ConfigError(f"--model {model[:80]}: {str(exc).removeprefix('model spec: ')}") from None
    if not foreign:
        if kwargs:
            raise ConfigError(f"--model-kwargs does not apply to --model {model}; drop it (ofexp's own "
                              "architectures take --width, --bias and --batchnorm)")
        return
    given = [option for option, on in (("--width", width != 1.0), ("--bias", bias), ("--batchnorm", batchnorm)) if on]
    if given:
        raise ConfigError(f"{given[0]} does not apply to --model {model} (only to ofexp's mlp, vgg11 and resnet18); "
                          "drop it, and pass the network's own options with --model-kwargs")


def model_spec_for(cfg: TrainConfig, splits: DataSplits) -> ModelSpec:
    """The network's spec: architecture options from the config, shapes from the data."""
    info = splits.info
    return ModelSpec(
        arch=cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
        input_size=info.input_size, width=cfg.width, bias=cfg.bias, batchnorm=cfg.batchnorm,
        kwargs=cfg.model_kwargs,
    )


def run_train(cfg: TrainConfig, splits: DataSplits | None = None) -> str:
    """Train one network as an MLflow run of stage 'train'; return the run ID.

    Data, device and spec are checked before the run starts, so bad input
    leaves no run behind. Artifacts: weights/{initial,best,final}.pt, the
    per-epoch checkpoint/last.pt, spec.json and the MLflow model 'model'.
    """
    device = resolve_device(cfg.device)
    trust_factory(cfg.model)  # the caller named this model: a factory it names may be imported
    splits = splits if splits is not None else load_dataset(cfg.data)
    check_registration(cfg.register_as, served_input_shape(splits))
    spec = model_spec_for(cfg, splits)
    if spec.foreign:
        check_forward(spec)  # a foreign network's input size limits are its own: refused before the run
    seed_everything(cfg.seed)
    model = build_model(spec)
    init_weights(model, cfg.recipe.init)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    name = cfg.run_name or f"train {cfg.model} {cfg.data.name} seed{cfg.seed}"
    tags = {**runs.process_tags(), names.TAG_LOG_MODEL: runs.param_str(cfg.log_model)}
    with tracking.stage_run("train", run_name=name, params=cfg.params(), tags=tags, description=_description(cfg)) as run:
        log_inputs(splits)
        tracking.log_spec(spec, cfg.data)
        tracking.log_state_dict(initial, "weights/initial.pt")
        fit_and_log(cfg, model, splits, device)
        return run.info.run_id


def _description(cfg: TrainConfig) -> str:
    if is_foreign(cfg.model):
        kwargs = f" with {kwargs_json(cfg.model_kwargs)}" if cfg.model_kwargs else ""
        return (f"Trains {cfg.model}{kwargs} on {cfg.data.name} with the '{cfg.recipe.name}' recipe, "
                f"seed {cfg.seed}.")
    return (
        f"Trains {cfg.model} (width {cfg.width}, bias {cfg.bias}, batch-norm {cfg.batchnorm}) on "
        f"{cfg.data.name} with the '{cfg.recipe.name}' recipe, seed {cfg.seed}."
    )


def fit_and_log(cfg: TrainConfig, model, splits: DataSplits, device, resume: dict | None = None,
                 logged_epochs: frozenset[int] = frozenset(), parents: tuple[str, ...] = ()) -> None:
    """Fit inside the active train run (fresh or resumed), then log weights, test metrics and model.

    Each epoch logs its checkpoint BEFORE its metrics: an epoch whose metrics are on the
    server always has its checkpoint there too, so a resumed run never logs an epoch twice.
    Both go through one background thread (EpochLogger), flushed before the final weights.
    """
    model.to(device)
    with EpochLogger.for_active_run(CHECKPOINT_FILE) as epoch_log:
        def on_epoch_end(epoch: int, metrics: dict, checkpoint: dict) -> None:
            epoch_log.submit(epoch, checkpoint, None if epoch in logged_epochs else metrics)

        result = fit(model, splits, cfg.recipe, device=device, seed=cfg.seed, on_epoch_end=on_epoch_end,
                     resume=resume, progress=cfg.progress, speed=cfg.speed)
    tracking.log_state_dict(result.best_state, "weights/best.pt")
    tracking.log_state_dict(model.state_dict(), "weights/final.pt")
    with cfg.speed.numerics():  # the test set under the numerics the network trained with
        test = evaluate(model, splits.test_x, splits.test_y, device=device)
    tracking.log_metrics({"best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss})
    model_id = None
    if cfg.log_model:
        model_id = log_served_model(model, splits, stage="train", parents=parents, register_as=cfg.register_as)
    log_test_metrics(test, model_id)
    tracking.set_description(f"{_description(cfg)} Test accuracy {test['accuracy']:.4f}.")


def log_inputs(splits: DataSplits) -> None:
    """Log the train, validation and test sets as the active run's dataset inputs (MLflow's Datasets)."""
    info = splits.info
    for context, x, y in (("training", splits.train_x, splits.train_y),
                          ("validation", splits.val_x, splits.val_y),
                          ("test", splits.test_x, splits.test_y)):
        tracking.log_dataset_input(f"{info.name}-{context}", info.source, x, y, context)


# --- resuming an interrupted train run ------------------------------------------------------

# Options that may differ from the run on resume: they do not change the trained weights.
_FREE_ON_RESUME = ("log_model", "epochs")


def resume_train(run_id: str, given: Mapping[str, object] | None = None, *, experiment_name: str | None = None,
                 log_model: bool | None = None, progress: bool = True) -> str:
    """Continue a killed or failed train run, in the same MLflow run, from its checkpoint/last.pt.

    The config comes from the run's params; `given` holds the options the user passed
    (param names -> values): any that contradicts the run is refused, except `epochs`,
    which may extend it. A FINISHED run is never changed: extending it (a larger
    `epochs`) trains a new run from its last checkpoint, tagged `ofexp.extends`. Returns
    the ID of the run that FINISHED.
    """
    run = tracking.get_run_checked(run_id, ("train",))
    _check_experiment(run, experiment_name)
    cfg = train_config_from_run(run, given or {})
    cfg = replace(cfg, progress=progress, log_model=cfg.log_model if log_model is None else log_model)
    _check_resumable(run, cfg)
    device = resolve_device(cfg.device)
    spec, _ = tracking.load_spec_from_run(run_id)
    splits = load_dataset(cfg.data)
    if model_spec_for(cfg, splits) != spec:
        raise ArtifactError(f"run {run_id}'s {SPEC_FILE} does not match its params; it cannot be resumed")
    model = build_model(spec)
    checkpoint = _checkpoint_or_initial(run_id, model)
    if run.info.status == "FINISHED":
        return _extend_finished(run, cfg, model, spec, splits, device, checkpoint)
    runs.claim_run(run)  # one owner: a second resume of the same state of the run is refused here
    logged = frozenset(running_runs.metric_steps(run_id, "val_loss"))
    tags = {**runs.process_tags(), names.TAG_LOG_MODEL: runs.param_str(cfg.log_model),
            names.TAG_EPOCHS: str(cfg.recipe.epochs)}
    with tracking.stage_run("train", run_name=cfg.run_name or "", resume_run_id=run_id, tags=tags):
        # epochs checkpointed but killed before their metrics were logged
        for row in (checkpoint or {}).get("history", []):
            if int(row["epoch"]) not in logged:
                tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
                logged |= {int(row["epoch"])}
        fit_and_log(cfg, model, splits, device, resume=checkpoint, logged_epochs=logged)
    return run_id


def _extend_finished(run: Run, cfg: TrainConfig, model, spec, splits: DataSplits, device, checkpoint: dict) -> str:
    """Train a FINISHED run further as a NEW run from its last checkpoint; the old run stays as it
    was (fuse and evaluate runs made from its weights keep pointing at those weights)."""
    old = run.info.run_id
    name = f"{run.info.run_name or 'train'} to {cfg.recipe.epochs} epochs"
    tags = {names.TAG_LOG_MODEL: runs.param_str(cfg.log_model), names.TAG_EXTENDS: old}
    description = f"{_description(cfg)} Extends [run {old}](#/runs/{old}) from its epoch {checkpoint['epoch']}."
    # the param keeps the study cache from taking it for a fresh run of cfg.params(): its lr
    # schedule restarted from the old run's end, so its weights are not that run's
    params = {**cfg.params(), "extends": old}
    with tracking.stage_run("train", run_name=name, params=params, tags=tags, description=description) as new:
        log_inputs(splits)
        tracking.log_spec(spec, cfg.data)
        # θ₀ of the measures (sharpness_init, flatness_init) is the original start, not the checkpoint
        tracking.log_state_dict(tracking.load_weights_from_run(old, "initial"), "weights/initial.pt")
        for row in checkpoint.get("history", []):  # the epochs the old run trained, so the curves are whole
            tracking.log_metrics({k: v for k, v in row.items() if k != "epoch"}, step=int(row["epoch"]))
        done = frozenset(int(row["epoch"]) for row in checkpoint.get("history", []))
        fit_and_log(cfg, model, splits, device, resume=checkpoint, logged_epochs=done)
        return new.info.run_id


def _checkpoint_or_initial(run_id: str, model) -> dict | None:
    """The run's last checkpoint; None, with `model` set to the run's initial weights, if it
    was killed before its first epoch ended (fit re-seeds, so that start is the same too)."""
    if has_artifact(run_id, CHECKPOINT_FILE):
        return tracking.load_checkpoint_from_run(run_id)
    state = tracking.load_weights_from_run(run_id, "initial")
    load_state_checked(model, state, run_id, "weights/initial.pt")  # one line naming a misfit tensor
    return None


def train_config_from_run(run: Run, given: Mapping[str, object]) -> TrainConfig:
    """Rebuild a train run's TrainConfig from its params; refuse contradicting `given` options."""
    p = dict(run.data.params)
    epochs = int(run.data.tags.get(names.TAG_EPOCHS) or p.get("epochs", 0))
    p["epochs"] = str(epochs)
    for key, value in SpeedOptions().to_params().items():
        p.setdefault(key, value)  # runs from before the speed flags trained with them off
    p.setdefault("model_kwargs", "none")  # runs from before --model-kwargs
    _check_given(run.info.run_id, p, run.info.run_name, given)
    if given.get("epochs") is not None:
        epochs = int(given["epochs"])
    try:
        data = DataConfig(
            name=p["dataset"], data_dir=None if p["data_dir"] == "none" else p["data_dir"],
            val_fraction=float(p["val_fraction"]), split_seed=int(p["split_seed"]),
            download=runs.param_flag(p["download"]), image_size=int(p["image_size"]),
        )
        milestones = () if p["milestones"] == "none" else tuple(int(m) for m in p["milestones"].split(","))
        recipe = Recipe(
            name=p["recipe"], epochs=epochs, batch_size=int(p["batch_size"]), lr=float(p["lr"]),
            momentum=float(p["momentum"]), weight_decay=float(p["weight_decay"]), init=p["init"],
            warmup_epochs=float(p["warmup_epochs"]), grad_clip=float(p["grad_clip"]),
            schedule=p["schedule"], milestones=milestones, gamma=float(p["gamma"]),
        )
        cfg = TrainConfig(
            model=p["model"], model_kwargs=parse_kwargs(p["model_kwargs"]), data=data, width=float(p["width"]), bias=runs.param_flag(p["bias"]),
            batchnorm=runs.param_flag(p["batchnorm"]), recipe=recipe, seed=int(p["seed"]), device=p["device"],
            log_model=runs.param_flag(run.data.tags.get(names.TAG_LOG_MODEL), default=True), run_name=run.info.run_name,
            speed=SpeedOptions.from_params(p),
        )
    except (KeyError, ValueError) as exc:  # ConfigError is a ValueError
        raise RunLookupError(f"run {run.info.run_id}'s params are incomplete or invalid ({exc}); "
                             "only train runs logged by ofexp can be resumed") from None
    rebuilt = {k: runs.param_str(v) for k, v in cfg.params().items() if k != "epochs"}
    if not all(runs.same_param(p.get(k), v) for k, v in rebuilt.items()):
        raise RunLookupError(f"run {run.info.run_id}'s params do not rebuild its config; it cannot be resumed")
    return cfg


def _check_given(run_id: str, params: Mapping[str, str], run_name: str, given: Mapping[str, object]) -> None:
    if "epochs" in given and given["epochs"] is not None and int(given["epochs"]) < int(params["epochs"]):
        raise ConfigError(f"--epochs {given['epochs']} is below run {run_id}'s {params['epochs']} epochs; "
                          "a resumed run can only be extended")
    saved = {**params, "run_name": run_name}
    clashes = [f"--{k.replace('_', '-')} {v} (run: {saved.get(k)})" for k, v in given.items()
               if k not in _FREE_ON_RESUME and v is not None and not _same(saved.get(k), v)]
    if clashes:
        raise ConfigError(f"cannot resume run {run_id} with different settings: {', '.join(clashes)}; "
                          "drop these options (only --epochs may grow)")


def _same(saved: str | None, value: object) -> bool:
    if saved is None or saved == str(value):
        return saved is not None
    try:
        return float(saved) == float(value)  # "0.01" vs 1e-2, "1" vs 1.0
    except (TypeError, ValueError):
        return False


def _check_experiment(run: Run, experiment_name: str | None) -> None:
    if not experiment_name:
        return
    actual = running_runs.experiment_name(run.info.experiment_id)
    if actual != experiment_name:
        raise ConfigError(f"run {run.info.run_id} belongs to experiment {actual!r}, not {experiment_name!r}; "
                          "drop --experiment-name to resume it")


def _check_resumable(run: Run, cfg: TrainConfig) -> None:
    run_id, status = run.info.run_id, run.info.status
    done = int(run.data.tags.get(names.TAG_EPOCHS) or run.data.params.get("epochs", 0))
    if status == "FINISHED" and cfg.recipe.epochs <= done:
        raise ConfigError(f"run {run_id} already FINISHED all {done} epochs; nothing to resume "
                          f"(pass --epochs above {done} to train it further)")
    alive, _ = running_runs.process_state(run.data.tags) if status == "RUNNING" else (False, False)
    if alive:
        raise ConfigError(f"run {run_id} is still being trained by process {run.data.tags.get(names.TAG_PID)} "
                          "on this host; wait for it or stop it before resuming")


def stale_notice(cfg: TrainConfig, experiment_id: str) -> str | None:
    """A one-line hint when the experiment holds a killed RUNNING train run with cfg's params."""
    params = {k: runs.param_str(v) for k, v in cfg.params().items()}

    def same_settings(logged: dict[str, str]) -> bool:
        own = {k: v for k, v in logged.items() if not k.startswith(names.CLAIM_PARAM)}
        return own.keys() == params.keys() and all(runs.same_param(own[k], v) for k, v in params.items())

    try:
        stale = [r for r in running_runs.running_train_runs(experiment_id)
                 if same_settings(r.params) and (r.gone_here or r.is_stale(runs.STALE_AFTER_S))]
    except OfexpError:
        return None  # only a hint; the run itself reports a server that does not answer
    if not stale:
        return None
    more = f" ({len(stale) - 1} more: ofexp runs --stale)" if len(stale) > 1 else ""
    return (f"notice: run {stale[0].run_id} with these settings was interrupted at epoch {stale[0].last_epoch}; "
            f"continue it with `{stale[0].resume_command}`{more}")
