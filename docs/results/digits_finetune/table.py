"""Print docs/fusion.md's "Fusion vs ensemble and fine-tuning" table and the figures its prose
quotes from the committed files of the study beside this script alone (README.md gives the
command that made them):

    python docs/results/digits_finetune/table.py

results.csv gives the test accuracies (one row per model kind and seed), steps.csv maps each step
to its run, and export/ (the study's `ofexp export`, no weights) gives the runs' params (the
parents' and fine-tunings' seeds, epochs and learning rate) and the study run's duration.
tests/docs/test_digits_finetune_table.py compares this output with the page.
"""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

FOLDER = Path(__file__).resolve().parent
KINDS = ("parent_1", "parent_2", "ensemble", "naive_fused", "geometric_fused", "naive_finetuned",
         "geometric_finetuned")
HEADER = ("| seed | parent 1 | parent 2 | ensemble | naive | geometric | naive, fine-tuned | geometric, fine-tuned |\n"
          "|---|---|---|---|---|---|---|---|")


def accuracies(folder: Path = FOLDER) -> pd.DataFrame:
    """Test accuracy per seed (rows) and model kind (columns), unrounded."""
    results = pd.read_csv(folder / "results.csv")
    results = results[(results["Space"] == "prediction_space") & (results["Metric"] == "accuracy")]
    kind_seed = results["Model"].str.rsplit("_seed", n=1, expand=True)
    frame = pd.DataFrame({"kind": kind_seed[0], "seed": kind_seed[1].astype(int), "accuracy": results["Value"]})
    wide = frame.pivot(index="seed", columns="kind", values="accuracy")
    missing = [k for k in KINDS if k not in wide.columns]
    if missing:
        raise SystemExit(f"error: {folder / 'results.csv'} lacks the model kinds {', '.join(missing)}; "
                         "run the study of README.md again")
    return wide[list(KINDS)]


def table(wide: pd.DataFrame) -> str:
    lines = [HEADER]
    for seed, values in wide.iterrows():
        lines.append("| " + " | ".join([str(seed)] + [f"{v:.4f}" for v in values]) + " |")
    lines.append("| mean | " + " | ".join(f"{v:.4f}" for v in wide.mean()) + " |")
    return "\n".join(lines)


def run_params(folder: Path, run_id: str) -> dict:
    return json.loads((folder / "export" / "runs" / run_id / "run.json").read_text(encoding="utf-8"))["params"]


def setup(folder: Path = FOLDER) -> str:
    """The page's description of the runs, from the train runs' params in the export."""
    steps = pd.read_csv(folder / "steps.csv")
    train = steps[steps["stage"] == "train"].set_index(["seed", "kind"])["run_id"]
    seeds = sorted(steps["seed"].unique())
    parents = " and ".join("/".join(run_params(folder, train[(s, k)])["seed"] for k in ("parent_1", "parent_2"))
                           for s in seeds)
    tuned = {s: [run_params(folder, train[(s, k)]) for k in ("naive_finetuned", "geometric_finetuned")]
             for s in seeds}
    (epochs,) = {p["epochs"] for runs in tuned.values() for p in runs}
    (lr,) = {float(p["lr"]) for runs in tuned.values() for p in runs}
    # both fine-tunings of study seed s shuffle with torch seed 100·s
    same = all(int(p["seed"]) == 100 * s for s, runs in tuned.items() for p in runs)
    by_seed = "100·s" if same else "/".join(p["seed"] for runs in tuned.values() for p in runs)
    fused = steps[(steps["stage"] == "fuse") & (steps["kind"] == "geometric_fused")]["run_id"]
    (alignment,) = {run_params(folder, r)["alignment"] for r in fused}
    based = {"activations": "activation", "weights": "weight"}[alignment]
    return (f"parents with torch seeds {parents}, {based}-based geometric fusion, fine-tuning {epochs} epochs "
            f"at lr {lr:g} with shuffle seed {by_seed}")


def quoted_figures(wide: pd.DataFrame, folder: Path = FOLDER) -> list[str]:
    """The prose's figures, from the unrounded accuracies."""
    gap = wide["geometric_finetuned"] - wide["naive_finetuned"]
    mean = wide.mean()
    ahead = (gap.round(4) > 0).sum()
    parents = (mean["parent_1"] + mean["parent_2"]) / 2
    to_parents = mean["geometric_finetuned"] - parents
    study = json.loads((folder / "export" / "runs" / steps_study_id(folder) / "run.json").read_text(encoding="utf-8"))
    seconds = (study["end_time"] - study["start_time"]) / 1000
    return [
        f"Geometric-finetuned beats naive-finetuned in {ahead} of {len(gap)} seeds (mean "
        f"{mean['geometric_finetuned']:.3f} vs {mean['naive_finetuned']:.3f}, by "
        + " and ".join(f"{g:.3f}" for g in gap) + ")",
        f"comes within {mean['ensemble'] - mean['geometric_finetuned']:.3f} of the ensemble "
        f"({mean['ensemble']:.3f})",
        f"{abs(to_parents):.3f} {'below' if to_parents < 0 else 'above'} the parents' mean ({parents:.3f})",
        f"({seconds:.0f} s of study run",
    ]


def steps_study_id(folder: Path) -> str:
    """The study run: the one exported run that is no step of steps.csv."""
    steps = set(pd.read_csv(folder / "steps.csv")["run_id"])
    (study,) = [p.name for p in (folder / "export" / "runs").iterdir() if p.name not in steps]
    return study


def main() -> None:
    wide = accuracies()
    print(setup())
    print()
    print(table(wide))
    print()
    print("\n".join(quoted_figures(wide)))


if __name__ == "__main__":
    main()
