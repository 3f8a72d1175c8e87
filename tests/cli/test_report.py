"""`ofexp report` and `ofexp compare` against a real server: tables from the server alone."""
from __future__ import annotations

import contextlib
import io
import tempfile
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli, run_cli_in_process, using_tracking_uri

pytestmark = pytest.mark.slow

# The same tiny study as tests/pipeline/test_study.py: when both run, this one reuses its steps.
TINY = ["--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu",
        "--measures", "prediction", "--preset", "quick", "--experiment-name", "report-tests"]


@pytest.fixture(scope="module")
def study_id(mlflow_server) -> str:
    from ofexp.cli import main

    out = io.StringIO()
    with using_tracking_uri(mlflow_server.uri), contextlib.redirect_stdout(out):
        main(["study", *TINY, "--seeds", "2"])
    return out.getvalue().strip().splitlines()[-1]


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
