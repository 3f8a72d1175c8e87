"""The committed width study travels: its `export/` imports into a fresh store, and `ofexp report --csv` on
the import writes the committed results.csv, prediction metrics, summary, correlations and granulated
table again, from the imported runs alone."""
from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from conftest import run_cli_in_process

pytestmark = pytest.mark.slow

FOLDER = Path(__file__).resolve().parents[2] / "docs" / "results" / "fashion_mnist_mlp_widths"
WRITTEN = {"r.csv": "results.csv", "r.prediction.csv": "prediction_metrics.csv", "r.summary.csv": "summary.csv",
           "r.correlations.csv": "correlations.csv", "r.granulated.csv": "granulated_kendall.csv"}


def test_the_committed_export_reports_the_committed_tables(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    imported = run_cli_in_process(["import", str(FOLDER / "export")], uri, capsys)
    assert imported.returncode == 0, imported.stderr[-2000:]
    study = imported.stdout.strip().splitlines()[-1]
    report = run_cli_in_process(["report", study, "--csv", str(tmp_path / "r.csv")], uri, capsys)
    assert report.returncode == 0, report.stderr[-2000:]
    assert "## granulated Kendall tau along width" in report.stdout
    for written, committed in WRITTEN.items():
        again = pd.read_csv(tmp_path / written, keep_default_na=False, na_values=["nan"])
        kept = pd.read_csv(FOLDER / committed, keep_default_na=False, na_values=["nan"])
        pd.testing.assert_frame_equal(again, kept, check_exact=False, rtol=1e-12, obj=committed)
