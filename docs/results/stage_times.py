"""Print the wall time of each stage of a study, from an `ofexp export` folder of it.

    ofexp export STUDY_RUN_ID study-export        # once, from the store that holds the study
    python docs/results/stage_times.py study-export

Reads the study's steps.csv (every step's run ID, reused or new) and each step run's
start and end time from the export's runs/<ID>/run.json, files alone; prints, per stage
and model kind, how many runs there were, their median and total wall time, and the
study run's own.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pandas as pd


def _run(folder: Path, run_id: str) -> dict:
    return json.loads((folder / "runs" / run_id / "run.json").read_text(encoding="utf-8"))


def stage_times(folder: Path) -> pd.DataFrame:
    study_id = json.loads((folder / "ofexp-export.json").read_text(encoding="utf-8"))["study_run_id"]
    steps = pd.read_csv(folder / "runs" / study_id / "artifacts" / "steps.csv", dtype={"run_id": str})
    rows = []
    for step in steps.itertuples():
        run = _run(folder, step.run_id)
        seconds = (run["end_time"] - run["start_time"]) / 1000.0 if run.get("end_time") else float("nan")
        kind = step.kind if step.stage != "train" or step.kind.startswith("parent") else "fine-tune"
        rows.append((step.stage, kind if step.stage != "evaluate" else "every model", seconds))
    frame = pd.DataFrame(rows, columns=["stage", "what", "seconds"])
    table = frame.groupby(["stage", "what"], sort=False)["seconds"].agg(["count", "median", "sum"])
    return table.rename(columns={"count": "runs", "median": "median_s", "sum": "total_s"}).round(1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a folder `ofexp export` wrote")
    folder = parser.parse_args().folder
    table = stage_times(folder).reset_index()
    print("| " + " | ".join(table.columns) + " |")
    print("|---" * len(table.columns) + "|")
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")
    study_id = json.loads((folder / "ofexp-export.json").read_text(encoding="utf-8"))["study_run_id"]
    study = _run(folder, study_id)
    if study.get("end_time"):
        print(f"\nstudy run {study_id}: {(study['end_time'] - study['start_time']) / 1000.0:.0f} s from start to end")


if __name__ == "__main__":
    main()
