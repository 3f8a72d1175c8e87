"""The study: per seed, train two parents, fuse them both ways, evaluate all four.

Every step is a nested child of one 'study' run, and each step gets its
inputs by run ID from the step before.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import pandas as pd
from mlflow.entities import Run

from ofexp import tracking
from ofexp.data import load_dataset
from ofexp.errors import ConfigError
from ofexp.metrics import MEASURES
from ofexp.pipeline.evaluate import RESULTS_COLUMNS, EvalConfig, run_evaluate
from ofexp.pipeline.fuse import FuseConfig, run_fuse
from ofexp.pipeline.train import TrainConfig, run_train

MODEL_KINDS = ("parent_1", "parent_2", "naive_fused", "geometric_fused")


@dataclass(frozen=True)
class StudyConfig:
    train: TrainConfig = field(default_factory=TrainConfig)
    seeds: tuple[int, ...] = (1,)
    measures: str = "prediction"
    fuse_options: dict = field(default_factory=dict)  # FuseConfig fields other than parents and device

    def __post_init__(self) -> None:
        if not self.seeds:
            raise ConfigError("--seeds selects no seed; pass a count like 2 or a list like 1,2,5")
        if len(set(self.seeds)) != len(self.seeds):
            raise ConfigError(f"--seeds lists a seed twice ({','.join(map(str, self.seeds))}); list each once")


def parent_seed(study_seed: int, parent: int) -> int:
    """The torch seed of parent `parent` (1 or 2) of study seed `study_seed`: 100·s + i.

    Distinct for every (seed, parent) pair, and readable: seed 3's parents train
    with torch seeds 301 and 302.
    """
    return 100 * study_seed + parent


def run_study(cfg: StudyConfig) -> str:
    """Run the whole study as nested MLflow runs; return the study run's ID."""
    tcfg = cfg.train
    splits = load_dataset(tcfg.data)
    name = f"study {tcfg.model} {tcfg.data.name} seeds {','.join(map(str, cfg.seeds))}"
    params = {**tcfg.params(), "seeds": cfg.seeds, "measures": cfg.measures}
    params.pop("seed")
    description = (
        f"Study of {tcfg.model} on {tcfg.data.name} over seeds {', '.join(map(str, cfg.seeds))}: per seed two "
        "parents are trained, fused naively and geometrically, and all four models evaluated."
    )
    with tracking.stage_run("study", run_name=name, params=params, description=description) as run:
        rows = []
        for seed in cfg.seeds:
            rows += _run_seed(cfg, seed, splits)
        results = pd.DataFrame(rows, columns=RESULTS_COLUMNS)
        tracking.log_text(results.to_csv(index=False), "results.csv")
        summary = summarise(results)
        tracking.log_text(summary.to_csv(), "summary.csv")
        tracking.log_metrics({
            f"summary/{metric}/{kind}_mean": value
            for (kind, metric), value in summary["mean"].items()
        })
        return run.info.run_id


def _run_seed(cfg: StudyConfig, seed: int, splits) -> list[tuple]:
    tcfg = cfg.train
    parents = []
    for i in (1, 2):
        pcfg = replace(tcfg, seed=parent_seed(seed, i),
                       run_name=f"train {tcfg.model} {tcfg.data.name} seed{seed} parent{i}")
        parents.append(run_train(pcfg, splits))
    fused = run_fuse(FuseConfig(parents=tuple(parents), device=tcfg.device, **cfg.fuse_options), splits)
    model_runs = dict(zip(MODEL_KINDS, [*parents, fused.get("naive"), fused.get("geometric")]))
    rows = []
    for kind, model_run in model_runs.items():
        if model_run is None:
            continue
        eval_id = run_evaluate(EvalConfig(model_run=model_run, measures=cfg.measures, device=tcfg.device,
                                          label=f"{kind}_seed{seed}"), splits)
        rows += _rows_from_eval(tracking.get_run_checked(eval_id, ("evaluate",)), f"{kind}_seed{seed}")
    return rows


def _rows_from_eval(run: Run, label: str) -> list[tuple]:
    # Read back from the store, so results.csv holds exactly the logged values.
    logged = run.data.metrics
    return [(label, m.csv_space, m.name, logged[m.metric_key])
            for m in MEASURES.values() if m.metric_key in logged]


def summarise(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of every (model kind, metric)."""
    frame = results.copy()
    frame["Kind"] = frame["Model"].str.replace(r"_seed\d+$", "", regex=True)
    return frame.groupby(["Kind", "Metric"])["Value"].agg(["mean", "std", "count"])
