"""The benchmarks still run against today's code: a bench that nobody runs rots silently.

Each bench area that takes a few seconds in `--quick` mode is run through `python -m bench`'s
own entry point (`bench.run.main`, in this process: no second interpreter start-up), one
repeat, on the CPU; it must finish and print a row with a ratio for every result it records.
Nothing is timed here: the speeds belong to the benches themselves.

Not run here (each takes from 25 s to minutes even in quick mode, docs/performance.md):
tracking, measures, report (its server and 141 runs; its synthetic study is checked below),
ui, startup, quickstart, fashion_mnist, and the Slurm benches slurm and slurm_step; these
are only imported.
"""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from conftest import using_tracking_uri

pytestmark = pytest.mark.slow

# the areas whose quick mode takes a few seconds each on 2 shared cores
QUICK_AREAS = ("fusion", "transport", "any_model", "training")


def test_every_bench_module_imports_and_defines_run():
    """The benches too long to run here still import against today's code (moved or renamed
    modules and names fail here) and define the run(quick, repeats) that `python -m bench` calls."""
    import importlib
    import inspect

    from bench.run import MODULES

    for area in MODULES:
        module = importlib.import_module(f"bench.bench_{area}")
        assert list(inspect.signature(module.run).parameters) == ["quick", "repeats"], area


@pytest.mark.parametrize("area", QUICK_AREAS)
def test_quick_bench_finishes_and_prints_a_ratio_per_result(area, tmp_path, capsys, monkeypatch):
    from bench.run import main

    # main sets this default for its own process; here it must not outlive the test
    monkeypatch.setenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    out = tmp_path / "results.json"
    main(["--quick", "--only", area, "--repeats", "1", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out.splitlines()
    results = json.loads(out.read_text())["results"]
    assert results, f"bench {area} recorded no result"
    for result in results:
        assert result["ratio"] is not None and math.isfinite(result["ratio"]) and result["ratio"] > 0, result
        assert any(result["name"][:30] in line for line in printed), (result["name"], printed)


def test_report_bench_logs_a_study_that_ofexp_report_accepts(tmp_path):
    """The report bench's synthetic study (here 2 seeds, in a SQLite store instead of its server)
    passes `ofexp report`'s check of steps.csv against the runs, and the report gives back
    exactly the values it logged (check_report raises otherwise)."""
    import mlflow

    from bench.bench_report import check_report, log_study
    from ofexp.metrics import MEASURES

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    with using_tracking_uri(uri):
        study_id, logged = log_study(mlflow.MlflowClient(uri), 2, np.random.default_rng(0))
        check_report(study_id, logged, tmp_path)
    assert len(logged) == 2 * 4 * len(MEASURES)  # 2 seeds x parents, naive and geometric fused
    assert (tmp_path / "results.csv").exists()
