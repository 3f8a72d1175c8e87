"""The five-seed VGG11 study travels to a real server: its committed `export/` (no weights) imports
into a fresh PostgreSQL-backed `mlflow server`, and `ofexp report --csv` on the import writes the
study's committed tables again, from the imported runs alone, with lineage that points at them."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient

from conftest import run_cli
from ofexp.tracking.names import TAG_IMPORTED_FROM, TAG_PARENTS

pytestmark = pytest.mark.slow

FOLDER = Path(__file__).resolve().parents[2] / "docs" / "results" / "fidelity_vgg11_5seeds" / "main"
WRITTEN = {"r.csv": "results.csv", "r.prediction.csv": "prediction_metrics.csv", "r.summary.csv": "summary.csv",
           "r.correlations.csv": "correlations.csv"}


@pytest.fixture(scope="module")
def imported(postgres_mlflow_server, tmp_path_factory) -> str:
    work = tmp_path_factory.mktemp("five-seed-import")
    result = run_cli(["import", str(FOLDER / "export")], tracking_uri=postgres_mlflow_server.uri, cwd=work,
                     timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def test_report_on_the_postgres_import_equals_the_committed_tables(postgres_mlflow_server, imported, tmp_path):
    report = run_cli(["report", imported, "--csv", str(tmp_path / "r.csv")], tracking_uri=postgres_mlflow_server.uri,
                     cwd=tmp_path, timeout=600)
    assert report.returncode == 0, report.stderr[-2000:]
    for written, committed in WRITTEN.items():
        again = pd.read_csv(tmp_path / written, keep_default_na=False, na_values=["nan"])
        kept = pd.read_csv(FOLDER / committed, keep_default_na=False, na_values=["nan"])
        pd.testing.assert_frame_equal(again, kept, check_exact=False, rtol=1e-12, obj=committed)


def test_the_imported_lineage_points_at_imported_runs(postgres_mlflow_server, imported):
    """Every fuse run's parents are runs of the import, each of which records where it came from."""
    manifest = json.loads((FOLDER / "export" / "ofexp-export.json").read_text(encoding="utf-8"))
    client = MlflowClient(postgres_mlflow_server.uri)
    study = client.get_run(imported)
    assert study.data.tags[TAG_IMPORTED_FROM] == manifest["study_run_id"]
    runs = client.search_runs([study.info.experiment_id], max_results=1000)
    ours = {run.info.run_id for run in runs}
    fused = [run for run in runs if TAG_PARENTS in run.data.tags]
    assert len(fused) >= 10  # 5 seeds x naive and geometric
    for run in fused:
        parents = set(run.data.tags[TAG_PARENTS].split(","))
        assert parents <= ours, run.info.run_name
