"""The train step: one MLflow run that trains one network and logs everything needed downstream."""
from __future__ import annotations

from dataclasses import dataclass, field

from ofexp import tracking
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.models import ModelSpec, build_model, init_weights
from ofexp.training import Recipe, evaluate, fit, make_recipe, resolve_device, seed_everything


@dataclass(frozen=True)
class TrainConfig:
    model: str = "mlp"
    data: DataConfig = field(default_factory=DataConfig)
    width: float = 1.0
    bias: bool = False
    batchnorm: bool = False
    recipe: Recipe = field(default_factory=make_recipe)
    seed: int = 0
    device: str = "auto"
    log_model: bool = True
    run_name: str | None = None
    progress: bool = True

    def params(self) -> dict[str, object]:
        """Every setting that determines the trained weights, under the CLI options' names."""
        return {
            "model": self.model, "width": self.width, "bias": self.bias, "batchnorm": self.batchnorm,
            **self.data.to_params(), **self.recipe.to_params(), "seed": self.seed, "device": self.device,
        }


def model_spec_for(cfg: TrainConfig, splits: DataSplits) -> ModelSpec:
    """The network's spec: architecture options from the config, shapes from the data."""
    info = splits.info
    return ModelSpec(
        arch=cfg.model, num_classes=info.num_classes, in_channels=info.in_channels,
        input_size=info.input_size, width=cfg.width, bias=cfg.bias, batchnorm=cfg.batchnorm,
    )


def run_train(cfg: TrainConfig, splits: DataSplits | None = None) -> str:
    """Train one network as an MLflow run of stage 'train'; return the run ID.

    Data, device and spec are checked before the run starts, so bad input
    leaves no run behind. Artifacts: weights/{initial,best,final}.pt, the
    per-epoch checkpoint/last.pt, spec.json and the MLflow model 'model'.
    """
    device = resolve_device(cfg.device)
    splits = splits if splits is not None else load_dataset(cfg.data)
    spec = model_spec_for(cfg, splits)
    seed_everything(cfg.seed)
    model = build_model(spec)
    init_weights(model, cfg.recipe.init)
    initial = {k: v.detach().clone() for k, v in model.state_dict().items()}
    name = cfg.run_name or f"train {cfg.model} {cfg.data.name} seed{cfg.seed}"
    description = (
        f"Trains {cfg.model} (width {cfg.width}, bias {cfg.bias}, batch-norm {cfg.batchnorm}) on "
        f"{cfg.data.name} with the '{cfg.recipe.name}' recipe, seed {cfg.seed}."
    )
    with tracking.stage_run("train", run_name=name, params=cfg.params(), description=description) as run:
        _log_inputs(splits)
        tracking.log_spec(spec, cfg.data)
        tracking.log_state_dict(initial, "weights/initial.pt")

        def on_epoch_end(epoch: int, metrics: dict, checkpoint: dict) -> None:
            tracking.log_metrics(metrics, step=epoch)
            tracking.log_tensors(checkpoint, "checkpoint/last.pt")

        model.to(device)
        result = fit(model, splits, cfg.recipe, device=device, seed=cfg.seed, on_epoch_end=on_epoch_end, progress=cfg.progress)
        tracking.log_state_dict(result.best_state, "weights/best.pt")
        tracking.log_state_dict(model.state_dict(), "weights/final.pt")
        test = evaluate(model, splits.test_x, splits.test_y, device=device)
        tracking.log_metrics({
            "test_accuracy": test["accuracy"], "test_loss": test["loss"],
            "best_epoch": result.best_epoch, "best_val_loss": result.best_val_loss,
        })
        if cfg.log_model:
            model_id = tracking.log_mlflow_model(model.cpu(), splits.test_x[:2])
            tracking.set_tags({tracking.TAG_LOGGED_MODEL: model_id})
        tracking.set_description(f"{description} Test accuracy {test['accuracy']:.4f}.")
        return run.info.run_id


def _log_inputs(splits: DataSplits) -> None:
    info = splits.info
    for context, x, y in (("training", splits.train_x, splits.train_y),
                          ("validation", splits.val_x, splits.val_y),
                          ("test", splits.test_x, splits.test_y)):
        tracking.log_dataset_input(f"{info.name}-{context}", info.source, x, y, context)
