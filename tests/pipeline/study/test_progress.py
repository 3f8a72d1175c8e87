"""The study's progress line: step counts against the steps a study makes, and the time-left
estimate, checked on made-up times and replayed on the step times of real studies."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pandas as pd
import pytest

from ofexp.pipeline.steps.options import FusionOptions
from ofexp.pipeline.study.progress import StudyProgress, format_duration, replay_estimates, step_kind
from ofexp.pipeline.study.run import StudyConfig, planned_step_kinds

RECORDED = Path(__file__).resolve().parents[3] / "docs" / "results" / "study_estimates" / "step_times.csv"


def test_each_kind_of_step_is_charged_its_own_mean_and_an_untimed_kind_is_not_guessed(capsys):
    progress = StudyProgress(["train", "train", "fuse naive", "fuse geometric", "evaluate", "evaluate"])
    progress.step_started("seed 1 parent_1 train")
    assert progress.estimate_left() is None
    progress.step_finished("train", 100.0, reused=False)
    progress.step_started("seed 1 parent_2 train")
    at_2 = progress.estimate_left()
    # one train step left at 100 s; the fusions and evaluations are unknown, not charged 100 s each
    assert at_2.seconds == pytest.approx(100.0) and at_2.untimed == {"fuse naive": 1, "fuse geometric": 1,
                                                                     "evaluate": 2}
    progress.step_finished("train", 80.0, reused=False)
    progress.step_started("seed 1 naive_fused fuse")
    progress.step_finished("fuse naive", 3.0, reused=False)
    progress.step_started("seed 1 geometric_fused fuse")
    # a naive fusion's 3 s says nothing of a geometric one's: no estimate at all
    assert progress.estimate_left().timed_steps == 0
    progress.step_finished("fuse geometric", 40.0, reused=False)
    progress.step_started("seed 1 parent_1 evaluate")
    progress.step_finished("evaluate", 5.0, reused=False)
    progress.step_started("seed 1 parent_2 evaluate")
    assert progress.estimate_left() == pytest.approx(type(at_2)(5.0, 1, {}))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "study step 1/6: seed 1 parent_1 train (0 s so far, no estimate yet: no step timed)"
    assert err[1].endswith(", at least 1 min 40 s left, fuse naive, fuse geometric, evaluate not timed yet)")
    assert err[3].endswith(", no estimate yet: fuse geometric, evaluate not timed yet)")
    assert err[5].endswith(", about 5 s left)")


def test_the_first_step_of_a_kind_counts_only_until_a_second_is_timed():
    # the first step of a kind pays the process's one-off costs (imports, first calls)
    progress = StudyProgress(["train"] * 4, enabled=False)
    progress.step_started("a")
    progress.step_finished("train", 30.0, reused=False)
    progress.step_started("b")
    assert progress.estimate_left().seconds == pytest.approx(3 * 30.0)
    progress.step_finished("train", 12.0, reused=False)
    progress.step_started("c")
    assert progress.estimate_left().seconds == pytest.approx(2 * 12.0)
    progress.step_finished("train", 14.0, reused=False)
    progress.step_started("d")
    assert progress.estimate_left().seconds == pytest.approx(13.0)


def test_reused_steps_cost_nothing_in_the_estimate():
    progress = StudyProgress(["train", "train", "evaluate"], enabled=False)
    progress.step_started("a")
    progress.step_finished("train", 0.01, reused=True)
    progress.step_started("b")
    assert progress.estimate_left() is None
    progress.step_finished("train", 50.0, reused=False)
    progress.step_started("c")
    assert progress.estimate_left().timed_steps == 0 and progress.estimate_left().untimed == {"evaluate": 1}


@pytest.mark.parametrize("seconds,text", [(4.4, "4 s"), (245, "4 min 05 s"), (3720, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


@pytest.mark.parametrize("model_kind,stage,kind", [
    ("parent_1", "train", "train"), ("naive_finetuned", "train", "finetune"), ("naive_fused", "fuse", "fuse naive"),
    ("geometric_fused", "fuse", "fuse geometric"), ("ensemble", "ensemble", "ensemble"),
    ("geometric_fused", "evaluate", "evaluate")])
def test_step_kinds_keep_apart_steps_of_different_cost(model_kind, stage, kind):
    assert step_kind(model_kind, stage) == kind


def test_the_plan_names_every_step_of_each_study_shape():
    plain = planned_step_kinds(StudyConfig(), (1, 2))
    assert Counter(plain) == {"train": 4, "fuse naive": 2, "fuse geometric": 2, "evaluate": 8}
    tuned = planned_step_kinds(StudyConfig(finetune_epochs=1), (1,))
    assert Counter(tuned) == {"train": 2, "ensemble": 1, "fuse naive": 1, "fuse geometric": 1, "finetune": 2,
                              "evaluate": 7}
    only_geometric = planned_step_kinds(StudyConfig(fusion=FusionOptions(methods=("geometric",))), (3,))
    assert only_geometric == ["train", "train", "fuse geometric", "evaluate", "evaluate", "evaluate"]


def _recorded_studies():
    table = pd.read_csv(RECORDED)
    return {name: (list(steps["kind"]), list(steps["seconds"]), list(steps["seconds"] - steps["loading"]))
            for name, steps in table.groupby("study")}


@pytest.mark.parametrize("study", sorted(_recorded_studies()))
def test_the_estimate_holds_on_the_step_times_of_real_studies(study):
    """Replayed on step times measured on this project's 2 shared cores (docs/study.md shows the
    table): a full estimate lands within a third of the true time left or half a minute (the
    load of shared cores moves a step's time by that much), a partial one never claims much
    more than the true time left (it leaves out the kinds not timed yet)."""
    plan, seconds, timed = _recorded_studies()[study]  # timed: without the one-off data loading
    for step, estimate in enumerate(replay_estimates(plan, timed), start=1):
        truth = sum(seconds[step - 1:])
        if step == 1:
            assert estimate is None
        elif not estimate.untimed:
            assert abs(estimate.seconds - truth) <= max(truth / 3, 30), f"step {step}: {estimate.text()}, {truth:.0f} s"
        else:
            assert estimate.seconds <= 1.1 * truth, f"step {step}: {estimate.text()}, {truth:.0f} s left"
