"""The study's progress line: step counts against the steps a study makes, and the time-left estimate."""
from __future__ import annotations

from collections import Counter

import pytest

from ofexp.pipeline.progress import StudyProgress, format_duration
from ofexp.pipeline.options import FusionOptions
from ofexp.pipeline.study import StudyConfig, planned_stages


def test_time_left_charges_each_stage_its_own_mean(capsys):
    progress = StudyProgress(["train", "train", "fuse", "evaluate", "evaluate"])
    progress.step_started("seed 1 parent_1 train")
    assert progress.estimate_left() is None  # nothing measured yet: no estimate is printed
    progress.step_finished("train", 100.0, reused=False)
    progress.step_started("seed 1 parent_2 train")
    # the second train step and the three to come, each at the only mean known (100 s)
    assert progress.estimate_left() == pytest.approx(400.0)
    progress.step_finished("train", 80.0, reused=False)
    progress.step_started("seed 1 naive_fused fuse")
    progress.step_finished("fuse", 3.0, reused=False)
    progress.step_started("seed 1 parent_1 evaluate")
    # evaluate has no mean yet: the mean of all new steps, (100 + 80 + 3) / 3, for each of two
    assert progress.estimate_left() == pytest.approx(2 * 183.0 / 3)
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith("study step 1/5: seed 1 parent_1 train (0 s so far)")
    assert err[1].endswith("about 6 min 40 s left)") and err[3].startswith("study step 4/5: ")


def test_reused_steps_cost_nothing_in_the_estimate():
    progress = StudyProgress(["train", "train", "evaluate"], enabled=False)
    progress.step_started("a")
    progress.step_finished("train", 0.01, reused=True)
    progress.step_started("b")
    assert progress.estimate_left() is None
    progress.step_finished("train", 50.0, reused=False)
    progress.step_started("c")
    assert progress.estimate_left() == pytest.approx(50.0)


@pytest.mark.parametrize("seconds,text", [(4.4, "4 s"), (245, "4 min 05 s"), (3720, "1 h 02 min")])
def test_format_duration(seconds, text):
    assert format_duration(seconds) == text


def test_the_plan_counts_every_step_of_each_study_shape():
    plain = planned_stages(StudyConfig(), (1, 2))
    assert Counter(plain) == {"train": 4, "fuse": 4, "evaluate": 8}
    tuned = planned_stages(StudyConfig(finetune_epochs=1), (1,))
    assert Counter(tuned) == {"train": 4, "ensemble": 1, "fuse": 2, "evaluate": 7}
    only_geometric = planned_stages(StudyConfig(fusion=FusionOptions(methods=("geometric",))), (3,))
    assert Counter(only_geometric) == {"train": 2, "fuse": 1, "evaluate": 3}
