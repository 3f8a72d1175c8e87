"""Work longer than 2 s shows progress (issue #25): a fusion's or an evaluation's phase line
appears on stderr once the work passes 2 s, even inside one long phase, and never for work
done sooner."""
from __future__ import annotations

import time

from ofexp.pipeline.steps.phases import SHOW_AFTER_S, Phases


def test_a_long_phase_is_shown_while_it_runs(capsys):
    with Phases("fuse geometric mlp digits", ["aligning", "testing", "logging"]) as phases:
        phases.enter("aligning")
        time.sleep(SHOW_AFTER_S + 0.8)  # one long phase, no update inside it
        shown_during = capsys.readouterr().err
        phases.enter("testing")
    assert "fuse geometric mlp digits: 0/3, aligning" in shown_during
    after = capsys.readouterr().err
    assert "1/3, testing" in after
    # the line stays, done, and ends with a newline: the command's result line starts its own
    assert after.rstrip().endswith("3/3, done [00:02]") and after.endswith("\n"), repr(after)


def test_quick_work_shows_nothing(capsys):
    with Phases("evaluate parent_1", ["prediction/accuracy", "prediction/test_loss"]) as phases:
        phases.enter("prediction/accuracy")
        phases.enter("prediction/test_loss")
    time.sleep(SHOW_AFTER_S + 0.5)  # the timer was cancelled with the work
    assert capsys.readouterr().err == ""


def test_disabled_phases_print_nothing(capsys):
    with Phases("evaluate x", ["a"], enabled=False) as phases:
        phases.enter("a")
        time.sleep(SHOW_AFTER_S + 0.5)
    assert capsys.readouterr().err == ""
