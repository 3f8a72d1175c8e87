"""The study plan as cluster steps: what the Slurm and Kubernetes engines submit and wait for.

`plan_study` renders each step of the study plan (`study_plan.plan`) as a run of an entry point
of the study-steps project `mlflow_projects/cluster_steps` (train, ensemble, fuse, finetune,
evaluate): its key, its run name (the local study's), its parameters, and the steps whose run IDs
fill its inputs. `waves` groups the steps an engine can submit at once; `step_digest` is a step's
identity, by which both engines reuse a FINISHED run; `log_step_outputs` logs the study's tables
from the step runs, as the local engine does.
"""
from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Mapping

import pandas as pd

from ofexp.errors import ConfigError
from ofexp.models import TRUSTED_FACTORIES_ENV
from ofexp.options import command_params, param_str
from ofexp.pipeline.study import plan as study_plan
from ofexp.pipeline.steps.options import FusionOptions
from ofexp.pipeline.study.report import STEP_COLUMNS, sort_steps
from ofexp.pipeline.study.run import StudyConfig, log_outputs
from ofexp.pipeline.study.widths import split_width, width_label
from ofexp.pipeline.steps.train import TrainConfig
from ofexp.training.recipes import RecipeOptions

# The project whose entry points run the steps, on Kubernetes and (as commands) on Slurm.
CLUSTER_STEPS_PROJECT = Path(__file__).resolve().parents[3] / "mlflow_projects" / "cluster_steps"


@dataclass(frozen=True)
class Step:
    """One MLflow Project run of the study. `inputs` maps a parameter to the steps whose run IDs fill it."""

    key: str  # unique within the study, e.g. "fuse-seed1-naive"
    entry_point: str  # "train" | "ensemble" | "fuse" | "finetune" | "evaluate"
    run_name: str
    params: Mapping[str, str]
    inputs: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    kind: str = ""  # the model kind made or measured (study_plan.KIND_ORDER), as in the study's steps.csv
    seed: int = 0
    stage: str = ""  # the ofexp stage its run gets (a finetune step's is train)

    @property
    def needs(self) -> tuple[str, ...]:
        return tuple(key for keys in self.inputs.values() for key in keys)

    def resolved(self, run_ids: Mapping[str, str]) -> dict[str, str]:
        """The parameters with each input replaced by the comma-joined run IDs of its steps."""
        return {**self.params, **{name: ",".join(run_ids[k] for k in keys) for name, keys in self.inputs.items()}}


# The entry points of the study-steps project (mlflow_projects/cluster_steps), in the order their steps
# are listed and submitted; the parameter of each that takes its inputs' run IDs. `finetune` is a
# train step that starts from another run's weights (`ofexp train --init-from`).
_ENTRY_INPUTS = {"train": None, "ensemble": "parents", "fuse": "parents", "finetune": "init_from",
                 "evaluate": "model_run"}


def entry_point(step: study_plan.Step) -> str:
    """The project entry point that runs a planned step."""
    return "finetune" if step.stage == "train" and step.inputs else step.stage


def plan_study(cfg: StudyConfig) -> list[Step]:
    """The study plan's steps (`study_plan.plan`) as MLflow Project runs, in _ENTRY_INPUTS order
    (train, ensemble, fuse, finetune, evaluate), so each comes after the steps it needs."""
    planned = study_plan.plan(cfg)
    keys = {(s.seed, s.kind): _step_key(s) for s in planned if s.makes_model}
    steps = []
    for s in sorted(planned, key=lambda s: list(_ENTRY_INPUTS).index(entry_point(s))):
        entry = entry_point(s)
        inputs = {_ENTRY_INPUTS[entry]: tuple(keys[(s.seed, k)] for k in s.inputs)} if s.inputs else {}
        steps.append(Step(_step_key(s), entry, s.run_name, _step_params(cfg, s), inputs, kind=s.kind,
                          seed=s.seed, stage=s.stage))
    for step in steps:
        _check_values(step)
    return steps


def _step_key(step: study_plan.Step) -> str:
    """A planned step's key: it names Kubernetes objects and labels (lowercase, digits and '-' only).
    A width study's step ends in its width, '.' written 'p' (parent_1_w0.5's training: -w0p5)."""
    seed, (kind, width) = step.seed, split_width(step.kind)
    at = "" if width is None else "-w" + width_label(width).replace(".", "p").replace("-", "m").replace("+", "")
    if step.stage == "train" and not step.inputs:
        return f"train-seed{seed}-{kind.replace('_', '')}{at}"
    if step.stage == "evaluate":
        return f"evaluate-seed{seed}-{kind.replace('_', '-')}{at}"
    if step.stage == "fuse":
        return f"fuse-seed{seed}-{step.config.methods[0]}{at}"
    if step.stage == "train":  # a fine-tuning: <method>_finetuned
        return f"finetune-seed{seed}-{kind.removesuffix('_finetuned')}{at}"
    return f"{step.stage}-seed{seed}{at}"  # the ensemble


def _step_params(cfg: StudyConfig, step: study_plan.Step) -> dict[str, str]:
    """A planned step's entry-point parameters, without its inputs (the driver adds their run IDs)."""
    config, device = step.config, cfg.train.device
    log_model = {"log_model_value": param_str(cfg.train.log_model)}
    if step.stage == "train":
        return _finetune_params(cfg, config) if step.inputs else config.command_params()
    if step.stage == "fuse":
        return {**_fuse_params(cfg, config), **log_model}
    if step.stage == "evaluate":
        return {**command_params(config), "label": f"{step.kind}_seed{step.seed}", "device": device}
    return {"device": device, **log_model}  # the ensemble


def waves(steps: Iterable[Step]) -> list[list[Step]]:
    """Group steps by dependency depth: wave k needs only steps of waves < k, so each wave can run at once."""
    depth: dict[str, int] = {}
    for step in steps:  # plan order puts every step after its inputs
        depth[step.key] = 1 + max((depth[k] for k in step.needs), default=-1)
    grouped: dict[int, list[Step]] = {}
    for step in steps:
        grouped.setdefault(depth[step.key], []).append(step)
    return [grouped[d] for d in sorted(grouped)]


def _finetune_params(cfg: StudyConfig, t: TrainConfig) -> dict[str, str]:
    """A fine-tuning's `ofexp train --init-from` options: the study's recipe name (the base the CLI
    builds the fine-tuning recipe on) and the fine-tuning recipe's values (the plan's), so the run's
    recipe is the local study's; the network and data come from the fused run it starts from."""
    recipe = command_params(RecipeOptions.of(t.recipe), exclude=("init",))  # --init-from refuses --init
    return {**recipe, "recipe": cfg.train.recipe.name, "seed": str(t.seed), "device": t.device,
            "log_model_value": param_str(t.log_model), **command_params(t.speed)}


def _fuse_params(cfg: StudyConfig, fusion: FusionOptions) -> dict[str, str]:
    """One fuse step's fusion options (one method), as `ofexp fuse` options (FusionOptions renders them)."""
    return {**command_params(fusion), "device": cfg.train.device}


def _check_values(step: Step) -> None:
    # MLflow's Kubernetes backend shell-quotes each word of the command, and the container runs it
    # without a shell: a value with spaces or quotes would reach ofexp with literal quotes.
    for name, value in step.params.items():
        if not value or shlex.quote(value) != value:
            raise ConfigError(f"{step.key}: {name}={value!r} is empty or needs shell quoting, which MLflow's "
                              "kubernetes backend passes on literally; use a value without spaces or quotes")


def trust_env() -> dict[str, str]:
    """The factories this driver trusts (a --model factory among them), for the steps' environment: the
    fuse and evaluate steps rebuild the network from spec.json, and import only a trusted factory."""
    trusted = os.environ.get(TRUSTED_FACTORIES_ENV, "").strip()
    return {TRUSTED_FACTORIES_ENV: trusted} if trusted else {}




def step_digest(step: Step, params: Mapping[str, str]) -> str:
    """A cluster step's identity (`cache.step_identity`): its stage and its command's parameters, input
    run IDs filled in (a fine-tuning's init_from tells it from a parent's training), with the ofexp
    version and commit. Slurm and Kubernetes step runs carry it
    (tag ofexp.step_digest); a rerun of the study reuses the newest FINISHED run that has it."""
    from ofexp.tracking import cache

    return cache.step_identity(step.stage, params)


def finished_step(step: Step, params: Mapping[str, str], experiment_id: str, use_cache: bool) -> tuple[str, str | None]:
    """(the step's digest, the run ID of a FINISHED run that did it already or None)."""
    from ofexp.tracking import cluster_runs

    digest = step_digest(step, params)
    return digest, cluster_runs.find_finished_step(experiment_id, digest) if use_cache else None


def log_step_outputs(cfg: StudyConfig, steps: list[Step], run_ids: Mapping[str, str], experiment_id: str,
                     reused: frozenset[str] = frozenset()) -> None:
    """The study's own outputs (steps.csv, results.csv, summary, correlations, plots), from its step
    runs: `run_ids` by step key, `reused` the keys of steps that earlier runs did."""
    rows = [(step.seed, step.kind, step.stage, run_ids[step.key], step.key in reused) for step in steps]
    # in the plan's kinds' order, width after width, as the local engine sorts them
    log_outputs(sort_steps(pd.DataFrame(rows, columns=STEP_COLUMNS), study_plan.study_kinds(cfg)), cfg.accuracy_metric,
                experiment_id)
