"""Print the fidelity table (docs/fashion_mnist.md) from the studies in an MLflow store.

    MLFLOW_TRACKING_URI=sqlite:///mlflow.db python docs/results/fidelity_table.py [--experiment fidelity-fmnist]

Each row is one configuration (architecture, width, batch-norm), each column one of
the paper's models, as test accuracy mean ± std over the seeds and, in brackets,
its ratio to the parents' mean. The values are read back from the finished study
runs' results.csv (the study's `--accuracy-metric accuracy` row of every model):

- the study with `--finetune-epochs`: parents, naive, geometric (activations),
  the ensemble, naive + fine-tuning, geometric + fine-tuning;
- the study with `--alignment weights`: geometric, weights;
- the study with `--repair`: activations + REPAIR.

The newest finished study of each kind counts. The study run IDs are printed under
the table, so every number can be traced to its runs in the UI.
"""
from __future__ import annotations

import argparse
import os
import re
import tempfile

import mlflow
import pandas as pd

COLUMNS = ("parents", "naive", "geometric, weights", "geometric, activations", "activations + REPAIR",
           "ensemble", "naive + fine-tuning", "geometric + fine-tuning")
# (which study, the model kind in its results.csv) -> the table's column
SOURCES = {("main", "parent"): "parents", ("main", "naive_fused"): "naive",
           ("weights", "geometric_fused"): "geometric, weights",
           ("main", "geometric_fused"): "geometric, activations",
           ("repair", "geometric_fused"): "activations + REPAIR", ("main", "ensemble"): "ensemble",
           ("main", "naive_finetuned"): "naive + fine-tuning",
           ("main", "geometric_finetuned"): "geometric + fine-tuning"}


def _study_kind(params: dict) -> str | None:
    if params.get("alignment") == "weights":
        return "weights"
    if str(params.get("repair")).lower() == "true":
        return "repair"
    return "main" if params.get("finetune_epochs") else None


def _accuracies(client: mlflow.MlflowClient, run_id: str) -> dict[str, list[float]]:
    """{model kind: [accuracy per seed]} from a study's results.csv ("parent" joins parent_1/2)."""
    with tempfile.TemporaryDirectory() as tmp:
        results = pd.read_csv(client.download_artifacts(run_id, "results.csv", tmp))
    rows = results[(results["Space"] == "prediction_space") & (results["Metric"] == "accuracy")]
    out: dict[str, list[float]] = {}
    for model, value in zip(rows["Model"], rows["Value"]):
        kind = re.sub(r"_seed\d+$", "", model)
        out.setdefault("parent" if kind.startswith("parent_") else kind, []).append(float(value))
    return out


def main() -> None:
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")  # stdout is the table
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fidelity-fmnist")
    args = parser.parse_args()
    client = mlflow.MlflowClient()
    experiment = client.get_experiment_by_name(args.experiment)
    studies = client.search_runs([experiment.experiment_id], "tags.`ofexp.stage` = 'study' and "
                                 "attributes.status = 'FINISHED'", order_by=["attributes.start_time ASC"])
    table: dict[tuple, dict[str, str]] = {}
    ids: dict[tuple, dict[str, str]] = {}
    for study in studies:  # oldest first: a newer study of the same kind replaces an older one
        p = study.data.params
        kind = _study_kind(p)
        if kind is None:
            continue
        if "," not in p["seeds"] or len([s for s in p["seeds"].split(",") if s]) < 2:
            continue  # one seed (a study run ahead of another to share its steps): no spread, no row
        config = (p["model"], p["width"], p["batchnorm"].lower() == "true", p["epochs"], p["seeds"])
        values = _accuracies(client, study.info.run_id)
        parents = pd.Series(values["parent"]).mean() if "parent" in values else None
        row = table.setdefault(config, {})
        for (source, model_kind), column in SOURCES.items():
            if source == kind and model_kind in values:
                v = pd.Series(values[model_kind])
                ratio = f" ({v.mean() / parents:.3f}×)" if parents and column != "parents" else ""
                row[column] = f"{v.mean():.4f} ± {v.std(ddof=1):.4f}{ratio}"
        ids.setdefault(config, {})[kind] = study.info.run_id
    print("| model | " + " | ".join(COLUMNS) + " |")
    print("|---" * (len(COLUMNS) + 1) + "|")
    for (model, width, bn, epochs, seeds), row in table.items():
        name = f"{model} w{width}{' BN' if bn else ''}, {epochs} epochs, seeds {seeds}"
        print(f"| {name} | " + " | ".join(row.get(c, "") for c in COLUMNS) + " |")
    print()
    for (model, width, bn, epochs, seeds), by_kind in ids.items():
        print(f"- {model} w{width}{' BN' if bn else ''}: " + ", ".join(f"{k} study `{i}`" for k, i in by_kind.items()))


if __name__ == "__main__":
    main()
