"""Rewrite a committed study's results.csv of the older form in the original study's form.

    python docs/results/original_form.py docs/results/fashion_mnist_vgg11_5seeds

ofexp before the original-form fix (commit 9852643 made these studies) wrote all five
prediction rows per model and the input-space measure as `lipschitz`; the original study's
loader takes each model's one prediction row as the metric it correlates every measure
with, and knows `lipschitz_constant`. This splits the file as `ofexp report --csv` does
today (ofexp.pipeline.study.report.report_frames, with the study's accuracy metric, `accuracy`):
results.csv keeps the `accuracy` rows, the input and parameter measures under the report's
names and their correlations; prediction_metrics.csv beside it gets the other prediction
values. Nothing is recomputed or dropped: the correlations of the prediction values
themselves stay in correlations.csv, as the study logged them.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from ofexp.pipeline.study.report import PREDICTION_FILE, RESULTS_FILE, report_files

ACCURACY_METRIC = "accuracy"  # the committed studies' --accuracy-metric (the default)


def rewrite(folder: Path) -> None:
    results = pd.read_csv(folder / RESULTS_FILE)
    if (folder / PREDICTION_FILE).exists():
        raise SystemExit(f"{folder / PREDICTION_FILE} exists: {folder} is in the original form already")
    files = report_files(results, ACCURACY_METRIC)
    (folder / PREDICTION_FILE).write_text(files[PREDICTION_FILE], encoding="utf-8")
    (folder / RESULTS_FILE).write_text(files[RESULTS_FILE], encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path, help="a study folder under docs/results/")
    rewrite(parser.parse_args().folder)


if __name__ == "__main__":
    main()
