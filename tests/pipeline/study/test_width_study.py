"""`ofexp study --widths` against a real `mlflow server`: every seed's models at each width from the one
plan, the width in each train run's params, granulated_kendall.csv equal to scipy's τ recomputed from
results.csv, `ofexp report`'s granulated section, and reuse that never takes one width's run for another.

One tiny study (digits MLP, widths 0.125 and 0.25, 2 seeds, naive fusion only, 1 epoch: 24 steps) is
run through the CLI in this process; a second one at widths 0.25 and 0.5 checks the reuse.
"""
from __future__ import annotations

import contextlib
import io
from collections import Counter

import numpy as np
import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from conftest import run_cli_in_process, using_tracking_uri
from ofexp.metrics.granulated import GRANULATED_COLUMNS
from ofexp.pipeline.study.run import StudyConfig, parent_seed
from ofexp.pipeline.study.plan import plan
from ofexp.pipeline.study.widths import split_width

pytestmark = pytest.mark.slow

EXPERIMENT = "width-study-tests"
TINY = ["study", "--model", "mlp", "--epochs", "1", "--no-log-model", "--device", "cpu", "--method", "naive",
        "--seeds", "2", "--experiment-name", EXPERIMENT]
KINDS = ("parent_1", "parent_2", "naive_fused")


def _study(uri: str, widths: str) -> str:
    """The study's stdout: its result lines, then its run ID last."""
    from ofexp.cli import main

    out = io.StringIO()
    with using_tracking_uri(uri), contextlib.redirect_stdout(out):
        try:
            main([*TINY, "--widths", widths])
        except SystemExit as exc:
            assert not exc.code, f"ofexp study --widths {widths} exited {exc.code}"
    return out.getvalue().strip()


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    return MlflowClient(mlflow_server.uri)


@pytest.fixture(scope="module")
def printed(mlflow_server) -> str:
    return _study(mlflow_server.uri, "0.125,0.25")


@pytest.fixture(scope="module")
def study(printed, client):
    return client.get_run(printed.splitlines()[-1])


def _csv(client, run_id: str, path: str, tmp_path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, path, str(tmp_path)), dtype={"run_id": str})


def test_every_seed_is_made_at_each_width_with_the_same_torch_seeds(study, client, tmp_path):
    steps = _csv(client, study.info.run_id, "steps.csv", tmp_path)
    assert Counter(split_width(k)[1] for k in steps["kind"]) == {0.125: 12, 0.25: 12}  # 6 steps × 2 seeds each
    assert study.data.params["widths"] == "0.125,0.25" and "width" not in study.data.params
    for row in steps[steps["stage"] == "train"].itertuples():
        kind, width = split_width(row.kind)
        params = client.get_run(row.run_id).data.params
        assert float(params["width"]) == width
        assert params["seed"] == str(parent_seed(row.seed, int(kind[-1])))
    cfg = StudyConfig(seeds=(1, 2), widths=(0.125, 0.25))
    assert [s.inputs for s in plan(cfg) if s.kind == "naive_fused_w0.25"][0] == ("parent_1_w0.25", "parent_2_w0.25")


def test_each_kind_is_compared_with_the_parents_of_its_own_width(study, printed):
    mean = {k.removeprefix("summary/accuracy/").removesuffix("_mean"): v
            for k, v in study.data.metrics.items() if k.startswith("summary/accuracy/") and k.endswith("_mean")}
    lines = {line.split()[0]: line.split() for line in printed.splitlines() if line.split()}
    for width in ("0.125", "0.25"):
        parents = (mean[f"parent_1_w{width}"] + mean[f"parent_2_w{width}"]) / 2
        assert lines[f"naive_fused_w{width}"][-1] == f"{mean[f'naive_fused_w{width}'] / parents:.3f}"
    assert "divided by the parents' mean at the same width" in printed


def test_granulated_csv_is_scipys_tau_per_kind_and_seed_averaged(study, client, tmp_path):
    results = _csv(client, study.info.run_id, "results.csv", tmp_path)
    others = _csv(client, study.info.run_id, "prediction_metrics.csv", tmp_path)
    per_seed = pd.concat([results[results["Space"] != "correlation_space"], others])
    parts = per_seed["Model"].str.extract(r"^(?P<kind>.+)_w(?P<width>[0-9.]+)_seed(?P<seed>\d+)$")
    values = per_seed.assign(kind=parts["kind"], width=parts["width"].astype(float), seed=parts["seed"].astype(int))
    granulated = _csv(client, study.info.run_id, "granulated_kendall.csv", tmp_path)
    assert list(granulated.columns) == GRANULATED_COLUMNS
    for row in granulated.itertuples():
        taus = []
        for _, group in values.groupby(["kind", "seed"]):
            wide = group.pivot_table(index="width", columns="Metric", values="Value")
            if wide[row.measure].nunique() > 1 and wide["accuracy"].nunique() > 1:
                taus.append(stats.kendalltau(wide[row.measure], wide["accuracy"])[0])
        assert row.groups == len(taus) and row.groups + row.skipped == len(KINDS) * 2
        assert row.value == pytest.approx(np.mean(taus)) if taus else np.isnan(row.value)
        assert 0 < row.p_value <= 1 if taus else np.isnan(row.p_value)
    logged = client.get_run(study.info.run_id).data.metrics
    shown = granulated.dropna(subset=["value"]).iloc[0]
    assert logged[f"granulated/width/{shown.measure}"] == pytest.approx(shown.value)


def test_report_prints_the_granulated_table_and_writes_its_csv(study, mlflow_server, capsys, tmp_path):
    result = run_cli_in_process(["report", study.info.run_id, "--csv", str(tmp_path / "r.csv")],
                                mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    section = result.stdout.split("## granulated Kendall tau along width")[1]
    assert "groups" in section and "p_value" in section
    written = pd.read_csv(tmp_path / "r.granulated.csv", keep_default_na=False, na_values=["nan"])
    lines = [line.split() for line in section.splitlines() if line.strip().startswith("width ")]
    printed = {cells[1]: cells[2:] for cells in lines}
    # 6 groups (3 kinds × 2 seeds) of 2 widths: a perfect ordering has p = 2/2⁶ < 0.05, so rows with a value print
    for row in written.itertuples():
        if np.isnan(row.value) or row.note:
            assert row.measure not in printed and f"{row.measure}: {row.note}" in section
        else:
            value, p_value, groups = printed[row.measure][:3]
            assert (value, int(groups)) == (f"{round(row.value, 3) + 0.0:.3f}", row.groups)
            assert float(p_value) == pytest.approx(row.p_value, rel=1e-2)
    assert printed, "some measure has a meaningful granulated tau on this study"


def test_a_width_is_reused_only_for_that_width(study, mlflow_server, client):
    again = client.get_run(_study(mlflow_server.uri, "0.25,0.5").splitlines()[-1])
    assert again.data.metrics["steps/reused"] == 12 and again.data.metrics["steps/new"] == 12  # 0.25's, not 0.5's


def test_a_map_that_relabels_the_widths_is_refused(study, mlflow_server, client, capsys, tmp_path):
    # every kind of width 0.125 renamed to 0.25 and back: each row still agrees with its seed's parents,
    # seeds and inputs, so only the width the train runs recorded tells the two widths apart
    original = (tmp_path / "steps.csv")
    original.write_text(pd.read_csv(client.download_artifacts(study.info.run_id, "steps.csv", str(tmp_path / "d")),
                                    dtype={"run_id": str}).to_csv(index=False))
    steps = pd.read_csv(original, dtype={"run_id": str})
    swapped = steps["kind"].str.replace("_w0.125", "_wX", regex=False).str.replace("_w0.25", "_w0.125", regex=False)
    client.log_text(study.info.run_id, steps.assign(kind=swapped.str.replace("_wX", "_w0.25", regex=False))
                    .to_csv(index=False), "steps.csv")
    try:
        result = run_cli_in_process(["report", study.info.run_id], mlflow_server.uri, capsys)
    finally:
        client.log_text(study.info.run_id, original.read_text(), "steps.csv")
    assert result.returncode == 1 and "Traceback" not in result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert "which trained at width 0.125, not 0.25" in line or "which trained at width 0.25, not 0.125" in line
