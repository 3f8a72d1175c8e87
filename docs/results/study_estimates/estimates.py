"""Step times of real studies, and what the progress line estimates from them (docs/study.md).

    ofexp study ... 2>&1 | python -c 'import sys,time; [print(f"{time.time():.3f} {l}", end="", flush=True) for l in sys.stdin]' > LOG
    python docs/results/study_estimates/estimates.py record LOG NAME   # adds NAME's steps to step_times.csv
    python docs/results/study_estimates/estimates.py table             # the table in docs/study.md

A step's `seconds` run from its progress line to the next one (the last step's to the
study's run ID, so they include the study's tables and plots): the time a user waits.
`loading` is the part of them the data took to load (once per study), which the estimate
leaves out of the step's time.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pandas as pd

from ofexp.pipeline.study.progress import format_duration, replay_estimates, step_kind

HERE = Path(__file__).resolve().parent
TIMES = HERE / "step_times.csv"
STEP = re.compile(r"^(\d+\.\d+) study step (\d+)/(\d+): seed \d+ (\w+) (\w+)")
LOADED = re.compile(r"study: the data took (?:(\d+) min )?(\d+) s to load")


def record(log: Path, name: str) -> None:
    lines = log.read_text(errors="replace").replace("\r", "\n").splitlines()
    rows = []
    for line in lines:
        if step := STEP.match(line):
            stamp, number, _, model_kind, stage = step.groups()
            rows.append({"study": name, "step": int(number), "kind": step_kind(model_kind, stage),
                         "started": float(stamp), "loading": 0.0})
        elif rows and (loaded := LOADED.search(line)):
            rows[-1]["loading"] = 60.0 * int(loaded.group(1) or 0) + int(loaded.group(2))
    end = max(float(line.split(" ", 1)[0]) for line in lines if re.match(r"^\d+\.\d+ ", line))  # the run ID
    for row, after in zip(rows, [r["started"] for r in rows[1:]] + [end]):
        row["seconds"] = round(after - row.pop("started"), 2)
    old = pd.read_csv(TIMES) if TIMES.exists() else pd.DataFrame()
    kept = old[old["study"] != name] if len(old) else old
    pd.concat([kept, pd.DataFrame(rows)]).to_csv(TIMES, index=False)


def _previous_estimate(plan: list[str], seconds: list[float], step: int) -> float | None:
    """What ofexp printed before the estimate timed each kind apart: per stage mean, an untimed
    stage charged the mean of every step so far."""
    stage = [k.split()[0] for k in plan]
    done = list(zip(stage[:step - 1], seconds[:step - 1]))
    if not done:
        return None
    overall = sum(s for _, s in done) / len(done)
    means = {st: sum(s for x, s in done if x == st) / sum(1 for x, _ in done if x == st) for st, _ in done}
    return sum(means.get(st, overall) for st in stage[step - 1:])


def table(at_steps=(2, 4, 8)) -> str:
    out = ["| study | step | estimate shown | true time left | before this change |", "|---|---|---|---|---|"]
    for name, steps in pd.read_csv(TIMES).groupby("study", sort=False):
        plan, seconds = list(steps["kind"]), list(steps["seconds"])
        estimates = replay_estimates(plan, list(steps["seconds"] - steps["loading"]))
        for step in at_steps:
            shown = estimates[step - 1].text() if estimates[step - 1] else "no estimate yet"
            before = _previous_estimate(plan, seconds, step)
            out.append(f"| {name} ({format_duration(sum(seconds))}) | {step}/{len(plan)} ({plan[step - 1]}) | "
                       f"{shown} | {format_duration(sum(seconds[step - 1:]))} | "
                       f"{format_duration(before) if before is not None else '-'} |")
    return "\n".join(out)


if __name__ == "__main__":
    if sys.argv[1] == "record":
        record(Path(sys.argv[2]), sys.argv[3])
    else:
        print(table())
