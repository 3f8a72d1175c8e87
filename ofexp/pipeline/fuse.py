"""The fuse step: fetch parents by run ID, fuse them, log one run per method."""
from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ofexp import tracking
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.fusion import geometric_fuse, naive_fuse, recompute_batchnorm_stats
from ofexp.models import ModelSpec
from ofexp.training import evaluate, resolve_device

METHODS = ("naive", "geometric")


@dataclass(frozen=True)
class FuseConfig:
    parents: tuple[str, ...]
    methods: tuple[str, ...] = METHODS
    fusion_weights: tuple[float, ...] | None = None
    target: int = -1
    solver: str = "exact"
    reg: float = 0.01
    # Activations align narrow, briefly trained nets far better than weights (README, "Fusion quality").
    alignment: str = "activations"
    activation_samples: int = 256  # training inputs whose activations drive alignment="activations"
    recompute_bn: bool = True
    device: str = "auto"

    def __post_init__(self) -> None:
        if len(self.parents) < 2:
            raise ConfigError(f"fusion needs at least 2 parent runs, got {len(self.parents)}; pass --parents ID,ID")
        if len(set(self.parents)) != len(self.parents):
            raise ConfigError("--parents lists the same run twice; pass distinct train runs")
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown or not self.methods:
            raise ConfigError(f"unknown fusion method {','.join(unknown) or '(none)'}; use naive, geometric or both")
        if self.activation_samples < 2:
            raise ConfigError(f"--activation-samples must be ≥ 2, got {self.activation_samples}")
        if self.fusion_weights is not None and len(self.fusion_weights) != len(self.parents):
            raise ConfigError(f"--fusion-weights has {len(self.fusion_weights)} values for {len(self.parents)} parents; give one per parent")

    def params(self, method: str) -> dict[str, object]:
        common = {"method": method, "parents": ",".join(self.parents), "device": self.device,
                  "fusion_weights": ",".join(map(str, self.fusion_weights)) if self.fusion_weights else "equal"}
        if method == "naive":
            return common
        options = {**common, "alignment": self.alignment, "solver": self.solver, "reg": self.reg,
                   "target": self.target, "recompute_bn": self.recompute_bn}
        if self.alignment == "activations":
            options["activation_samples"] = self.activation_samples
        return options


@dataclass
class _Parents:
    models: list[torch.nn.Module]
    specs: list[ModelSpec]
    data: DataConfig
    accuracies: list[float | None]


def run_fuse(cfg: FuseConfig, splits: DataSplits | None = None) -> dict[str, str]:
    """Fuse the parent runs with each method; return {method: fuse run ID}."""
    device = resolve_device(cfg.device)
    parents = _load_parents(cfg.parents)
    splits = splits if splits is not None else load_dataset(parents.data)
    return {method: _fuse_one(cfg, method, parents, splits, device) for method in cfg.methods}


def _load_parents(run_ids: tuple[str, ...]) -> _Parents:
    models, specs, datas, accs = [], [], [], []
    for run_id in run_ids:
        loaded = tracking.fetch_model_run(run_id)
        models.append(loaded.model), specs.append(loaded.spec), datas.append(loaded.data)
        accs.append(loaded.run.data.metrics.get("test_accuracy"))
    for run_id, data in zip(run_ids[1:], datas[1:]):
        if _data_key(data) != _data_key(datas[0]):
            raise IncompatibleModelsError(
                f"parents {run_ids[0]} and {run_id} were trained on different data "
                f"({_data_key(datas[0])} vs {_data_key(data)}); fuse runs trained on the same dataset and split"
            )
    return _Parents(models, specs, datas[0], accs)


def _data_key(cfg: DataConfig) -> tuple:
    return (cfg.name, cfg.image_size, cfg.split_seed, cfg.val_fraction)


def _fuse_one(cfg: FuseConfig, method: str, parents: _Parents, splits: DataSplits, device: torch.device) -> str:
    target_spec = parents.specs[cfg.target]
    tags = {tracking.TAG_PARENTS: ",".join(cfg.parents),
            **{f"ofexp.parent_{i}": rid for i, rid in enumerate(cfg.parents, start=1)}}
    name = f"fuse {method} {target_spec.arch} {parents.data.name}"
    with tracking.stage_run("fuse", run_name=name, params=cfg.params(method), tags=tags) as run:
        start = time.perf_counter()
        if method == "naive":
            fused, plans, costs = naive_fuse(parents.models, weights=cfg.fusion_weights), {}, {}
        else:
            result = geometric_fuse(
                parents.models, weights=cfg.fusion_weights, target=cfg.target, solver=cfg.solver,
                reg=cfg.reg, alignment=cfg.alignment, inputs=activation_inputs(splits, cfg.activation_samples),
            )
            fused, plans, costs = result.model, result.plans, result.costs
        seconds = time.perf_counter() - start
        if cfg.recompute_bn and fused.spec.batchnorm:
            recompute_batchnorm_stats(fused, splits.train_x)
        test = evaluate(fused, splits.test_x, splits.test_y, device=device)
        tracking.log_spec(fused.spec, parents.data)
        tracking.log_state_dict(fused.state_dict(), "weights/fused.pt")
        if plans:
            tracking.log_tensors(_plans_by_parent(plans, len(cfg.parents), cfg.target), "alignment/plans.pt")
        tracking.log_metrics({
            "test_accuracy": test["accuracy"], "test_loss": test["loss"], "fusion_seconds": seconds,
            **{f"ot_cost/{group}": cost for group, cost in costs.items()},
        })
        tracking.set_description(_describe(cfg, method, parents, test["accuracy"]))
        return run.info.run_id


def activation_inputs(splits: DataSplits, n: int) -> torch.Tensor:
    """A fixed sample (seed 0) of n training inputs, the same for every fusion of this data."""
    generator = torch.Generator().manual_seed(0)
    index = torch.randperm(len(splits.train_x), generator=generator)[:n]
    return splits.train_x[index]  # [n, C, H, W]


def _plans_by_parent(plans: dict[str, list[torch.Tensor]], k: int, target: int) -> dict[str, torch.Tensor]:
    """Name each transport map '<group>/parent_<i>' (1-based, as in the tags)."""
    others = [i for i in range(k) if i != target % k]
    return {f"{group}/parent_{i + 1}": plan for group, maps in plans.items() for i, plan in zip(others, maps)}


def _describe(cfg: FuseConfig, method: str, parents: _Parents, accuracy: float) -> str:
    lines = [f"{method.capitalize()} fusion of {len(cfg.parents)} train runs:"]
    for i, (rid, acc) in enumerate(zip(cfg.parents, parents.accuracies), start=1):
        acc_txt = f"test accuracy {acc:.4f}" if acc is not None else "no test accuracy logged"
        lines.append(f"- parent {i}: run {rid} ({acc_txt})")
    if method == "geometric":
        lines.append(f"Options: alignment={cfg.alignment}, solver={cfg.solver}, target=parent {cfg.target % len(cfg.parents) + 1}.")
    lines.append(f"Fused test accuracy: {accuracy:.4f}.")
    return "\n".join(lines)
