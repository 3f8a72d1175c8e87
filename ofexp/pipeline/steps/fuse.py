"""The fuse step: fetch parents by run ID, fuse them, log one run per method."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm import tqdm

from ofexp import tracking
from ofexp.tracking.study_runs import log_figure
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.fusion import alignment_diagnostics, recompute_batchnorm_stats, repair_statistics
from ofexp.fusion.naive import parent_specs
from ofexp.fusion.interpolation import InterpolationCurve, fusion_curves, plot_curves
from ofexp.metrics import ACCURACY_TO_PARENTS_KEY, test_accuracy_of
from ofexp.data.model_input import ModelInput
from ofexp.models import ModelSpec
from ofexp.models.foreign import has_batchnorm
from ofexp.pipeline.steps.foreign import ForeignParents, load_foreign_parents, split_refs
from ofexp.pipeline.steps.fusion_methods import FUSION_METHODS, METHODS, activation_inputs, fixed_sample
from ofexp.pipeline.steps.options import FusionOptions
from ofexp.pipeline.steps.phases import Phases
from ofexp.pipeline.steps.serving import (check_register_as, check_registration, log_foreign_model, log_served_model,
                                    log_test_metrics, served_input_shape)
from ofexp.tracking.artifacts import (ALLOW_UNFINISHED_OPTION, describe_unfinished,
                                      unfinished_inputs, unfinished_tags)
from ofexp.tracking.integrity import check_finite
from ofexp.tracking.names import parent_tag
from ofexp.training import evaluate, resolve_device
from ofexp.training.speed import float32_kernels

@dataclass(frozen=True)
class FuseConfig(FusionOptions):
    """One `ofexp fuse`: the fusion options (FusionOptions, defined there once) and what to fuse."""

    parents: tuple[str, ...] = ()
    device: str = "auto"
    # The whole run name (a study passes "s3 geometric fuse"); by default
    # "fuse <method> <arch> <data set>". Give it with one method only.
    run_name: str | None = None
    log_model: bool = True  # also log the fused network as an MLflow model (raw images in)
    register_as: str | None = None  # a Model Registry name for it; one method only
    # Parents that are not FINISHED (RUNNING, FAILED, KILLED) are refused unless this is set; the
    # fuse runs made from them are then tagged ofexp.unfinished_inputs. Not a param: it changes
    # nothing the fusion computes, only which runs it accepts.
    allow_unfinished: bool = False
    # Parents given as model URIs: the input they take (None: what an ofexp fuse run recorded).
    # ofexp's own runs carry their data in spec.json.
    model_input: ModelInput | None = None

    def __post_init__(self) -> None:
        if len(self.parents) < 2:
            raise ConfigError(f"fusion needs at least 2 parent runs, got {len(self.parents)}; pass --parents ID,ID")
        if len(set(self.parents)) != len(self.parents):
            raise ConfigError("--parents lists the same run twice; pass distinct train runs")
        if self.model_input is not None and not self.by_uri:
            raise ConfigError("--dataset, --image-size, --channels and --pixels name the input of models given by URI; "
                              "ofexp train runs carry their data: drop those options")
        self.check(len(self.parents))
        check_register_as(self.register_as, self.log_model)
        if self.register_as and len(self.methods) > 1:
            raise ConfigError(f"--register-as registers one model: pass one --method ({' or '.join(METHODS)}) with it")

    @property
    def by_uri(self) -> bool:
        """Whether the parents are MLflow model URIs rather than ofexp run IDs."""
        return split_refs(self.parents)

    def params(self, method: str) -> dict[str, object]:
        """The params of `method`'s fuse run: what to fuse, and the options the method reads (its registry entry)."""
        return {"method": method, "parents": ",".join(self.parents), "device": self.device,
                **FUSION_METHODS[method].params(self), **(self.model_input.to_params() if self.model_input else {})}


@dataclass
class _Parents:
    models: list[torch.nn.Module]
    specs: list[ModelSpec | None]
    data: DataConfig
    accuracies: list[float | None]
    unfinished: dict[str, str]  # {run ID: status} of parents that were not FINISHED (--allow-unfinished)
    foreign: ForeignParents | None = None  # parents given by model URI

    @property
    def arch(self) -> str:
        return self.foreign.label if self.foreign else self.specs[0].arch


def run_fuse(cfg: FuseConfig, splits: DataSplits | None = None) -> dict[str, str]:
    """Fuse the parent runs (or models, by URI) with each method; return {method: fuse run ID}."""
    device = resolve_device(cfg.device)
    if cfg.by_uri:
        foreign = load_foreign_parents(cfg.parents, cfg.model_input, trace=_aligns(cfg, any), splits=splits)
        parents = _Parents(foreign.models, [None] * len(cfg.parents), foreign.model_input.data,
                           list(foreign.accuracies), {}, foreign)
        splits = foreign.splits
    else:
        parents = _load_parents(cfg.parents, cfg.allow_unfinished)
        # Refuse incompatible parents before any run exists, rather than leave FAILED runs behind.
        parent_specs(parents.models, allow_width=_aligns(cfg, all))  # averaging alone needs equal widths
        splits = splits if splits is not None else load_dataset(parents.data)
    check_registration(cfg.register_as, parents.foreign.example.shape[1:] if parents.foreign
                       else served_input_shape(splits))
    return {method: _fuse_one(cfg, method, parents, splits, device) for method in cfg.methods}


def _aligns(cfg: FuseConfig, quantifier: Callable) -> bool:
    """Whether any (or all) of cfg's methods align neurons: they need the traced structure, and
    take parents of different widths."""
    return quantifier(FUSION_METHODS[method].aligns for method in cfg.methods)


def _load_parents(run_ids: tuple[str, ...], allow_unfinished: bool = False) -> _Parents:
    """The parents' networks, refusing (before any run exists) runs that are not FINISHED unless
    `allow_unfinished`, weights that do not fit their spec, non-finite weights and mixed data."""
    models, specs, datas, accs, loaded_runs = [], [], [], [], []
    for run_id in run_ids:
        loaded = tracking.fetch_model_run(run_id, allow_unfinished=allow_unfinished,
                                          accept_option=ALLOW_UNFINISHED_OPTION)
        models.append(loaded.model), specs.append(loaded.spec), datas.append(loaded.data)
        accs.append(test_accuracy_of(loaded.run.data.metrics))
        loaded_runs.append(loaded)
    for run_id, data in zip(run_ids[1:], datas[1:]):
        if data.split_key != datas[0].split_key:
            raise IncompatibleModelsError(
                f"parents {run_ids[0]} and {run_id} were trained on different data "
                f"({datas[0].split_key} vs {data.split_key}); fuse runs trained on the same dataset and split"
            )
    unfinished = unfinished_inputs(loaded_runs)
    if unfinished:
        tqdm.write(f"warning: {describe_unfinished(unfinished)}", file=sys.stderr)
    return _Parents(models, specs, datas[0], accs, unfinished)



def _fuse_one(cfg: FuseConfig, method: str, parents: _Parents, splits: DataSplits, device: torch.device) -> str:
    tags = {tracking.TAG_PARENTS: ",".join(cfg.parents),
            **{parent_tag(i): rid for i, rid in enumerate(cfg.parents, start=1)},
            **unfinished_tags(parents.unfinished)}
    name = cfg.run_name or " ".join(("fuse", method, parents.arch, parents.data.name))
    structure = parents.foreign.alignment if parents.foreign else None  # a traced model's layer groups
    # under `mlflow run`, two methods make two runs: both children of the one `mlflow run` made
    # (a method that aligns nothing draws no curves: its line skips that phase)
    phase_names = ["fusing", "testing", *(["interpolation curves"] if cfg.interpolation else []), "logging"]
    with tracking.stage_run("fuse", run_name=name, params=cfg.params(method), tags=tags,
                            adopt_launcher=len(cfg.methods) == 1) as run, Phases(name, phase_names) as phases:
        start = time.perf_counter()
        phases.enter(phase_names[0])
        made = FUSION_METHODS[method].fuse(cfg, parents.models, splits, structure)
        seconds = time.perf_counter() - start
        fused, result, inputs = made.model, made.alignment, made.inputs
        plans, costs = (result.plans, result.costs) if result is not None else ({}, {})
        if inputs is not None and len(inputs) < cfg.activation_samples:
            tqdm.write(f"warning: --activation-samples {cfg.activation_samples}: the training split has only "
                       f"{len(inputs)} inputs, so all {len(inputs)} are used (metric activation_samples_used "
                       f"of run {run.info.run_id})", file=sys.stderr)
        if cfg.recompute_bn and has_batchnorm(fused):
            recompute_batchnorm_stats(fused, splits.train_x)
        diagnostics = _repair_and_diagnose(cfg, result, parents, inputs) if result is not None else {}
        # finite parents can still fuse into NaN or inf (a degenerate plan, REPAIR dividing by a zero
        # spread): the run fails rather than log a meaningless network as a result
        check_finite(fused.state_dict(), f"the {method} fusion of {', '.join(cfg.parents)}",
                     "check the parents and the fusion options (e.g. --solver exact, without --repair)")
        # fusion (POT), its curves and its logged weights stay on the CPU; --device is where it is tested
        phases.enter("testing")
        with float32_kernels():  # IEEE float32 on CUDA too, as ofexp trains and measures
            test = evaluate(fused.to(device), splits.test_x, splits.test_y, device=device)
        fused.cpu()
        if result and cfg.interpolation:
            phases.enter("interpolation curves")
        curves = _log_interpolation(cfg, parents, result, splits) if result and cfg.interpolation else {}
        # what was used, beside the params that say what was asked (a param is part of the cache key)
        used = {**({"activation_samples_used": len(inputs)} if inputs is not None else {}),
                **({"curve_samples_used": min(cfg.curve_samples, len(splits.test_x))} if curves else {})}
        phases.enter("logging")
        tracking.log_state_dict(fused.state_dict(), "weights/fused.pt")
        model_id = None
        if parents.foreign:
            model_id = log_foreign_model(fused, parents.foreign, cfg)
        else:
            tracking.log_spec(fused.spec, parents.data)
            if cfg.log_model:
                model_id = log_served_model(fused, splits, stage="fuse", parents=cfg.parents,
                                            register_as=cfg.register_as)
        if plans:
            tracking.log_tensors(_plans_by_parent(plans, len(cfg.parents), cfg.target), "alignment/plans.pt")
        log_test_metrics(test, model_id)
        tracking.log_metrics({
            "fusion_seconds": seconds, **_accuracy_to_parents(test["accuracy"], parents.accuracies),
            **{f"ot_cost/{group}": cost for group, cost in costs.items()},
            **({f"group_seconds/{g}": s for g, s in result.group_seconds.items()} if result else {}),
            **{f"{name}/{g}": value for g, values in diagnostics.items() for name, value in values.items()},
            **used,
            **{f"parent_{i}/accuracy": a for i, a in enumerate(parents.accuracies, start=1)
               if parents.foreign and a is not None},
        })
        if diagnostics:
            from ofexp.pipeline import plots  # matplotlib, only for a fuse run that draws its figure

            figure = plots.alignment_figure(diagnostics, f"{name}: test accuracy {test['accuracy']:.4f}")
            log_figure(figure, "plots/alignment.png")
            plots.close(figure)
        tracking.set_description(_describe(cfg, method, parents, test["accuracy"], len(splits.test_x), curves,
                                           diagnostics, used.get("activation_samples_used")))
        return run.info.run_id


def _repair_and_diagnose(cfg: FuseConfig, result, parents: _Parents, inputs: torch.Tensor) -> dict:
    """REPAIR the fused net if asked (after batch-norm statistics: it reads their outputs), then
    measure per group how well neurons matched and how much activations shrank."""
    sources = result.parents
    if cfg.repair:
        repair_statistics(result.model, sources, inputs, cfg.fusion_weights, spec=result.spec)
    return alignment_diagnostics(result.model, sources, inputs, weights=cfg.fusion_weights, target=cfg.target,
                                 spec=result.spec)


def _plans_by_parent(plans: dict[str, list[torch.Tensor]], k: int, target: int) -> dict[str, torch.Tensor]:
    """Name each transport map '<group>/parent_<i>' (1-based, as in the tags)."""
    others = [i for i in range(k) if i != target % k]
    return {f"{group}/parent_{i + 1}": plan for group, maps in plans.items() for i, plan in zip(others, maps)}


def _log_interpolation(cfg: FuseConfig, parents: _Parents, result, splits: DataSplits) -> dict[str, InterpolationCurve]:
    """Log the target parent's three interpolation curves as step metrics (step = α index) and a PNG."""
    k = len(parents.models)
    t = cfg.target % k
    other = next(i for i in range(k) if i != t)  # the first non-target parent
    test = fixed_sample(len(splits.test_x), cfg.curve_samples)
    curves = fusion_curves(parents.models[t], parents.models[other], result.aligned[0], result.model,
                           splits.test_x[test], splits.test_y[test],
                           bn_inputs=activation_inputs(splits, cfg.curve_samples))
    for step in range(len(curves["parent_fused"].alphas)):  # step = α index: α = step / 10
        metrics = {}
        for name, c in curves.items():
            metrics[f"interp/{name}/loss"], metrics[f"interp/{name}/accuracy"] = c.losses[step], c.accuracies[step]
        tracking.log_metrics(metrics, step=step)
    tracking.log_metrics({f"interp/{name}/{what}_barrier": getattr(c, f"{what}_barrier")
                          for name, c in curves.items() for what in ("loss", "accuracy")})
    title = f"target parent {t + 1} to parent {other + 1} (raw, aligned) and to the fused network"
    log_figure(plot_curves(curves, title), "plots/interpolation.png")
    return curves


def _accuracy_to_parents(accuracy: float, parent_accuracies: list[float | None]) -> dict[str, float]:
    """{ACCURACY_TO_PARENTS_KEY: accuracy / the parents' mean}, or {} when a parent's accuracy is unknown."""
    if not parent_accuracies or any(a is None for a in parent_accuracies):
        return {}
    mean = sum(parent_accuracies) / len(parent_accuracies)
    return {ACCURACY_TO_PARENTS_KEY: accuracy / mean} if mean > 0 else {}


def _describe(cfg: FuseConfig, method: str, parents: _Parents, accuracy: float, curve_test_images: int,
              curves: dict[str, InterpolationCurve], diagnostics: dict[str, dict[str, float]],
              activation_samples: int | None = None) -> str:
    k = len(cfg.parents)
    weights = ", ".join(f"{w:g}" for w in cfg.fusion_weights) if cfg.fusion_weights else "equal"
    what = "models" if parents.foreign else "train runs"
    lines = [f"{method.capitalize()} fusion of {k} {what} (fusion weights: {weights}):"]
    for i, (rid, acc) in enumerate(zip(cfg.parents, parents.accuracies), start=1):
        acc_txt = f"test accuracy {acc:.4f}" if acc is not None else "no test accuracy logged"
        if parents.foreign:
            lines.append(f"- parent {i}: `{rid}` ({acc_txt})")
            continue
        width = f", width {parents.specs[i - 1].width:g}" if len({s.width for s in parents.specs}) > 1 else ""
        lines.append(f"- parent {i}: [run {rid}](#/runs/{rid}) ({acc_txt}{width})")  # a link in the MLflow UI
    if method == "geometric":
        used = cfg.activation_samples if activation_samples is None else activation_samples
        reg = f" (reg {cfg.reg:g})" if cfg.solver == "sinkhorn" else ""
        samples = f" on {used} training inputs" if cfg.alignment == "activations" else ""
        lines.append(f"Options: alignment={cfg.alignment}{samples}, solver={cfg.solver}{reg}, "
                     f"target=parent {cfg.target % k + 1}, batch-norm statistics "
                     f"{'recomputed' if cfg.recompute_bn else 'averaged'}"
                     + (f", REPAIR on {used} training inputs." if cfg.repair else "."))
        if used < cfg.activation_samples:
            lines.append(f"--activation-samples {cfg.activation_samples} asked for more training inputs than the "
                         f"{used} there are: all {used} were used (metric activation_samples_used).")
    known = [a for a in parents.accuracies if a is not None]
    versus = f" (parents: {' / '.join(f'{a:.4f}' for a in known)})" if known else ""
    lines.append(f"Fused test accuracy: {accuracy:.4f}{versus}.")
    if parents.unfinished:
        lines.append(describe_unfinished(parents.unfinished))
    if curves:
        lines.append(f"Interpolation curves on {min(cfg.curve_samples, curve_test_images)} test images "
                     f"(--curve-samples {cfg.curve_samples}). Loss barriers: " + ", ".join(f"{n} {c.loss_barrier:.4f}" for n, c in curves.items()) + ".")
    if diagnostics:
        corr = [d["match_correlation"] for d in diagnostics.values()]
        ratio = [d["std_ratio"] for d in diagnostics.values()]
        lines.append(f"Matched neurons correlate {min(corr):.2f}–{max(corr):.2f} across layer groups; the fused "
                     f"activations keep {min(ratio):.2f}–{max(ratio):.2f} of the parents' spread "
                     "(metrics match_correlation/<group>, std_ratio/<group>; --repair restores the spread).")
    return "\n".join(lines)
