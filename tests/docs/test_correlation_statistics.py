"""docs/measures.md's correlation statistics are docs/results/correlation_statistics.py's output on the
committed study folders, verbatim; changing a committed value makes the check fail; and the width
study's committed granulated_kendall.csv is what the script's code recomputes from its results.csv."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

REPO = Path(__file__).resolve().parents[2]
RESULTS = Path("docs/results")
MEASURES = Path("docs/measures.md")
SCRIPT = RESULTS / "correlation_statistics.py"
TABLES = [("pooled", "fashion_mnist_vgg11_5seeds"), ("per-kind", "fashion_mnist_vgg11_5seeds"),
          ("granulated", "fashion_mnist_mlp_widths")]


def _table(root: Path, table: str, study: str) -> str:
    done = subprocess.run([sys.executable, str(root / SCRIPT), table, str(RESULTS / study)], capture_output=True,
                          text=True, cwd=root, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


def _missing(root: Path) -> list[str]:
    doc = (root / MEASURES).read_text(encoding="utf-8")
    return [f"{table} {study}" for table, study in TABLES if _table(root, table, study) not in doc]


def test_measures_md_holds_the_scripts_output():
    assert _missing(REPO) == []


def test_a_changed_committed_value_makes_the_check_fail(tmp_path):
    for part in (RESULTS, MEASURES):
        (tmp_path / part).parent.mkdir(parents=True, exist_ok=True)
        (shutil.copytree if (REPO / part).is_dir() else shutil.copy)(REPO / part, tmp_path / part)
    results = tmp_path / RESULTS / "fashion_mnist_mlp_widths" / "results.csv"
    frame = pd.read_csv(results)
    row = (frame["Model"] == "parent_1_w0.5_seed2") & (frame["Metric"] == "lipschitz_constant")
    assert row.sum() == 1
    frame.loc[row, "Value"] = 100.0  # now the largest lipschitz of its group (parent_1, seed 2): its τ, so ψ, moves
    frame.to_csv(results, index=False)
    assert _missing(tmp_path) == ["granulated fashion_mnist_mlp_widths"]


def test_the_committed_granulated_csv_is_the_recomputed_one():
    sys.path.insert(0, str(REPO / RESULTS))
    try:
        from correlation_statistics import TARGET, long_values
    finally:
        sys.path.pop(0)
    from ofexp.metrics import MEASURES as KNOWN
    from ofexp.pipeline.study.widths import granulated_width_table

    folder = REPO / RESULTS / "fashion_mnist_mlp_widths"
    recomputed = granulated_width_table(long_values(folder), TARGET)
    committed = pd.read_csv(folder / "granulated_kendall.csv", keep_default_na=False, na_values=["nan"])
    # results.csv names the input-space measure as the report does (lipschitz_constant); the study's CSV as ofexp does
    names = {m.report_name: m.name for m in KNOWN.values()}
    recomputed["measure"] = recomputed["measure"].map(lambda m: names.get(m, m))
    pd.testing.assert_frame_equal(recomputed.set_index("measure").sort_index(),
                                  committed.set_index("measure").sort_index(), check_dtype=False)
