"""The study's tables from its runs' values (no server): results.csv format, summary, step index."""
from __future__ import annotations

import io

import pandas as pd
import pytest

from scipy import stats

from ofexp.pipeline.study.report import (STEP_COLUMNS, build_tables, correlation_metrics, correlation_notes, correlation_view,
                                   kinds_tag, report_files, steps_from_csv, study_kinds, with_gap_percent)
from ofexp.tracking.queries import RunData

KINDS = ("parent_1", "naive_fused")


def _fixture(accuracy: dict, lipschitz: dict, test_loss: dict | None = None):
    """Steps and evaluate runs for kinds × seeds with the given {(kind, seed): value} metrics."""
    steps, runs = [], {}
    for (kind, seed), acc in accuracy.items():
        run_id = f"{kind}{seed}".replace("_", "")
        metrics = {"prediction/accuracy": acc}
        if test_loss and (kind, seed) in test_loss:
            metrics["prediction/test_loss"] = test_loss[(kind, seed)]
        if (kind, seed) in lipschitz:
            metrics["input/lipschitz"] = lipschitz[(kind, seed)]
        runs[run_id] = RunData(run_id, "", "FINISHED", "1", 0, {}, metrics, {"mlflow.parentRunId": "study"})
        steps.append((seed, kind, "evaluate", run_id, False))
    return pd.DataFrame(steps, columns=STEP_COLUMNS), runs


def test_results_csv_has_seed_rows_then_correlation_rows_with_nan_written_out():
    accuracy = {("parent_1", 1): 0.9, ("parent_1", 2): 0.8, ("parent_1", 3): 0.7,
                ("naive_fused", 1): 0.5, ("naive_fused", 2): 0.5, ("naive_fused", 3): 0.5}  # constant: undefined
    lipschitz = {("parent_1", 1): 1.0, ("parent_1", 2): 3.0, ("parent_1", 3): 2.0,
                 ("naive_fused", 1): 1.0, ("naive_fused", 2): 2.0, ("naive_fused", 3): 3.0}
    steps, runs = _fixture(accuracy, lipschitz)
    tables = build_tables(steps, runs, "accuracy")
    text = report_files(tables.results, "accuracy")["results.csv"]
    parsed = pd.read_csv(io.StringIO(text))
    assert list(parsed.columns) == ["Model", "Space", "Metric", "Value"]
    assert ",," not in text and text.count(",nan") == 3  # the 3 undefined naive_fused correlations
    seed_rows = parsed[parsed.Space != "correlation_space"]
    assert seed_rows.Model.tolist()[:2] == ["parent_1_seed1", "parent_1_seed1"]
    assert set(seed_rows.Space) == {"prediction_space", "input_space"}
    corr = parsed[parsed.Space == "correlation_space"].set_index(["Model", "Metric"])["Value"]
    assert corr[("parent_1", "spearman_lipschitz_constant")] == pytest.approx(-0.5)
    assert set(corr.index.get_level_values("Model")) == set(KINDS)
    # NaN is noted, not logged as a metric
    assert not any("naive_fused" in k for k in correlation_metrics(tables.correlations))
    assert len(correlation_notes(tables.correlations)) == 3
    summary = tables.summary
    assert summary.loc[("parent_1", "accuracy"), "mean"] == pytest.approx(0.8)
    assert summary.loc[("parent_1", "accuracy"), "count"] == 3


def read_like_the_original_study(text: str) -> dict[str, dict[str, float]]:
    """The original study's reading of results.csv, written from its rules: each model's one
    prediction_space row is *the* target metric, every other row of the model a measure to
    correlate with it, and correlations recomputed per model kind across seeds."""
    table = pd.read_csv(io.StringIO(text))
    per_seed = table[table.Space != "correlation_space"]
    target = per_seed[per_seed.Space == "prediction_space"].set_index("Model")["Value"]
    assert target.index.is_unique, "more than one prediction_space row for a model"
    measures = per_seed[per_seed.Space != "prediction_space"]
    kinds = measures.Model.str.replace(r"_seed\d+$", "", regex=True)
    out: dict[str, dict[str, float]] = {}
    for (kind, metric), rows in measures.groupby([kinds, "Metric"]):
        values = rows.set_index("Model")["Value"]
        out.setdefault(kind, {})[f"kendall_{metric}"] = stats.kendalltau(values, target[values.index])[0]
    return out


def test_results_csv_reads_right_with_the_original_studys_rules():
    accuracy = {("parent_1", s): a for s, a in ((1, 0.9), (2, 0.8), (3, 0.7))}
    lipschitz = {("parent_1", s): v for s, v in ((1, 1.0), (2, 3.0), (3, 2.0))}
    # test loss falls as accuracy rises: read as *the* target, it would flip every sign
    test_loss = {("parent_1", s): v for s, v in ((1, 0.1), (2, 0.2), (3, 0.3))}
    steps, runs = _fixture(accuracy, lipschitz, test_loss)
    files = report_files(build_tables(steps, runs, "accuracy").results, "accuracy")
    table = pd.read_csv(io.StringIO(files["results.csv"]))
    per_model = table[table.Space == "prediction_space"].groupby("Model").size()
    assert per_model.tolist() == [1, 1, 1] and set(table[table.Space == "prediction_space"].Metric) == {"accuracy"}
    assert "lipschitz_constant" in set(table.Metric) and "lipschitz" not in set(table.Metric)
    read = read_like_the_original_study(files["results.csv"])
    logged = table[table.Space == "correlation_space"].set_index(["Model", "Metric"])["Value"]
    assert read["parent_1"]["kendall_lipschitz_constant"] == pytest.approx(logged[("parent_1", "kendall_lipschitz_constant")])
    assert read["parent_1"]["kendall_lipschitz_constant"] == pytest.approx(stats.kendalltau([1, 3, 2], [0.9, 0.8, 0.7])[0])
    # the other prediction values are kept, in the same columns, beside it
    others = pd.read_csv(io.StringIO(files["prediction_metrics.csv"]))
    assert {(r.Model, r.Metric): r.Value for r in others.itertuples()} == {
        (f"parent_1_seed{s}", "test_loss"): v for (_, s), v in test_loss.items()}


def test_the_step_map_round_trips_through_steps_csv_in_the_studys_order():
    steps, _ = _fixture({("parent_1", 1): 0.9, ("naive_fused", 1): 0.5}, {})
    steps.loc[steps["kind"] == "naive_fused", "reused"] = True
    steps["run_id"] = ["0123", "4567"]  # IDs of digits only stay strings, not numbers
    back = steps_from_csv(steps.to_csv(index=False), study_kinds(kinds_tag(steps)))
    assert back.values.tolist() == steps.values.tolist()
    assert back.set_index("kind")["reused"].to_dict() == {"parent_1": False, "naive_fused": True}
    with pytest.raises(ValueError, match="steps.csv lacks column 'run_id'"):
        steps_from_csv(steps.drop(columns="run_id").to_csv(index=False))


def test_step_run_names_differ_within_what_the_runs_table_shows():
    from ofexp.pipeline.study.report import step_run_name

    steps = [(kind, stage) for kind in ("parent_1", "parent_2") for stage in ("train", "evaluate")]
    steps += [(kind, stage) for kind in ("naive_fused", "geometric_fused", "naive_finetuned", "geometric_finetuned")
              for stage in ("fuse" if kind.endswith("fused") else "train", "evaluate")]
    steps += [("ensemble", "ensemble"), ("ensemble", "evaluate")]
    names = [step_run_name(3, kind, stage) for kind, stage in steps]
    assert len({name[:15] for name in names}) == len(names), sorted(names)
    assert max(len(name) for name in names) <= 20
    assert step_run_name(3, "geometric_fused", "fuse") == "s3 geometric fuse"


def _seeds_fixture(seeds: int):
    """parent_1 and naive_fused over `seeds` seeds, accuracy and lipschitz varying with the seed."""
    models = [(i, k, s) for i, k in enumerate(KINDS) for s in range(1, seeds + 1)]
    accuracy = {(k, s): 0.5 + 0.1 * s - 0.05 * (s % 2) + 0.2 * i for i, k, s in models}
    lipschitz = {(k, s): 1.0 + s * s - 0.5 * i for i, k, s in models}
    return _fixture(accuracy, lipschitz)


def test_pooled_correlations_cover_every_model_and_stay_out_of_results_csv():
    steps, runs = _seeds_fixture(3)
    tables = build_tables(steps, runs, "accuracy")
    pooled = tables.correlations[tables.correlations.model_kind == "pooled"]
    assert len(pooled) == 3 and (pooled["n"] == len(KINDS) * 3).all()  # 3 methods, n = kinds × seeds
    assert tables.correlations.model_kind.tolist()[-1] == "pooled"  # after the kinds
    assert pooled[["p_value", "ci_low", "ci_high"]].notna().all().all()
    assert "pooled" not in set(tables.results.Model)
    assert {"corr/kendall/lipschitz/pooled"} <= set(correlation_metrics(tables.correlations))


def test_the_report_leaves_out_per_kind_rows_from_two_seeds_in_one_line():
    lines, view = correlation_view(build_tables(*_seeds_fixture(2), "accuracy").correlations)
    (line,) = lines
    assert "not meaningful with n < 3" in line and "correlations.csv keeps them" in line
    assert set(view.model_kind) == {"pooled"} and (view.n == 4).all()  # 2 kinds × 2 seeds
    lines, view = correlation_view(build_tables(*_seeds_fixture(3), "accuracy").correlations)
    assert lines == [] and set(view.model_kind) == {*KINDS, "pooled"}
    assert list(view.columns) == ["method", "measure", "model_kind", "value", "n", "p_value", "ci95", "note"]
    assert view.ci95.str.fullmatch(r"\[-?\d\.\d\d, -?\d\.\d\d\]").all()


def test_the_report_prints_a_correlations_table_of_the_older_columns():
    old = pd.DataFrame([("kendall", "test_loss", "parent_1", -0.67, 5, "")],
                       columns=["method", "measure", "model_kind", "value", "n", "note"])
    lines, view = correlation_view(old)
    assert lines == [] and view.iloc[0][["value", "p_value", "ci95"]].tolist() == ["-0.670", "nan", "nan"]


def test_the_generalisation_gap_is_shown_in_percentage_points_beside_its_reciprocal():
    per_seed = pd.DataFrame([("parent_1_seed1", "prediction_space", "accuracy", 0.9),
                             ("parent_1_seed1", "prediction_space", "generalisation_gap", 52.0),
                             ("parent_1_seed2", "prediction_space", "generalisation_gap", float("inf"))],
                            columns=["Model", "Space", "Metric", "Value"])
    shown = with_gap_percent(per_seed)
    assert shown.Metric.tolist() == ["accuracy", "generalisation_gap", "generalisation_gap_pct",
                                     "generalisation_gap", "generalisation_gap_pct"]
    assert shown.Value.tolist()[2] == pytest.approx(100 / 52) and shown.Value.tolist()[4] == 0.0
