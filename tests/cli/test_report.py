"""`ofexp report` and `ofexp compare` against a real server: tables from the server alone."""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from conftest import fake_model_steps, run_cli, run_cli_in_process, using_tracking_uri

pytestmark = pytest.mark.slow

# The same tiny study as tests/pipeline/study/test_study.py: when both run, this one reuses its steps.
TINY = ["--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu",
        "--measures", "prediction", "--preset", "quick", "--experiment-name", "report-tests"]


@pytest.fixture(scope="module")
def study_id(mlflow_server) -> str:
    from ofexp.cli import main

    out = io.StringIO()
    with using_tracking_uri(mlflow_server.uri), contextlib.redirect_stdout(out):
        main(["study", *TINY, "--seeds", "2"])
    return out.getvalue().strip().splitlines()[-1]


SYNTHETIC_KINDS = ("parent_1", "parent_2", "naive_fused", "geometric_fused")
N_ROWS = "per-kind correlations are not meaningful with n < 3"


def _synthetic_study(uri: str, seeds: int) -> tuple[str, dict[str, dict[tuple[str, int], float]]]:
    """A study run over `seeds` seeds of 4 kinds' evaluate runs with random measures, logged straight
    to the server (no training); (its ID, {metric key: {(kind, seed): value}})."""
    from mlflow.entities import Metric, Param

    client, rng = MlflowClient(uri), np.random.default_rng(seeds)
    experiment = client.create_experiment(f"report-synthetic-{seeds}-seeds")
    study = client.create_run(experiment, run_name="study synthetic", tags={"ofexp.stage": "study"}).info.run_id
    client.log_batch(study, params=[Param("accuracy_metric", "accuracy")])
    logged, steps = {}, []
    for seed in range(1, seeds + 1):
        model_rows, models = fake_model_steps(client, experiment, seed, SYNTHETIC_KINDS)
        steps += model_rows
        for kind in SYNTHETIC_KINDS:
            values = {"prediction/accuracy": rng.uniform(0.5, 0.9), "prediction/generalisation_gap": rng.uniform(5, 60),
                      "input/lipschitz": rng.uniform(1, 9)}
            run = client.create_run(experiment, run_name=f"s{seed} {kind} eval",
                                    tags={"mlflow.parentRunId": study, "ofexp.stage": "evaluate"}).info.run_id
            client.log_batch(run, metrics=[Metric(k, v, 0, 0) for k, v in values.items()],
                             params=[Param("model_run", models[kind])])
            client.set_terminated(run)
            steps.append((seed, kind, "evaluate", run, False))
            for key, value in values.items():
                logged.setdefault(key, {})[(kind, seed)] = value
    steps_csv = pd.DataFrame(steps, columns=["seed", "kind", "stage", "run_id", "reused"]).to_csv(index=False)
    client.log_text(study, steps_csv, "steps.csv")
    client.set_tag(study, "ofexp.kinds", ",".join(SYNTHETIC_KINDS))
    client.set_terminated(study)
    return study, logged


def _printed_rows(section: str) -> list[list[str]]:
    """The printed correlation rows' cells: method, measure, model_kind, value, n, p_value, ci95 (2 cells), note."""
    methods = (["kendall"], ["pearson"], ["spearman"])
    return [line.split() for line in section.splitlines() if line.split()[:1] in methods]


def test_report_with_two_seeds_says_in_one_line_that_per_kind_rows_mean_nothing(mlflow_server, tmp_path, capsys):
    study, logged = _synthetic_study(mlflow_server.uri, 2)
    out = tmp_path / "results.csv"
    result = run_cli_in_process(["report", study, "--csv", str(out)], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("## correlation with accuracy")[1]
    assert result.stdout.count(N_ROWS) == 1
    rows = _printed_rows(section)
    assert rows and all(row[2] == "pooled" and row[4] == "8" for row in rows), rows  # n = 4 kinds × 2 seeds
    # the CSV keeps the per-kind rows, with their note, and the statistics' columns
    table = pd.read_csv(tmp_path / "results.correlations.csv", keep_default_na=False, na_values=["nan"])
    assert list(table.columns) == ["method", "measure", "model_kind", "value", "n", "note", "p_value", "ci_low",
                                   "ci_high"]
    per_kind = table[table.model_kind != "pooled"]
    assert set(per_kind.model_kind) == set(SYNTHETIC_KINDS) and per_kind.note.str.contains("not meaningful").all()
    pooled = table[(table.model_kind == "pooled") & (table.measure == "lipschitz")].set_index("method")
    keys = sorted(logged["input/lipschitz"])
    x, y = [logged["input/lipschitz"][k] for k in keys], [logged["prediction/accuracy"][k] for k in keys]
    for method, fn in (("kendall", stats.kendalltau), ("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
        assert pooled.loc[method, "p_value"] == pytest.approx(fn(x, y)[1], rel=1e-9)
        assert pooled.loc[method, "ci_low"] <= pooled.loc[method, "ci_high"]


def test_report_with_three_seeds_prints_per_kind_rows_and_says_what_the_gap_is(mlflow_server, capsys):
    study, _ = _synthetic_study(mlflow_server.uri, 3)
    result = run_cli_in_process(["report", study], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr
    assert N_ROWS not in result.stdout
    section = result.stdout.split("## correlation with accuracy")[1]
    rows = _printed_rows(section)
    assert {row[2] for row in rows} == {*SYNTHETIC_KINDS, "pooled"}
    assert {row[4] for row in rows if row[2] == "pooled"} == {"12"}  # n = 4 kinds × 3 seeds
    assert "p_value" in section and "ci95" in section
    assert "generalisation_gap_pct" in result.stdout and "percentage points" in result.stdout


def _steps(client, study_id: str) -> dict[tuple[str, int, str], str]:
    """The study's step map from its steps.csv: (kind, seed, stage) -> run ID."""
    with tempfile.TemporaryDirectory() as tmp:
        steps = pd.read_csv(client.download_artifacts(study_id, "steps.csv", tmp), dtype={"run_id": str})
    return {(r.kind, int(r.seed), r.stage): r.run_id for r in steps.itertuples()}


def test_report_in_a_fresh_process_rebuilds_the_logged_tables(mlflow_server, study_id, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    logged = Path(client.download_artifacts(study_id, "results.csv", str(tmp_path)))
    logged_summary = pd.read_csv(client.download_artifacts(study_id, "summary.csv", str(tmp_path)))
    out = tmp_path / "out" / "results.csv"
    out.parent.mkdir()
    result = run_cli(["report", study_id, "--csv", str(out)], tracking_uri=mlflow_server.uri, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert out.read_text() == logged.read_text(), "the same table, value for value, from the server alone"
    pd.testing.assert_frame_equal(pd.read_csv(out.parent / "results.summary.csv"), logged_summary)
    correlations = pd.read_csv(out.parent / "results.correlations.csv")
    assert set(correlations["method"]) == {"kendall", "pearson", "spearman"}
    assert study_id in result.stdout and "## summary over seeds" in result.stdout
    # the printed per-seed table holds the logged accuracy of every model
    table = pd.read_csv(logged)
    for row in table[table.Metric == "accuracy"].itertuples():
        assert row.Model in result.stdout and f"{row.Value:.6f}" in result.stdout


def test_report_takes_the_study_run_option_and_refuses_other_runs(mlflow_server, study_id, capsys):
    client = MlflowClient(mlflow_server.uri)
    ok = run_cli_in_process(["report", "--study-run", study_id], mlflow_server.uri, capsys)
    assert ok.returncode == 0 and "## results" in ok.stdout
    train_id = next(v for k, v in _steps(client, study_id).items() if k[2] == "train")
    bad = run_cli_in_process(["report", train_id], mlflow_server.uri, capsys)
    assert bad.returncode != 0 and "not a study run" in bad.stderr and "Traceback" not in bad.stderr
    missing = run_cli_in_process(["report", "0" * 32], mlflow_server.uri, capsys)
    assert missing.returncode != 0 and "0" * 32 in missing.stderr


def test_compare_puts_runs_side_by_side(mlflow_server, study_id, capsys):
    client = MlflowClient(mlflow_server.uri)
    steps = _steps(client, study_id)
    p1, p2 = steps[("parent_1", 1, "train")], steps[("parent_2", 1, "train")]
    result = run_cli_in_process(["compare", p1, p2], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr
    lines = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines()[1:] if line.strip()}
    assert lines["param.seed"] == ["101", "102"] and lines["param.lr"] == ["0.1", "0.1"]
    accuracy = [client.get_run(r).data.metrics["prediction/accuracy"] for r in (p1, p2)]
    assert [float(v) for v in lines["metric.prediction/accuracy"]] == pytest.approx(accuracy, abs=1e-6)
    differences = run_cli_in_process(["compare", f"{p1},{p2}", "--differences"], mlflow_server.uri, capsys)
    rows = {line.split()[0] for line in differences.stdout.splitlines()[1:]}
    assert "param.seed" in rows and "param.lr" not in rows
    unknown = run_cli_in_process(["compare", p1, "f" * 32], mlflow_server.uri, capsys)
    assert unknown.returncode != 0 and "f" * 32 in unknown.stderr


def test_report_csv_keeps_existing_files_unless_forced(mlflow_server, study_id, tmp_path, capsys):
    client = MlflowClient(mlflow_server.uri)
    logged = Path(client.download_artifacts(study_id, "results.csv", str(tmp_path)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.correlations.csv").write_bytes(b"my own table\n")  # only the side file exists
    args = ["report", study_id, "--csv", str(out / "results.csv")]
    refused = run_cli_in_process(args, mlflow_server.uri, capsys)
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    (line,) = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert str(out / "results.correlations.csv") in line and "--force" in line
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {"results.correlations.csv": b"my own table\n"}
    forced = run_cli_in_process([*args, "--force"], mlflow_server.uri, capsys)
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["results.correlations.csv", "results.csv",
                                                     "results.prediction.csv", "results.summary.csv"]
    assert (out / "results.csv").read_text() == logged.read_text()
    assert set(pd.read_csv(out / "results.correlations.csv")["method"]) == {"kendall", "pearson", "spearman"}
    experiment_id = client.get_run(study_id).info.experiment_id
    assert client.search_runs([experiment_id], filter_string="attributes.status = 'RUNNING'") == []
