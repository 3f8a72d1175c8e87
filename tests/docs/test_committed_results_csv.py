"""Every committed results.csv reads under the original study's rules (docs/design.md §5,
docs/study.md), applied here as that study's loader and correlation code apply them:

- the columns are `Model,Space,Metric,Value`, one value per row, no blank cell, every value a
  float (an undefined correlation written `nan`);
- `Space` is one of the four spaces; a per-seed row's `Model` is `<kind>_seed<k>`, a
  correlation row's is `<kind>`, and its `Metric` is `<kendall|pearson|spearman>_<measure>`;
- each model has exactly one `prediction_space` row: the loader unpacks it as *the* metric
  every other measure of the model is correlated with (two rows break the unpacking; a
  reader kept to one silently takes whichever it meets);
- the input-space measure is `lipschitz_constant`;
- the correlation code recomputes, per model kind across seeds, each measure's coefficient
  with that metric (scipy.stats), and finds the file's own correlation rows.
"""
from __future__ import annotations

import math
import shutil
from pathlib import Path

import pandas as pd
import pytest
from scipy import stats

REPO = Path(__file__).resolve().parents[2]
# A study's results.csv; an `ofexp export` folder also holds its runs' own artifacts, among them each
# evaluate run's one-model results.csv, which no correlation code reads
COMMITTED = sorted(p for p in (REPO / "docs" / "results").rglob("results.csv")
                   if "export" not in p.relative_to(REPO / "docs" / "results").parts)
SPACES = {"input_space", "parameter_space", "prediction_space", "correlation_space"}
METHODS = {"kendall": stats.kendalltau, "pearson": stats.pearsonr, "spearman": stats.spearmanr}


def original_reading(path: Path) -> list[str]:
    """What breaks when the original study reads `path`: [] when it reads and reproduces its correlations."""
    table = pd.read_csv(path, dtype=str, keep_default_na=False)
    if list(table.columns) != ["Model", "Space", "Metric", "Value"]:
        return [f"columns {list(table.columns)}"]
    problems = [f"blank cell in row {i + 2}" for i in table.index[(table == "").any(axis=1)]]
    try:
        table["Value"] = table["Value"].astype(float)
    except ValueError as exc:
        return problems + [f"a value is not a float ({exc})"]
    problems += [f"space {s!r}" for s in set(table["Space"]) - SPACES]
    per_seed = table[table["Space"] != "correlation_space"]
    parts = per_seed["Model"].str.extract(r"^(?P<kind>.+)_seed(?P<seed>\d+)$")
    problems += [f"model {m!r} is not <kind>_seed<k>" for m in per_seed["Model"][parts["kind"].isna()]]
    counts = per_seed[per_seed["Space"] == "prediction_space"].groupby("Model").size()
    problems += [f"{model} has {n} prediction_space rows, not 1" for model, n in counts.items() if n != 1]
    problems += [f"{m} has no prediction_space row" for m in set(per_seed["Model"]) - set(counts.index)]
    if "lipschitz" in set(per_seed["Metric"]):
        problems.append("the input-space measure is 'lipschitz', not 'lipschitz_constant'")
    if problems:
        return problems
    return problems + _correlations_reproduce(table, per_seed.assign(kind=parts["kind"], seed=parts["seed"]))


def _correlations_reproduce(table: pd.DataFrame, per_seed: pd.DataFrame) -> list[str]:
    target = per_seed[per_seed["Space"] == "prediction_space"].set_index("Model")["Value"]
    measures = per_seed[per_seed["Space"] != "prediction_space"]
    computed = {}
    for (kind, measure), rows in measures.groupby(["kind", "Metric"]):
        x, y = rows["Value"].to_numpy(), target[rows["Model"]].to_numpy()
        for method, function in METHODS.items():
            constant = len(x) < 2 or min(x) == max(x) or min(y) == max(y)
            computed[(kind, f"{method}_{measure}")] = math.nan if constant else float(function(x, y)[0])
    written = table[table["Space"] == "correlation_space"].set_index(["Model", "Metric"])["Value"].to_dict()
    problems = [f"no correlation row for {key}" for key in computed if key not in written]
    problems += [f"correlation row {key} names no measure of that kind" for key in written if key not in computed]
    for key in computed.keys() & written.keys():
        a, b = computed[key], written[key]
        if not (math.isnan(a) and math.isnan(b)) and not math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12):
            problems.append(f"{key}: the file says {b}, the seeds give {a}")
    return problems


def test_there_are_committed_results_files():
    assert {p.parent.name for p in COMMITTED} >= {"fashion_mnist_vgg11", "fashion_mnist_vgg11_5seeds"}


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(REPO / "docs" / "results")))
def test_a_committed_results_csv_reads_under_the_original_rules(path):
    assert original_reading(path) == []


@pytest.mark.parametrize("path", COMMITTED, ids=lambda p: str(p.parent.relative_to(REPO / "docs" / "results")))
def test_nothing_was_lost_from_it(path):
    """Every per-seed value of the study is in results.csv or prediction_metrics.csv beside it, and
    every correlation (the prediction values' too) in correlations.csv."""
    results = pd.read_csv(path)
    others = pd.read_csv(path.with_name("prediction_metrics.csv"))
    summary = pd.read_csv(path.with_name("summary.csv"))
    per_seed = pd.concat([results[results["Space"] != "correlation_space"], others])
    per_seed = per_seed.assign(Kind=per_seed["Model"].str.replace(r"_seed\d+$", "", regex=True),
                               Metric=per_seed["Metric"].replace({"lipschitz_constant": "lipschitz"}))
    means = per_seed.groupby(["Kind", "Metric"])["Value"].mean()
    expected = summary.set_index(["Kind", "Metric"])["mean"]
    assert sorted(means.index) == sorted(expected.index)
    assert means.reindex(expected.index).to_numpy() == pytest.approx(expected.to_numpy(), nan_ok=True)
    correlations = pd.read_csv(path.with_name("correlations.csv"))
    assert len(correlations) == len(correlations[["method", "measure", "model_kind"]].drop_duplicates())
    # a study with the input-space measure (--measures all) correlates it too
    with_lipschitz = {"lipschitz"} if (results["Metric"] == "lipschitz_constant").any() else set()
    assert set(correlations["measure"]) >= {"test_loss", "train_accuracy", *with_lipschitz}


@pytest.mark.parametrize("change, found", [
    (lambda t: pd.concat([t, t[t["Space"] == "prediction_space"].assign(Metric="test_loss", Value=0.3)]),
     "prediction_space rows, not 1"),
    (lambda t: t.replace({"Metric": {"lipschitz_constant": "lipschitz"}}), "'lipschitz'"),
    (lambda t: t.assign(Value=t["Value"].where(t["Metric"] != "kendall_hessian_trace", 0.5)), "kendall_hessian_trace"),
])
def test_the_rules_refuse_what_the_original_study_cannot_read(tmp_path, change, found):
    """The older form (five prediction rows per model, `lipschitz`) and a correlation that the seeds
    do not give are each caught, on a temporary copy of the five-seed file."""
    source = REPO / "docs" / "results" / "fashion_mnist_vgg11_5seeds" / "results.csv"
    copy = tmp_path / "results.csv"
    shutil.copy(source, copy)
    change(pd.read_csv(copy)).to_csv(copy, index=False, na_rep="nan")
    problems = original_reading(copy)
    assert problems and any(found in p for p in problems), problems
