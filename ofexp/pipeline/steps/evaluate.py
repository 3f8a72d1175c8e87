"""The evaluate step: measure one train or fuse run's model, by run ID."""
from __future__ import annotations

import ctypes
import gc
import math
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch
from tqdm import tqdm

from ofexp import tracking
from ofexp.data import DataSplits, load_dataset
from ofexp.data.model_input import ModelInput
from ofexp.errors import ConfigError
from ofexp.metrics import (MEASURES, Measure, MeasureContext, SearchResult,
                           resolve_measures)
from ofexp.metrics.context import search_budget
from ofexp.pipeline.steps.phases import Phases
from ofexp.pipeline.steps.options import EvaluateOptions
from ofexp.pipeline.study.report import RESULTS_COLUMNS, report_files
from ofexp.tracking.artifacts import (ALLOW_UNFINISHED_OPTION, ENSEMBLE_STAGE, describe_unfinished,
                                      unfinished_inputs, unfinished_tags)
from ofexp.tracking.names import BUDGET_PARAM_PREFIX, TAG_ACCURACY_METRIC, TAG_WARNINGS, detail_tag
from ofexp.tracking.model_uris import is_model_uri
from ofexp.tracking.runs import warning_tag

TAG_MODEL_URI = "ofexp.model_uri"  # the model URI an evaluate run measured (TAG_MODEL_RUN for run IDs)
from ofexp.training import resolve_device
from ofexp.training.speed import float32_kernels

ENSEMBLE_SKIP_NOTE = ("skipped: an ensemble run has no single parameter vector; "
                      "parameter-space measures apply to train and fuse runs")


@dataclass(frozen=True)
class EvalConfig(EvaluateOptions):
    """One `ofexp evaluate`: the evaluate options (EvaluateOptions, defined there once: measures,
    preset, sharpness_worst, accuracy_metric, seed) and which model run to measure, where."""

    model_run: str = ""  # a run ID, or an MLflow model URI (runs:/…, models:/…)
    device: str = "auto"
    label: str | None = None  # the results.csv "Model" cell; defaults to the model run's name
    run_name: str | None = None  # defaults to "evaluate <label>"
    progress: bool = True
    # A model run that is not FINISHED (RUNNING, FAILED, KILLED) is refused unless this is set; the
    # evaluate run is then tagged ofexp.unfinished_inputs. Not a param: it changes no measure.
    allow_unfinished: bool = False
    model_input: ModelInput | None = None  # a model by URI: the input it takes (pipeline.foreign)

    def __post_init__(self) -> None:
        if not self.model_run:
            raise ConfigError("no model run to evaluate; pass --model-run RUN_ID (a train, fuse or ensemble run)")
        if self.model_input is not None and not is_model_uri(self.model_run):
            raise ConfigError("--dataset, --image-size, --channels and --pixels name the input of a model given by URI; "
                              "ofexp runs carry their data: drop those options")
        self.check()


def evaluate_params(cfg: EvalConfig) -> dict[str, object]:
    """The params of the evaluate run `cfg` makes: what decides its values, and nothing else.

    The random draws' seed counts only when a measure draws (every one outside prediction
    space); the preset and its budget only when a σ search runs; the worst case only when
    a sharpness search does. A prediction-only run logs neither, and a study's cache
    matches on exactly these.
    """
    names = resolve_measures(cfg.measures)
    searches = {MEASURES[n].search for n in names} - {None}
    params: dict[str, object] = {"model_run": cfg.model_run, "measures": ",".join(names), "device": cfg.device,
                                 "accuracy_metric": cfg.accuracy_metric,
                                 **(cfg.model_input.to_params() if cfg.model_input else {})}
    if any(MEASURES[n].space != "prediction" for n in names):
        params["seed"] = cfg.seed
    if searches:
        params.update({"preset": cfg.preset, **{f"{BUDGET_PARAM_PREFIX}{k}": v for k, v in asdict(search_budget(cfg.preset)).items()}})
    if searches & {"sharpness", "sharpness_mag"}:
        params["sharpness_worst"] = cfg.sharpness_worst
    return params


def run_evaluate(cfg: EvalConfig, splits: DataSplits | None = None) -> str:
    """Compute the selected measures of a model run in a new 'evaluate' run; return its ID.

    Metrics are named by space (e.g. 'prediction/accuracy'), each with its wall
    time under 'time/<measure>' (a σ search's time counts to the first measure
    that needs it). Every σ search that ran logs its diagnostics under
    'search/<search>/{sigma,deviation,converged,steps}' (converged is 1 or 0). The
    trace logs its precision, 'hessian/trace_{stderr,samples}', and its method in the
    tag 'ofexp.hessian_trace_method' ("exact" or "hutchinson").

    A measure does not abort the others when it fails. The run gets the tag
    'ofexp.warning.<measure>' (one line: why) when the measure raised, gave a
    non-finite value, came from a σ search that did not converge, or issued a
    RuntimeWarning (e.g. an eigensolver that did not converge); 'ofexp.warnings' lists
    those measures. A non-converged search's measures still log their values; a
    measure that raised or was not finite logs no metric and gets no results.csv
    row, so results.csv (Model, Space, Metric, Value) has exactly the logged
    values and no blank or non-numeric cells.
    """
    names = resolve_measures(cfg.measures)
    budget = search_budget(cfg.preset)
    device = resolve_device(cfg.device)
    params = evaluate_params(cfg)
    if is_model_uri(cfg.model_run):
        measured = _measured_by_uri(cfg, splits)
    else:
        measured = _measured_run(cfg, splits)
    label = cfg.label or measured.name
    ctx = MeasureContext(measured.model.to(device), measured.splits, device, reference_weights=measured.reference,
                         budget=budget, sharpness_worst=cfg.sharpness_worst, seed=cfg.seed)
    description = f"Measures {', '.join(names)} of {measured.link}, '{cfg.preset}' search budget."
    tags = {TAG_ACCURACY_METRIC: cfg.accuracy_metric, **measured.tags, **unfinished_tags(measured.unfinished)}
    if measured.unfinished:
        description += f" {describe_unfinished(measured.unfinished)}"
        tqdm.write(f"warning: {describe_unfinished(measured.unfinished)}", file=sys.stderr)
    no_parameter_vector, model_id = measured.no_parameter_vector, measured.model_id
    # The label names the model in a study (parent_1_seed2), where several models share a run name.
    with tracking.stage_run("evaluate", run_name=cfg.run_name or f"evaluate {label}", params=params,
                            tags=tags, description=description) as run, \
            Phases(f"evaluate {label}", list(names), enabled=cfg.progress) as phases:
        rows, warned, logged_searches = [], [], set()
        for name in names:
            phases.enter(name)
            measure = MEASURES[name]
            if no_parameter_vector and measure.csv_space == "parameter_space":
                tracking.set_tags(dict([warning_tag(name, ENSEMBLE_SKIP_NOTE)]))
                warned.append(name)
                continue
            with float32_kernels():  # the measures in IEEE float32 on CUDA too, not cuDNN's default TF32
                value, problems, elapsed = _measure_one(measure, ctx, cfg.progress)
            release_freed_memory()
            metrics = {f"time/{name}": elapsed}
            if measure.search is not None and measure.search not in logged_searches:
                result = ctx.completed_searches().get(measure.search)
                if result is not None:
                    metrics.update(search_metrics(measure.search, result))
                    logged_searches.add(measure.search)
            if value is not None:
                metrics[measure.metric_key] = value
                rows.append((label, measure.csv_space, name, value))
                for key, detail in (measure.details(ctx) if measure.details else {}).items():
                    if isinstance(detail, str):
                        tracking.set_tags({detail_tag(key): detail})
                    else:
                        metrics[key] = detail
            tracking.log_metrics(metrics, model_id=model_id)
            if problems:
                reason = "; ".join(problems)
                tracking.set_tags(dict([warning_tag(name, reason)]))
                warned.append(name)
                tqdm.write(f"warning: {name}: {reason}", file=sys.stderr)
        if warned:
            tracking.set_tags({TAG_WARNINGS: ",".join(warned)})
        for name, text in report_files(results_frame(rows), cfg.accuracy_metric).items():
            tracking.log_text(text, name)
        return run.info.run_id


@dataclass
class _Measured:
    """The network an evaluate run measures, with its data and what identifies it."""

    model: torch.nn.Module
    splits: DataSplits
    name: str  # the run's name or the model URI
    link: str  # for the description
    tags: dict[str, str]
    model_id: str | None  # the logged model the metrics are attached to
    reference: object  # θ₀ on demand (a callable), or None where there is no lineage to find it
    no_parameter_vector: bool = False  # an ensemble: no single θ, so no parameter-space measure
    unfinished: dict[str, str] = field(default_factory=dict)


def _measured_run(cfg: EvalConfig, splits: DataSplits | None) -> _Measured:
    # refuses, before any run exists: unfinished runs (unless allowed), weights that do not fit
    # their spec.json, NaN or infinite weights
    loaded = tracking.fetch_model_run(cfg.model_run, ensembles=True, allow_unfinished=cfg.allow_unfinished,
                                      accept_option=ALLOW_UNFINISHED_OPTION)
    run = loaded.run
    name = run.info.run_name or cfg.model_run
    parameter_keys = {key for key, _ in loaded.model.named_parameters()}
    return _Measured(
        loaded.model, splits if splits is not None else load_dataset(loaded.data), name,
        f"[run {cfg.model_run}](#/runs/{cfg.model_run}) ({name})", {tracking.TAG_MODEL_RUN: cfg.model_run},
        run.data.tags.get(tracking.TAG_LOGGED_MODEL),
        lambda: reference_weights(cfg.model_run, parameter_keys),
        # An ensemble has no single parameter vector θ: parameter-space measures are skipped, with a note.
        no_parameter_vector=loaded.stage == ENSEMBLE_STAGE, unfinished=unfinished_inputs([loaded]))


def _measured_by_uri(cfg: EvalConfig, splits: DataSplits | None) -> _Measured:
    """A PyTorch model by MLflow URI: no lineage, so measures that need θ₀ get a warning tag."""
    from ofexp.pipeline.steps.foreign import load_foreign_model

    logged, _, splits = load_foreign_model(cfg.model_run, cfg.model_input, splits)
    return _Measured(logged.model, splits, cfg.model_run, f"`{cfg.model_run}`", {TAG_MODEL_URI: cfg.model_run},
                     logged.model_id, None)


def release_freed_memory() -> None:
    """Hand the heap's free pages back to the OS between measures (glibc's malloc_trim).

    Each measure frees what it allocated, but glibc keeps freed heap memory for reuse,
    and the next measure's different block sizes grow the heap further: measured on a
    full-width VGG11, no measure alone peaked above 1.86 GiB, all of them in one run at
    2.2-2.3 GiB. A no-op where there is no glibc.
    """
    gc.collect()
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):
        pass


def search_metrics(search: str, result: SearchResult) -> dict[str, float]:
    """A σ search's diagnostics as metrics: search/<search>/{sigma,deviation,converged,steps}."""
    return {f"search/{search}/sigma": result.sigma, f"search/{search}/deviation": result.deviation,
            f"search/{search}/converged": float(result.converged), f"search/{search}/steps": float(result.steps)}


BAR_DELAY_S = 2.0


def _measure_one(measure: Measure, ctx: MeasureContext, progress: bool) -> tuple[float | None, list[str], float]:
    """(value or None, problems, seconds) of one measure, with its progress bar on stderr.

    A search-backed measure's bar counts the search's steps (up to its depth) the
    first time the search runs; others count one step.
    """
    searching = measure.search is not None and measure.search not in ctx.completed_searches()
    total = ctx.search_depth(measure.search) if searching else 1
    # delay: a measure done within BAR_DELAY_S leaves no bar; a study evaluates a dozen of them per model
    bar = tqdm(total=total, desc=f"{measure.metric_key}", unit="step", file=sys.stderr, disable=not progress,
               leave=True, dynamic_ncols=True, delay=BAR_DELAY_S)

    def on_step(search: str, step: int, sigma: float, deviation: float) -> None:
        bar.update(1)
        bar.set_postfix({"σ": f"{sigma:.4g}", "d": f"{deviation:.3g}"}, refresh=True)

    ctx.on_search_step = on_step
    problems: list[str] = []
    value: float | None = None
    start = time.perf_counter()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            value = float(measure.compute(ctx))
        except Exception as exc:  # noqa: BLE001 -- one measure's failure must not abort the others
            text = str(exc).strip().splitlines()
            problems.append(f"not computed: {type(exc).__name__}: {text[0] if text else 'no message'}")
        finally:
            ctx.on_search_step = None
    elapsed = time.perf_counter() - start
    if value is not None and not math.isfinite(value):
        problems.append(f"not logged: the value is {value} (not finite)")
        value = None
    search_messages: list[str] = []
    if measure.search is not None:
        result = ctx.completed_searches().get(measure.search)
        search_messages = ctx.search_warnings.get(measure.search, [])
        if result is not None and not result.converged:
            problems.append(search_messages[0] if search_messages else
                            f"σ search '{measure.search}' did not converge (deviation {result.deviation:.4g} "
                            f"at σ={result.sigma:.6g}, stopped by {result.stop_reason} after {result.steps} steps)")
    # Numerical trouble (non-convergence, overflow) comes as RuntimeWarning; others pass through.
    for w in caught:
        if not issubclass(w.category, RuntimeWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        elif str(w.message) not in search_messages and str(w.message) not in problems:
            problems.append(str(w.message))
    if bar.total != bar.n:  # a search that stopped before its depth, or a one-step measure
        bar.total = max(bar.n, 1)
        bar.n = bar.total
    if value is not None:
        bar.set_postfix({"value": f"{value:.6g}"}, refresh=False)
    elif problems:
        bar.set_postfix({"value": "-"}, refresh=False)
    bar.close()
    return value, problems, elapsed


def results_frame(rows: list[tuple[str, str, str, float]]) -> pd.DataFrame:
    """Rows in the report's results.csv format: Model, Space, Metric, Value."""
    return pd.DataFrame(rows, columns=RESULTS_COLUMNS)


def reference_weights(model_run_id: str, parameter_keys: set[str] | None = None) -> dict[str, torch.Tensor]:
    """θ₀ of docs/design.md §5, found through lineage.

    For a train run: its own initial weights. For a fuse run: the final weights
    of the parent farthest (in squared ℓ2 distance over the parameters θ, i.e.
    `parameter_keys`; all float tensors when None) from the fused weights. A tie
    (within 1e-9 relative, e.g. naive fusion of two parents with equal weights,
    which lies exactly halfway) goes to the first parent in the fuse run's
    parent list, so rounding does not decide it.
    """
    run = tracking.get_run_checked(model_run_id, tracking.MODEL_STAGES)
    if run.data.tags[tracking.TAG_STAGE] == "train":
        return tracking.load_weights_from_run(model_run_id, "initial")
    fused = tracking.load_weights_from_run(model_run_id)
    parent_ids = tracking.parent_run_ids(run)
    best, best_distance = None, -1.0
    for parent_id in parent_ids:
        parent = tracking.load_weights_from_run(parent_id)
        distance = squared_distance(fused, parent, parameter_keys)
        if distance > best_distance and not math.isclose(distance, best_distance, rel_tol=1e-9):
            best, best_distance = parent, distance
    return best


def squared_distance(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], keys: set[str] | None = None) -> float:
    """Σ ‖a[k] − b[k]‖² over `keys` (default: every float tensor).

    θ is the parameters: batch-norm running statistics, which fusion recomputes,
    must not decide which parent is farther. A tensor of another shape (a parent
    of another width) cannot be compared entry by entry and is skipped.
    """
    total = 0.0
    for key, value in a.items():
        if keys is not None and key not in keys:
            continue
        other = b.get(key)
        if other is not None and value.is_floating_point() and other.shape == value.shape:
            total += float((value - other).pow(2).sum())
    return total
