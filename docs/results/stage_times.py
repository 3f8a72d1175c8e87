"""Print the wall time of each stage of a study, from its step runs' start and end times.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python docs/results/stage_times.py STUDY_RUN_ID

Reads the study's steps.csv (every step's run ID, reused or new) and each step run's
start and end time through MLflow's client API; prints, per stage and model kind, how
many runs there were, their median and total wall time, and the study run's own.
"""
from __future__ import annotations

import argparse
import os
import tempfile

import mlflow
import pandas as pd


def stage_times(client: mlflow.MlflowClient, study_id: str) -> pd.DataFrame:
    with tempfile.TemporaryDirectory() as tmp:
        steps = pd.read_csv(client.download_artifacts(study_id, "steps.csv", tmp))
    rows = []
    for step in steps.itertuples():
        info = client.get_run(step.run_id).info
        seconds = (info.end_time - info.start_time) / 1000.0 if info.end_time else float("nan")
        kind = step.kind if step.stage != "train" or step.kind.startswith("parent") else "fine-tune"
        rows.append((step.stage, kind if step.stage != "evaluate" else "every model", seconds))
    frame = pd.DataFrame(rows, columns=["stage", "what", "seconds"])
    table = frame.groupby(["stage", "what"], sort=False)["seconds"].agg(["count", "median", "sum"])
    return table.rename(columns={"count": "runs", "median": "median_s", "sum": "total_s"}).round(1)


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("study_run_id")
    args = parser.parse_args()
    client = mlflow.MlflowClient()
    table = stage_times(client, args.study_run_id).reset_index()
    print("| " + " | ".join(table.columns) + " |")
    print("|---" * len(table.columns) + "|")
    for row in table.itertuples(index=False):
        print("| " + " | ".join(str(v) for v in row) + " |")
    info = client.get_run(args.study_run_id).info
    if info.end_time:
        print(f"\nstudy run {args.study_run_id}: {(info.end_time - info.start_time) / 1000.0:.0f} s from start to end")


if __name__ == "__main__":
    main()
