"""A study's steps.csv checked against the runs it names, before `ofexp report` trusts it.

steps.csv is the study's one map from (seed, model kind, stage) to a run. It is an artifact
anyone with write access to the store can edit: swapping two evaluate rows' run IDs would
show one model's accuracy under another's name. Each row must therefore agree with what the
run it names recorded about itself, in params and tags MLflow never lets change (params) or
that ofexp set when the study made it:

- its stage (`ofexp.stage`), the stage the study plan (`study.plan`) gives its kind;
- an evaluate step measured its seed's model of the same kind (param `model_run`);
- a parent trained with the plan's torch seed (100·s + i), a fused model and the ensemble
  were made from the plan's inputs, the seed's two parents (`ofexp.parent_run_ids`), by the
  kind's method, a fine-tuned model started from its input, the seed's fused model of that
  method (`init_from`);
- each (seed, kind, stage) appears once, and the study's count of steps matches;
- in a width study (kinds like `parent_1_w0.5`), the row's kind is read without its width, its
  inputs are the same width's kinds, and a trained model's run has that width (param `width`).
"""
from __future__ import annotations

from functools import lru_cache
from typing import TYPE_CHECKING, Mapping

import pandas as pd

from ofexp.errors import ArtifactError
from ofexp.pipeline.study.widths import split_width, width_kind
from ofexp.tracking.names import TAG_PARENTS
from ofexp.tracking.queries import RunData

if TYPE_CHECKING:
    from ofexp.pipeline.study.plan import Step

STEPS_FILE = "steps.csv"


@lru_cache(maxsize=64)
def _planned_models(seed: int) -> dict[str, Step]:
    """Every model step a study may plan for `seed` (every fusion method, fine-tuning on), by kind."""
    from ofexp.pipeline.study import plan as study_plan  # the plan imports the modules that import this one
    from ofexp.pipeline.steps.fusion_methods import METHODS
    from ofexp.pipeline.steps.options import FusionOptions
    from ofexp.pipeline.study.run import StudyConfig

    every = StudyConfig(fusion=FusionOptions(methods=METHODS), finetune_epochs=1)
    return {step.kind: step for step in study_plan.seed_steps(every, seed) if step.makes_model}


def check_step_map(study: RunData, steps: pd.DataFrame, runs: Mapping[str, RunData]) -> None:
    """ArtifactError, in one line naming the study, the row and what disagrees, when a row of the
    study's steps.csv is not the step the study made."""
    duplicated = steps.duplicated(["seed", "kind", "stage"])
    if duplicated.any():
        row = steps[duplicated].iloc[0]
        _refuse(study, row, "appears twice")
    counted = study.metrics.get("steps/new", 0) + study.metrics.get("steps/reused", 0)
    if counted and int(counted) != len(steps):
        raise ArtifactError(f"study run {study.run_id}'s {STEPS_FILE} lists {len(steps)} steps, but the study "
                            f"made {int(counted)}: {_CHANGED}")
    models = {(int(r.seed), r.kind): r.run_id for r in steps.itertuples() if r.stage != "evaluate"}
    for row in steps.itertuples():
        run = runs[row.run_id]
        planned = _planned_models(int(row.seed)).get(split_width(row.kind)[0])
        expected_stage = "evaluate" if row.stage == "evaluate" else planned and planned.stage
        if expected_stage is None or row.stage != expected_stage:
            _refuse(study, row, f"is no step a study makes (kind {row.kind!r}, stage {row.stage!r})")
        if run.stage != row.stage:
            _refuse(study, row, f"names run {row.run_id}, which is a {run.stage or 'non-ofexp'} run")
        problem = _disagreement(row, run, models, planned)
        if problem:
            _refuse(study, row, f"names run {row.run_id}, {problem}")


def _disagreement(row, run: RunData, models: Mapping[tuple[int, str], str], planned: Step) -> str | None:
    """What the run recorded that contradicts its row (`planned`: the plan's step of its kind), or None."""
    seed = int(row.seed)
    base, width = split_width(row.kind)

    def model(kind: str) -> str:  # a planned kind's run at the row's width
        kind = width_kind(kind, width)
        return models.get((seed, kind), f"(no {kind} row for seed {seed})")

    if width is not None and row.stage == "train" and float(run.params.get("width", "nan")) != width:
        return f"which trained at width {run.params.get('width')}, not {width:g}"
    if row.stage == "evaluate":
        measured = run.params.get("model_run")
        return None if measured == model(base) else f"which measured run {measured}, not seed {seed}'s {row.kind} {model(base)}"
    if planned.stage == "train" and not planned.inputs:  # a parent
        expected = str(planned.config.seed)
        got = run.params.get("seed")
        return None if got == expected else f"which trained with seed {got}, not {expected}"
    if planned.stage == "train":  # a fine-tuning of its one input
        got, source = run.params.get("init_from"), model(planned.inputs[0])
        return None if got == source else f"which was fine-tuned from run {got}, not {source}"
    parents = ",".join(model(kind) for kind in planned.inputs)
    if run.tags.get(TAG_PARENTS) != parents:
        return f"which was made from runs {run.tags.get(TAG_PARENTS)}, not seed {seed}'s parents {parents}"
    method = planned.config.methods[0] if planned.stage == "fuse" else None
    if method and run.params.get("method") != method:
        return f"which is a {run.params.get('method')} fusion, not {method}"
    return None


_CHANGED = f"the map was changed after the study wrote it; run the study again (finished steps are reused)"


def _refuse(study: RunData, row, problem: str) -> None:
    raise ArtifactError(f"study run {study.run_id}'s {STEPS_FILE} row seed {row.seed} {row.kind} {row.stage} "
                        f"{problem}: {_CHANGED}")
