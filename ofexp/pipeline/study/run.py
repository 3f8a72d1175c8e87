"""The study: per seed, train two parents, fuse them both ways, evaluate all four.

Every step is a nested child of one 'study' run, and each step gets its inputs by run
ID from the step before. Before a step starts, a FINISHED run that did exactly that
step (same stage, params, upstream run IDs, ofexp version and commit) is looked up on
the server and reused instead (`use_cache`); the study indexes every step it used,
reused or new, in its tags and in `steps.csv`, so its tables can be rebuilt from the
server alone (`ofexp report`). With `jobs` > 1 the seeds run in parallel processes.
"""
from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Callable

import pandas as pd
from tqdm import tqdm

from ofexp import tracking
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.errors import ArtifactError, ConfigError
from ofexp.signals import stop_on_termination_signals
from ofexp.metrics import resolve_measures
from ofexp.models import trust_factory
from ofexp.pipeline import plots
from ofexp.pipeline.steps.ensemble import study_ensemble_step
from ofexp.pipeline.steps.evaluate import EvalConfig, evaluate_params, run_evaluate
from ofexp.pipeline.steps.finetune import study_finetune_step
from ofexp.pipeline.study.progress import StudyProgress, step_kind
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse
from ofexp.pipeline.steps.options import (SEED_MAX, EvaluateOptions, FusionOptions, option_values,
                                   shown_seeds)
from ofexp.pipeline.study.report import (STEP_COLUMNS, STEPS_FILE, StudyTables, build_tables, correlation_metrics,
                                   correlation_notes, kinds_tag, report_files, sort_steps,
                                   summary_metrics)
from ofexp.pipeline.study.plan import KIND_ORDER, Step, parent_seed, seed_steps, study_kinds
from ofexp.pipeline.study.widths import GRANULATED_FILE, check_widths, granulated_metrics, width_label
from ofexp.pipeline.steps.train import TrainConfig, run_train
from ofexp.tracking import cache, names, queries, runs
from ofexp.tracking.artifacts import ENSEMBLE_STAGE
from ofexp.tracking.names import TAG_CACHE, TAG_JOBS
from ofexp.tracking.study_runs import log_figure

if TYPE_CHECKING:
    from mlflow.entities import Run


# Evaluate options a study fixes: every evaluate step draws with seed 0, so that the models
# of one study are measured on the same random draws.
EVALUATE_OPTIONS_THE_STUDY_SETS = ("seed",)


@dataclass(frozen=True)
class StudyConfig:
    """What `ofexp study` does: train parents per seed, fuse them with `fusion`, evaluate every
    model with `evaluation` (the prediction metric named by its accuracy_metric, which the
    correlations use, is always added); `use_cache` reuses finished steps; `jobs` seeds run at once."""

    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (1,)  # or a range: --seeds N, before `ofexp study` accepts its size
    fusion: FusionOptions = field(default_factory=FusionOptions)
    evaluation: EvaluateOptions = field(default_factory=EvaluateOptions)
    use_cache: bool = True
    jobs: int = 1
    finetune_epochs: int = 0  # > 0: add the ensemble and both fusions fine-tuned for this many epochs
    widths: tuple[float, ...] = ()  # two or more: every seed's models at each width (`ofexp.pipeline.study.widths`)

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("--seeds selects no seed; pass a count like 2 or a list like 1,2,5")
        # the one rule for seeds, whether --seeds gave a count (a range: only its ends are read, so
        # a huge count costs nothing before it is refused) or a list
        seeds = (self.seeds[0], self.seeds[-1]) if isinstance(self.seeds, range) else self.seeds
        bad = [s for s in seeds if isinstance(s, bool) or not isinstance(s, int) or not 1 <= s <= STUDY_SEED_MAX]
        if bad:
            raise ConfigError(f"--seeds {shown_seeds(self.seeds)} has seed {bad[0]!r}; seeds are integers from 1 "
                              f"to {STUDY_SEED_MAX} (parent i of seed s trains with torch seed 100·s + i): pass a "
                              "count like 2 or a list like 1,2,5")
        if not isinstance(self.seeds, range) and len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds lists a seed twice ({shown_seeds(self.seeds)}); list each once")
        if self.jobs < 1:
            raise ConfigError(f"--jobs must be ≥ 1, got {self.jobs}")
        if self.finetune_epochs < 0:
            raise ConfigError(f"--finetune-epochs must be ≥ 0 (0 = off), got {self.finetune_epochs}")
        if self.widths:
            check_widths(self.widths, self.train)
        # checked now, for a study's 2 parents, so that bad options are refused before any run exists
        # rather than after the parents trained
        self.fusion.check(parents=2)
        self.evaluation.check()

    @property
    def measure_names(self) -> str:
        """The measures each evaluate run computes, in table order."""
        return ",".join(resolve_measures(f"{self.evaluation.measures},{self.evaluation.accuracy_metric}"))

    @property
    def accuracy_metric(self) -> str:
        return self.evaluation.accuracy_metric

    @property
    def step_evaluation(self) -> EvaluateOptions:
        """The evaluate options of every evaluate step: the study's, with the accuracy metric measured."""
        return replace(self.evaluation, measures=self.measure_names)

    @property
    def run_name(self) -> str:
        """The study run's name, whichever backend runs its steps."""
        widths = f" widths {','.join(map(width_label, self.widths))}" if self.widths else ""
        return f"study {self.train.model} {self.train.data.name}{widths} seeds {','.join(map(str, self.seeds))}"


# The largest study seed whose parents' torch seeds (100·s + 1, 100·s + 2) are seeds train takes.
STUDY_SEED_MAX = (SEED_MAX - 2) // 100
# A study of more steps than this starts only with `--yes` (`ofexp study` prints the size first).
MAX_UNCONFIRMED_STEPS = 1000


@dataclass
class SeedContext:
    """One seed's work in progress: what its steps read and the steps done so far."""

    cfg: StudyConfig
    seed: int
    load: Callable[[], DataSplits]  # the data, loaded once by whichever step needs it first
    experiment_id: str
    model_runs: dict[str, str] = field(default_factory=dict)  # kind -> train or fuse run ID
    steps: list[tuple] = field(default_factory=list)  # STEP_COLUMNS rows
    cache_only: bool = False  # raise NotCached instead of starting a run
    progress: StudyProgress | None = None  # prints each step as it starts
    loading: float = 0.0  # seconds the current step spent loading the data (once per study)

    def data(self) -> DataSplits:
        """The data, loaded when the first step that is not reused needs it."""
        began = time.perf_counter()
        try:
            return self.load()
        finally:
            self.loading += time.perf_counter() - began

    def step(self, kind: str, stage: str, params: dict, tags: dict, start: Callable[[], str]) -> str:
        """Reuse a finished run that did this step, or `start()` a new one; record it; return its ID."""
        found = cache.find_finished_run(self.experiment_id, stage, params, tags) if self.cfg.use_cache else None
        if found is not None and stage in tracking.DEFAULT_WEIGHTS:
            found = _intact_or_none(found, f"{kind} seed {self.seed}")
        if found is None and self.cache_only:
            raise NotCached(f"{kind} seed {self.seed} {stage}")
        began = time.perf_counter()
        if self.progress is not None:
            self.progress.step_started(f"seed {self.seed} {kind} {stage}" + (" (reused)" if found else ""))
        self.loading = 0.0
        run_id = found.info.run_id if found else start()
        if self.progress is not None:
            # the one-off data loading is no part of what a step of this kind costs
            self.progress.step_finished(step_kind(kind, stage), time.perf_counter() - began - self.loading,
                                        found is not None, loading=self.loading)
        self.steps.append((self.seed, kind, stage, run_id, found is not None))
        return run_id


def _intact_or_none(run: Run, step: str) -> Run | None:
    """`run`, or None (the step is redone, with a warning) when its weights were changed after it
    finished: reusing it would chain later steps to weights it never made."""
    try:
        tracking.check_weights_intact(run)
    except ArtifactError as err:
        tqdm.write(f"warning: not reusing run {run.info.run_id} for {step}: {err}", file=sys.stderr)
        return None
    return run


class NotCached(Exception):
    """A step that no finished run did yet (raised in cache-only mode)."""


def _make_model(ctx: SeedContext, step: Step) -> str:
    """Make (or reuse) the model of `step` from its inputs' runs; return its run ID."""
    inputs = tuple(ctx.model_runs[kind] for kind in step.inputs)
    if step.stage == "fuse":
        return _fused(ctx, step, inputs)
    if step.stage == ENSEMBLE_STAGE:
        return study_ensemble_step(ctx, step, inputs)
    if step.inputs:  # a train step that starts from another model's weights
        return study_finetune_step(ctx, step, inputs[0])
    pcfg = step.config
    tags = {names.TAG_LOG_MODEL: "true"} if pcfg.log_model else {}
    return ctx.step(step.kind, "train", pcfg.params(), tags, lambda: run_train(pcfg, ctx.data()))


def _fused(ctx: SeedContext, step: Step, parents: tuple[str, ...]) -> str:
    fcfg = FuseConfig(**option_values(step.config), parents=parents, device=ctx.cfg.train.device,
                      run_name=step.run_name, log_model=ctx.cfg.train.log_model)
    method = fcfg.methods[0]
    tags = {tracking.TAG_PARENTS: ",".join(parents)}
    return ctx.step(step.kind, "fuse", fcfg.params(method), tags, lambda: run_fuse(fcfg, ctx.data())[method])


# The kinds a study makes without --finetune-epochs (which adds the ensemble and the fine-tuned kinds).
MODEL_KINDS = study_kinds(StudyConfig())


def data_loader(data: DataConfig) -> Callable[[], DataSplits]:
    """A loader that decodes the data on its first call and returns the same splits after."""
    loaded: list[DataSplits] = []

    def load() -> DataSplits:
        if not loaded:
            loaded.append(load_dataset(data))
        return loaded[0]
    return load


def planned_steps(cfg: StudyConfig, seeds: tuple[int, ...]) -> list[tuple[str, str]]:
    """The (model kind, stage) of every step `run_seed` makes for `seeds`, in order (the plan's)."""
    return [(step.kind, step.stage) for seed in seeds for step in seed_steps(cfg, seed)]


def planned_step_kinds(cfg: StudyConfig, seeds: tuple[int, ...]) -> list[str]:
    """The progress line's plan: each step's kind (`step_kind`), timed on its own."""
    return [step_kind(kind, stage) for kind, stage in planned_steps(cfg, seeds)]


def planned_step_count(cfg: StudyConfig) -> int:
    """How many steps the study has (every seed has the same ones), without listing them."""
    return len(seed_steps(cfg, cfg.seeds[0])) * len(cfg.seeds)


def run_seed(cfg: StudyConfig, seed: int, load: Callable[[], DataSplits], experiment_id: str,
             cache_only: bool = False, progress: StudyProgress | None = None) -> list[tuple]:
    """Run the plan's steps of one seed (`seed_steps`), in order; return the STEP_COLUMNS rows.

    With `cache_only`, every step must be a finished run already (else NotCached): no data needed.
    """
    ctx = SeedContext(cfg, seed, load, experiment_id, cache_only=cache_only, progress=progress)
    for step in seed_steps(cfg, seed):
        if step.makes_model:
            ctx.model_runs[step.kind] = _make_model(ctx, step)
            continue
        model_run = ctx.model_runs[step.inputs[0]]
        ecfg = EvalConfig(**option_values(step.config), model_run=model_run, device=cfg.train.device,
                          label=f"{step.kind}_seed{seed}", progress=cfg.train.progress, run_name=step.run_name)
        ctx.step(step.kind, "evaluate", evaluate_params(ecfg), {tracking.TAG_MODEL_RUN: model_run},
                 lambda: run_evaluate(ecfg, ctx.data()))
    return ctx.steps


__all__ = ["KIND_ORDER", "MODEL_KINDS", "StudyConfig", "evaluate_params", "log_outputs", "parent_seed",
           "run_seed", "run_study"]


def study_params(cfg: StudyConfig) -> dict[str, object]:
    params = {**cfg.train.params(), "seeds": cfg.seeds, "measures": cfg.measure_names,
              "preset": cfg.evaluation.preset, "accuracy_metric": cfg.accuracy_metric}
    params.pop("seed")
    if cfg.widths:  # each train run records its own width; the study, the ones it varies
        params.pop("width")
        params["widths"] = ",".join(map(width_label, cfg.widths))
    if cfg.finetune_epochs:
        params["finetune_epochs"] = cfg.finetune_epochs
    params["sharpness_worst"] = cfg.evaluation.sharpness_worst
    options = option_values(cfg.fusion)
    params["method"] = ",".join(options.pop("methods"))
    for key, value in options.items():
        params[key] = "equal" if key == "fusion_weights" and value is None else value
    return params


def run_study(cfg: StudyConfig) -> str:
    """Run the whole study as nested MLflow runs; return the study run's ID."""
    tcfg = cfg.train
    trust_factory(tcfg.model)  # the caller's own model: its fuse and evaluate steps may rebuild a factory
    description = (
        f"Study of {tcfg.model} on {tcfg.data.name} over seeds {', '.join(map(str, cfg.seeds))}: per seed two "
        "parents are trained, fused naively and geometrically, and all four models evaluated."
        + (f" Every seed is run at widths {', '.join(map(width_label, cfg.widths))}." if cfg.widths else "")
    )
    tags = {TAG_CACHE: runs.param_str(cfg.use_cache), TAG_JOBS: str(cfg.jobs)}
    with tracking.stage_run("study", run_name=cfg.run_name, params=study_params(cfg), tags=tags,
                            description=description) as run:
        experiment_id = run.info.experiment_id
        if cfg.jobs == 1 or len(cfg.seeds) == 1:
            load = data_loader(tcfg.data)
            progress = StudyProgress(planned_step_kinds(cfg, cfg.seeds), enabled=tcfg.progress)
            rows = [row for seed in cfg.seeds for row in run_seed(cfg, seed, load, experiment_id, progress=progress)]
        else:
            rows = _run_seeds_in_parallel(cfg, run.info.run_id, experiment_id)
        steps = sort_steps(pd.DataFrame(rows, columns=STEP_COLUMNS), study_kinds(cfg))
        tables = log_outputs(steps, cfg.accuracy_metric, experiment_id)
        reused = int(tables.steps["reused"].sum())
        tracking.set_description(f"{description} {reused} of {len(steps)} steps reused finished runs (steps.csv).")
        return run.info.run_id


def _run_seeds_in_parallel(cfg: StudyConfig, study_run_id: str, experiment_id: str) -> list[tuple]:
    """Each seed in its own (spawned) process, nested under the study run; rows in seed order.

    A seed whose every step is a finished run already is looked up here, without a process.
    """
    done = {seed: _cached_seed(cfg, seed, experiment_id) for seed in cfg.seeds} if cfg.use_cache else {}
    todo = [seed for seed in cfg.seeds if done.get(seed) is None]
    if not todo:
        return [row for seed in cfg.seeds for row in done[seed]]
    jobs = min(cfg.jobs, len(todo))
    threads = max(1, (os.cpu_count() or 1) // jobs)  # share the cores instead of oversubscribing them
    context = multiprocessing.get_context("spawn")  # fork would copy MLflow's and torch's thread state
    uri = tracking.tracking_uri()
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = {seed: pool.submit(_seed_worker, cfg, seed, study_run_id, experiment_id, uri, threads)
                   for seed in todo}
        try:
            return [row for seed in cfg.seeds
                    for row in (done[seed] if seed not in futures else futures[seed].result())]
        except BaseException:
            for future in futures.values():
                future.cancel()
            # a SIGTERM reached only this driver (Ctrl-C reaches the whole process group):
            # pass it on, or the pool would wait for the running seeds to finish
            for process in list(getattr(pool, "_processes", {}).values()):
                if process.is_alive():
                    os.kill(process.pid, signal.SIGTERM)
            raise


def _cached_seed(cfg: StudyConfig, seed: int, experiment_id: str) -> list[tuple] | None:
    try:
        return run_seed(cfg, seed, data_loader(cfg.train.data), experiment_id, cache_only=True)
    except NotCached:
        return None


def _seed_worker(cfg: StudyConfig, seed: int, study_run_id: str, experiment_id: str, uri: str,
                 threads: int) -> list[tuple]:
    import torch

    from ofexp.tracking.study_runs import attached_to

    torch.set_num_threads(threads)
    stop_on_termination_signals()  # the driver passes a SIGTERM on: end this seed's runs KILLED
    progress = StudyProgress(planned_step_kinds(cfg, (seed,)), enabled=cfg.train.progress)
    with attached_to(study_run_id, uri):
        return run_seed(cfg, seed, data_loader(cfg.train.data), experiment_id, progress=progress)


# --- what the study run logs ------------------------------------------------------------------

def log_outputs(steps: pd.DataFrame, accuracy_metric: str, experiment_id: str) -> StudyTables:
    """Index the steps (steps.csv, and the kinds' order in one tag), then log the tables, metrics
    and plots built from the steps' runs as read back from the server, so the artifacts hold
    exactly the logged values."""
    tracking.set_tags(kinds_tag(steps))
    tracking.log_text(steps.to_csv(index=False), STEPS_FILE)
    step_runs = queries.runs_by_id(steps["run_id"], [experiment_id])
    tables = build_tables(steps, step_runs, accuracy_metric)
    for name, text in report_files(tables.results, accuracy_metric).items():
        tracking.log_text(text, name)
    tracking.log_text(tables.summary.to_csv(), "summary.csv")
    tracking.log_text(tables.correlations.to_csv(index=False, na_rep="nan"), "correlations.csv")
    granulated = {}
    if tables.granulated is not None:
        tracking.log_text(tables.granulated.to_csv(index=False, na_rep="nan"), GRANULATED_FILE)
        granulated = granulated_metrics(tables.granulated)
    reused = int(steps["reused"].sum())
    tracking.log_metrics({**summary_metrics(tables.summary), **correlation_metrics(tables.correlations),
                          **granulated, "steps/reused": reused, "steps/new": len(steps) - reused})
    notes = correlation_notes(tables.correlations)
    if notes:
        tracking.set_tags(dict([runs.warning_tag(
            "correlation", f"{len(notes)} correlations undefined (nan in results.csv, notes in correlations.csv): "
            + "; ".join(notes))]))
    _log_plots(tables, step_runs, accuracy_metric)
    return tables


def _log_plots(tables: StudyTables, step_runs: dict, accuracy_metric: str) -> None:
    per_seed = tables.results[tables.results["Space"] != "correlation_space"]
    figures = {"plots/accuracy.png": plots.accuracy_figure(per_seed, "accuracy")}
    if accuracy_metric != "accuracy":
        figures[f"plots/{accuracy_metric}.png"] = plots.accuracy_figure(per_seed, accuracy_metric)
    figures.update({f"plots/correlation_{method}.png": fig
                    for method, fig in plots.correlation_heatmaps(tables.correlations).items()})
    figures.update(_interpolation_figures(tables.steps, step_runs))
    for path, figure in figures.items():
        if figure is not None:
            log_figure(figure, path)
            plots.close(figure)


def _interpolation_figures(steps: pd.DataFrame, step_runs: dict) -> dict:
    """The `interp/...` curves that fuse runs logged (one value per interpolation step), if any."""
    curves: dict[str, dict[str, list]] = {}
    for step in steps[steps["stage"] == "fuse"].itertuples():
        for key in sorted(k for k in step_runs[step.run_id].metrics if k.startswith("interp/")):
            curves.setdefault(key, {})[f"{step.kind} seed{step.seed}"] = queries.metric_history(step.run_id, key)
    return {"plots/interpolation.png": plots.interpolation_figure(curves)} if curves else {}
