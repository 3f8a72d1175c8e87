"""A study's progress line: which step it is on, out of how many, and the time left."""
from __future__ import annotations

import sys
import time
from collections import Counter
from dataclasses import dataclass, field

from tqdm import tqdm

from ofexp.pipeline.study.widths import split_width


def format_duration(seconds: float) -> str:
    """3 s, 4 min 05 s, 1 h 02 min: short, and exact enough for an estimate."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


def step_kind(model_kind: str, stage: str) -> str:
    """The kind of step the estimate times on its own: train, finetune, fuse naive, fuse
    geometric, ensemble or evaluate. Their costs differ by orders of magnitude (a geometric
    fusion solves transport problems a naive one skips; a fine-tune runs fewer epochs than a
    parent), so one kind's time says nothing of another's. A width study's kinds count as their
    kind at any width (`parent_1_w0.5` is a train step)."""
    model_kind = split_width(model_kind)[0]
    if stage == "evaluate":
        return "evaluate"
    if model_kind.endswith("_finetuned"):
        return "finetune"
    if stage == "fuse":
        return f"fuse {model_kind.removesuffix('_fused')}"
    return stage


@dataclass(frozen=True)
class Estimate:
    """The time left as measured so far: `seconds` for the steps of kinds already timed, and
    the count of steps still to come of each kind not timed yet (not guessed: unknown)."""

    seconds: float
    timed_steps: int
    untimed: dict[str, int]

    def text(self) -> str:
        """`about 3 min 10 s left`, or a lower bound naming the kinds it leaves out."""
        if not self.untimed:
            return f"about {format_duration(self.seconds)} left"
        kinds = ", ".join(self.untimed)
        if self.timed_steps == 0:
            return f"no estimate yet: {kinds} not timed yet"
        return f"at least {format_duration(self.seconds)} left, {kinds} not timed yet"


@dataclass
class StudyProgress:
    """Counts a study's planned steps and prints one line to stderr as each starts.

    `plan` lists every step's kind (`step_kind`), in the order the study makes them. The
    time left charges each step still to come, the current one included, the mean time of
    the new steps of its kind measured so far, the first one left out once there is a
    second; a kind with none measured yet is named, not guessed. Reused steps cost nothing
    and are not timed; the one-off data loading is left out of the step that did it.
    """

    plan: list[str]
    enabled: bool = True
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    _seconds: dict[str, list[float]] = field(default_factory=dict)

    def estimate_left(self) -> Estimate | None:
        """The time the steps from the current one on should take; None before any new step finished."""
        if not self._seconds:
            return None
        # the first step of a kind pays one-off costs (lazy imports, torch's and MLflow's first
        # calls: a first Fashion-MNIST train step took 30 s, the next three 11-14 s), so once a
        # later one is timed the first is left out
        later = {kind: times[1:] or times for kind, times in self._seconds.items()}
        mean = {kind: sum(times) / len(times) for kind, times in later.items()}
        to_come = self.plan[max(self.done - 1, 0):]
        timed = [kind for kind in to_come if kind in mean]
        untimed = Counter(kind for kind in to_come if kind not in mean)
        return Estimate(sum(mean[kind] for kind in timed), len(timed), dict(untimed))

    def step_started(self, what: str) -> None:
        """Announce the next step (`what` names it) as step done+1 of the plan's."""
        self.done += 1
        if not self.enabled:
            return
        estimate = self.estimate_left()
        eta = estimate.text() if estimate is not None else "no estimate yet: no step timed"
        elapsed = format_duration(time.perf_counter() - self.started)
        total = max(len(self.plan), self.done)
        tqdm.write(f"study step {self.done}/{total}: {what} ({elapsed} so far, {eta})", file=sys.stderr)

    def step_finished(self, kind: str, seconds: float, reused: bool, loading: float = 0.0) -> None:
        """Record a step's time under its kind (`step_kind`); a reused step took no work.
        `loading`: seconds the step spent loading the data, left out of `seconds` (said once)."""
        if not reused:
            self._seconds.setdefault(kind, []).append(seconds)
        if loading >= 1 and self.enabled:
            tqdm.write(f"study: the data took {format_duration(loading)} to load, once; the estimate leaves "
                       "that out", file=sys.stderr)


def replay_estimates(plan: list[str], seconds: list[float]) -> list[Estimate | None]:
    """The estimate the progress line gives at each step of a study whose steps, of the
    kinds in `plan`, took `seconds` (all new): to check the estimate against recorded times."""
    progress = StudyProgress(plan, enabled=False)
    estimates = []
    for kind, took in zip(plan, seconds, strict=True):
        progress.step_started(kind)
        estimates.append(progress.estimate_left())
        progress.step_finished(kind, took, reused=False)
    return estimates
