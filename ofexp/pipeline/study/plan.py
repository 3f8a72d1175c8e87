"""The study plan: every step a study makes. The study graph is written here and nowhere else.

Per seed, a study makes its models (two parents, the fused model of each fusion method, and,
with --finetune-epochs, the parents' prediction ensemble and each fused model fine-tuned),
then evaluates each of them. `plan(cfg)` lists those steps in the order the local engine
runs them, each after the steps whose runs it takes. Each Step says which model kind it
makes or measures, its stage, its config (the options it adds to its inputs) and its inputs:
the kinds of the same seed whose run IDs it takes. The local, Slurm and Kubernetes engines,
the progress line, steps.csv's order, the study's kinds and the steps.csv check all read it.

A study over several widths (`StudyConfig.widths`) makes each seed's models once per width,
as width-qualified kinds (`parent_1_w0.5`, `ofexp.pipeline.study.widths`) whose train steps have
that width: the same seeds, steps and torch seeds at every width.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Iterator, Union

from ofexp.pipeline.steps.finetune import finetune_recipe
from ofexp.pipeline.steps.fusion_methods import METHODS
from ofexp.pipeline.steps.options import EvaluateOptions, FusionOptions
from ofexp.pipeline.study.report import step_run_name
from ofexp.pipeline.steps.train import TrainConfig
from ofexp.pipeline.study.widths import width_kind
from ofexp.tracking.artifacts import ENSEMBLE_STAGE

if TYPE_CHECKING:
    from ofexp.pipeline.study.run import StudyConfig

# What a step adds to its inputs: a train step's TrainConfig (a parent's, or a fine-tuning's,
# whose recipe is the fine-tuning recipe), a fuse step's FusionOptions (one method), an
# evaluate step's EvaluateOptions; the ensemble takes only the study's device and log_model.
StepConfig = Union[TrainConfig, FusionOptions, EvaluateOptions, None]


@dataclass(frozen=True)
class Step:
    """One step of a study: make or measure model `kind` of `seed` with `stage`."""

    seed: int
    kind: str  # the model kind made or measured, as in steps.csv and results.csv's <kind>_seed<k>
    stage: str  # train | fuse | ensemble | evaluate
    config: StepConfig
    inputs: tuple[str, ...] = ()  # the kinds of the same seed whose run IDs this step takes, in order

    @property
    def run_name(self) -> str:
        """The step run's name, whichever engine runs it."""
        return step_run_name(self.seed, self.kind, self.stage)

    @property
    def makes_model(self) -> bool:
        return self.stage != "evaluate"


def parent_seed(study_seed: int, parent: int) -> int:
    """The torch seed of parent `parent` (1 or 2) of study seed `study_seed`: 100·s + i.

    Distinct for every (seed, parent) pair, and readable: seed 3's parents train
    with torch seeds 301 and 302.
    """
    return 100 * study_seed + parent


def finetune_seed(study_seed: int) -> int:
    """Both fine-tunings of a seed shuffle with torch seed 100·s, so naive and geometric fusion
    are fine-tuned on the same batches (a paired comparison)."""
    return 100 * study_seed


PARENTS = ("parent_1", "parent_2")
ENSEMBLE = "ensemble"


def fused_kind(method: str) -> str:
    return f"{method}_fused"


def finetuned_kind(method: str) -> str:
    return f"{method}_finetuned"


# Every kind a study may make, in table order (the order `seed_steps` makes them in).
KIND_ORDER = (*PARENTS, ENSEMBLE, *map(fused_kind, METHODS), *map(finetuned_kind, METHODS))


def seed_steps(cfg: StudyConfig, seed: int) -> list[Step]:
    """The steps of one seed: its models in KIND_ORDER (width after width), then one evaluate step per model."""
    models = [step for width in cfg.widths or (None,) for step in _model_steps(cfg, seed, width)]
    evaluation = cfg.step_evaluation
    return models + [Step(seed, m.kind, "evaluate", evaluation, (m.kind,)) for m in models]


def _model_steps(cfg: StudyConfig, seed: int, width: float | None = None) -> Iterator[Step]:
    """One seed's model steps at `width` (None: the study's one width, unqualified kinds)."""
    tcfg = cfg.train if width is None else replace(cfg.train, width=width)
    methods = [m for m in METHODS if m in cfg.fusion.methods]

    def at(kind: str) -> str:
        return width_kind(kind, width)

    parents = tuple(map(at, PARENTS))
    for i, kind in enumerate(parents, 1):
        yield Step(seed, kind, "train", replace(tcfg, seed=parent_seed(seed, i),
                                                run_name=step_run_name(seed, kind, "train")))
    if cfg.finetune_epochs:  # the ensemble: the reference ceiling that fusion and fine-tuning are compared with
        yield Step(seed, at(ENSEMBLE), ENSEMBLE_STAGE, None, parents)
    for method in methods:
        yield Step(seed, at(fused_kind(method)), "fuse", replace(cfg.fusion, methods=(method,)), parents)
    if cfg.finetune_epochs:
        for method in methods:
            kind = at(finetuned_kind(method))
            # a fine-tuning reads the data its source recorded and downloads nothing, as `ofexp train
            # --init-from` records it on every engine
            tuned = replace(tcfg, recipe=finetune_recipe(tcfg.recipe, epochs=cfg.finetune_epochs),
                            data=replace(tcfg.data, download=False), seed=finetune_seed(seed),
                            run_name=step_run_name(seed, kind, "train"))
            yield Step(seed, kind, "train", tuned, (at(fused_kind(method)),))


def plan(cfg: StudyConfig) -> list[Step]:
    """Every step of the study, seed after seed, each after the steps whose runs it takes."""
    return [step for seed in cfg.seeds for step in seed_steps(cfg, seed)]


def study_kinds(cfg: StudyConfig) -> tuple[str, ...]:
    """The model kinds the study makes per seed, in table order (width after width)."""
    return tuple(step.kind for step in seed_steps(cfg, cfg.seeds[0]) if step.makes_model)
