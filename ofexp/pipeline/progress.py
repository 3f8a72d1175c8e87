"""A study's progress line: which step it is on, out of how many, and the time left."""
from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from tqdm import tqdm


def format_duration(seconds: float) -> str:
    """3 s, 4 min 05 s, 1 h 02 min: short, and exact enough for an estimate."""
    seconds = max(0, int(round(seconds)))
    if seconds < 60:
        return f"{seconds} s"
    if seconds < 3600:
        return f"{seconds // 60} min {seconds % 60:02d} s"
    return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"


@dataclass
class StudyProgress:
    """Counts a study's planned steps and prints one line to stderr as each starts.

    `plan` lists every step's stage, in the order the study makes them. The
    estimate of the time left charges each step still to come the mean time of the new
    steps of its stage seen so far (a train step costs minutes, an evaluate step
    seconds), or of all new steps while its stage has none yet; reused steps cost nothing.
    """

    plan: list[str]
    enabled: bool = True
    done: int = 0
    started: float = field(default_factory=time.perf_counter)
    _seconds: dict[str, list[float]] = field(default_factory=dict)

    def estimate_left(self) -> float | None:
        """Seconds the steps from the current one on should take; None before any new step finished."""
        every = [s for times in self._seconds.values() for s in times]
        if not every:
            return None
        overall = sum(every) / len(every)
        mean = {stage: sum(times) / len(times) for stage, times in self._seconds.items()}
        return sum(mean.get(stage, overall) for stage in self.plan[self.done - 1:])

    def step_started(self, what: str) -> None:
        """Announce the next step (`what` names it) as step done+1 of the plan's."""
        self.done += 1
        if not self.enabled:
            return
        left = self.estimate_left()
        eta = f", about {format_duration(left)} left" if left is not None else ""
        elapsed = format_duration(time.perf_counter() - self.started)
        total = max(len(self.plan), self.done)
        tqdm.write(f"study step {self.done}/{total}: {what} ({elapsed} so far{eta})", file=sys.stderr)

    def step_finished(self, stage: str, seconds: float, reused: bool) -> None:
        if not reused:
            self._seconds.setdefault(stage, []).append(seconds)
