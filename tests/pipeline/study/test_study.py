"""The study against a real `mlflow server`: nesting, results.csv, correlations, reuse, resume, --jobs.

One tiny two-seed study (MLP width 0.125, 1 epoch, the prediction measures, quick
preset) is run through the CLI in this process; the other tests rerun it with
one thing changed and count the runs each rerun created.
"""
from __future__ import annotations

import contextlib
from collections import Counter
import io
import math
import os
import signal
import subprocess
import tempfile
import time

import pandas as pd
import pytest
from mlflow.tracking import MlflowClient
from scipy import stats

from conftest import BIN, using_tracking_uri
from ofexp.metrics import MEASURES
from ofexp.pipeline.study.run import MODEL_KINDS, StudyConfig, parent_seed, planned_steps

pytestmark = pytest.mark.slow

EXPERIMENT = "study-tests"
TINY = ["--model", "mlp", "--width", "0.125", "--epochs", "1", "--no-log-model", "--device", "cpu",
        "--measures", "prediction", "--preset", "quick", "--experiment-name", EXPERIMENT]
STEP_STAGES = ("train", "fuse", "evaluate")


def ofexp(uri: str, *args: str) -> str:
    """Run `ofexp ARGS` in this process (no start-up cost); return stdout's last line."""
    from ofexp.cli import main

    out = io.StringIO()
    with using_tracking_uri(uri), contextlib.redirect_stdout(out):
        try:
            main(list(args))
        except SystemExit as exc:
            assert not exc.code, f"ofexp {' '.join(args)} exited {exc.code}"
    return out.getvalue().strip().splitlines()[-1]


@pytest.fixture(scope="module")
def client(mlflow_server) -> MlflowClient:
    return MlflowClient(mlflow_server.uri)


@pytest.fixture(scope="module")
def study(mlflow_server, client):
    """The reference study: seeds 1 and 2, run once."""
    return client.get_run(ofexp(mlflow_server.uri, "study", *TINY, "--seeds", "2"))


def _step_runs(client, experiment_id: str) -> dict[str, set[str]]:
    """{stage: IDs of every train, fuse and evaluate run of the experiment}."""
    runs = client.search_runs([experiment_id], max_results=1000)
    return {s: {r.info.run_id for r in runs if r.data.tags.get("ofexp.stage") == s} for s in STEP_STAGES}


def _new_runs(client, experiment_id: str, action) -> tuple[str, dict[str, set[str]]]:
    before = _step_runs(client, experiment_id)
    result = action()
    after = _step_runs(client, experiment_id)
    return result, {s: after[s] - before[s] for s in STEP_STAGES}


def _steps(client, run) -> dict[tuple[str, int, str], str]:
    """The study's step map: (kind, seed, stage) -> run ID, from its steps.csv."""
    with tempfile.TemporaryDirectory() as tmp:
        steps = pd.read_csv(client.download_artifacts(run.info.run_id, "steps.csv", tmp), dtype={"run_id": str})
    return {(r.kind, int(r.seed), r.stage): r.run_id for r in steps.itertuples()}


def _csv(client, run_id: str, path: str, tmp_path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, path, str(tmp_path)))


def test_the_study_nests_every_step_and_chains_them_by_run_id(study, client):
    assert study.info.status == "FINISHED" and study.data.tags["ofexp.stage"] == "study"
    children = client.search_runs([study.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{study.info.run_id}'", max_results=100)
    by_id = {r.info.run_id: r for r in children}
    steps = _steps(client, study)
    assert set(steps.values()) == set(by_id), "every child is indexed, and every indexed step is a child"
    # the step map is one artifact, steps.csv, not a tag per step on the study run
    assert not [k for k in study.data.tags if k.startswith("ofexp.step")]
    assert sorted(k for k in steps) == sorted((k, s, st) for s in (1, 2) for k, st in
                                             [("parent_1", "train"), ("parent_2", "train"), ("naive_fused", "fuse"),
                                              ("geometric_fused", "fuse")] + [(k, "evaluate") for k in MODEL_KINDS])
    assert all(r.info.status == "FINISHED" for r in children)
    for seed in (1, 2):
        parents = [steps[(f"parent_{i}", seed, "train")] for i in (1, 2)]
        assert [by_id[p].data.params["seed"] for p in parents] == [str(parent_seed(seed, i)) for i in (1, 2)]
        for method in ("naive", "geometric"):
            fuse = by_id[steps[(f"{method}_fused", seed, "fuse")]]
            assert fuse.data.tags["ofexp.parent_run_ids"] == ",".join(parents)
            assert fuse.data.params["method"] == method
        for kind in MODEL_KINDS:
            model_run = steps[(kind, seed, "train" if kind.startswith("parent") else "fuse")]
            assert by_id[steps[(kind, seed, "evaluate")]].data.tags["ofexp.model_run_id"] == model_run
    assert study.data.metrics["steps/reused"] == 0 and study.data.metrics["steps/new"] == 16
    # the progress line's plan ("study step i/N") counts exactly the steps the study made
    assert Counter((kind, stage) for kind, _, stage in steps) == Counter(planned_steps(StudyConfig(), (1, 2)))


def test_results_csv_holds_exactly_the_logged_values_and_scipy_correlations(study, client, tmp_path):
    # results.csv in the original study's form: one prediction_space row per model (the study's
    # --accuracy-metric); the other prediction values in prediction_metrics.csv
    results = _csv(client, study.info.run_id, "results.csv", tmp_path)
    others = _csv(client, study.info.run_id, "prediction_metrics.csv", tmp_path)
    assert list(results.columns) == list(others.columns) == ["Model", "Space", "Metric", "Value"]
    assert results.notna().all().all(), "no blank cells ('nan' parses as a float)"
    steps = _steps(client, study)
    logged = {}
    for (kind, seed, stage), run_id in steps.items():
        if stage == "evaluate":
            metrics = client.get_run(run_id).data.metrics
            for name in ("accuracy", "test_loss", "train_accuracy", "train_loss", "generalisation_gap"):
                logged[(f"{kind}_seed{seed}", MEASURES[name].csv_space, name)] = metrics[MEASURES[name].metric_key]
    per_seed = results[results.Space != "correlation_space"]
    assert {(r.Model, r.Space, r.Metric): r.Value for r in per_seed.itertuples()} == {
        k: v for k, v in logged.items() if k[2] == "accuracy"}  # exact, not approx
    assert {(r.Model, r.Space, r.Metric): r.Value for r in others.itertuples()} == {
        k: v for k, v in logged.items() if k[2] != "accuracy"}
    # --measures prediction: nothing but prediction values, so results.csv correlates nothing
    assert not (results.Space == "correlation_space").any()

    correlations = _csv(client, study.info.run_id, "correlations.csv", tmp_path)
    assert set(correlations.model_kind) == {*MODEL_KINDS, "pooled"}  # pooled: every model across seeds
    pooled = correlations[correlations.model_kind == "pooled"]
    assert (pooled.n == len(MODEL_KINDS) * 2).all()
    for kind in MODEL_KINDS:
        accuracy = [logged[(f"{kind}_seed{s}", "prediction_space", "accuracy")] for s in (1, 2)]
        loss = [logged[(f"{kind}_seed{s}", "prediction_space", "test_loss")] for s in (1, 2)]
        for method, fn in (("kendall", stats.kendalltau), ("pearson", stats.pearsonr), ("spearman", stats.spearmanr)):
            expected = fn(loss, accuracy)[0]
            (value,) = correlations[(correlations.model_kind == kind) & (correlations.method == method)
                                    & (correlations.measure == "test_loss")].value
            assert value == pytest.approx(expected, abs=1e-12)
            assert study.data.metrics[f"corr/{method}/test_loss/{kind}"] == pytest.approx(expected, abs=1e-12)
    artifacts = {f.path for f in client.list_artifacts(study.info.run_id, "plots")}
    assert {"plots/accuracy.png", "plots/correlation_kendall.png"} <= artifacts
    geometric = client.get_run(_steps(client, study)[("geometric_fused", 1, "fuse")])
    if any(k.startswith("interp/") for k in geometric.data.metrics):  # fuse runs log curves by default
        assert "plots/interpolation.png" in artifacts


def test_a_rerun_creates_no_step_run_and_a_changed_measure_only_new_evaluations(study, client, mlflow_server):
    experiment_id = study.info.experiment_id
    rerun_id, new = _new_runs(client, experiment_id, lambda: ofexp(mlflow_server.uri, "study", *TINY, "--seeds", "2"))
    assert new == {s: set() for s in STEP_STAGES}
    rerun = client.get_run(rerun_id)
    assert _steps(client, rerun) == _steps(client, study) and rerun.data.metrics["steps/reused"] == 16
    assert rerun.data.metrics == study.data.metrics | {"steps/reused": 16.0, "steps/new": 0.0}

    changed = [a if a != "prediction" else "accuracy" for a in TINY]  # --measures changed
    other_id, new = _new_runs(client, experiment_id, lambda: ofexp(mlflow_server.uri, "study", *changed, "--seeds", "2"))
    assert not new["train"] and not new["fuse"] and len(new["evaluate"]) == 8
    other = _steps(client, client.get_run(other_id))
    assert {k: v for k, v in other.items() if k[2] != "evaluate"} == {k: v for k, v in _steps(client, study).items()
                                                                     if k[2] != "evaluate"}


def _finished_steps(client, experiment_id: str) -> dict[str, set[str]]:
    runs = client.search_runs([experiment_id], "attributes.status = 'FINISHED'", max_results=1000)
    return {s: {r.info.run_id for r in runs if r.data.tags.get("ofexp.stage") == s} for s in STEP_STAGES}


def test_a_study_sigkilled_after_training_resumes_at_fusion(client, mlflow_server, tmp_path):
    """A real `ofexp study` process is SIGKILLed once its parents have trained; the rerun trains nothing."""
    experiment = "study-killed"
    options = [*TINY[:-1], experiment, "--method", "naive", "--seeds", "1"]
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.uri, "OMP_NUM_THREADS": "1"}
    env.pop("MLFLOW_RUN_ID", None)
    proc = subprocess.Popen([str(BIN / "ofexp"), "study", *options], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while True:
            found = client.get_experiment_by_name(experiment)
            if found and len(_finished_steps(client, found.experiment_id)["train"]) == 2:
                break
            assert proc.poll() is None, "the study ended before it could be killed"
            assert time.monotonic() < deadline, "the study's parents did not finish training in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    experiment_id = found.experiment_id
    before = _finished_steps(client, experiment_id)
    assert len(before["evaluate"]) < 3, "killed before the study got through its steps"

    study_id, new = _new_runs(client, experiment_id, lambda: ofexp(mlflow_server.uri, "study", *options))
    assert not new["train"], "the rerun trains nothing: it resumes at fusion"
    steps = _steps(client, client.get_run(study_id))
    assert {steps[(f"parent_{i}", 1, "train")] for i in (1, 2)} == before["train"]
    made = {run_id for (_, _, stage), run_id in steps.items() if stage != "train"}
    assert len(made) == 1 + 3  # the naive fusion and the three evaluations
    # every fuse/evaluate step is either reused from before the kill or new in the rerun
    assert made <= before["fuse"] | before["evaluate"] | set().union(*new.values())


def test_jobs_2_gives_the_same_runs_as_jobs_1(study, client, mlflow_server, tmp_path):
    # Naive fusion only, to keep it cheap: compared with the reference study's parents and naive fusions.
    parallel_id, new = _new_runs(client, study.info.experiment_id,
                                 lambda: ofexp(mlflow_server.uri, "study", *TINY, "--seeds", "2", "--method", "naive",
                                               "--jobs", "2", "--no-cache"))
    parallel = client.get_run(parallel_id)
    assert parallel.info.status == "FINISHED" and parallel.data.metrics["steps/reused"] == 0
    assert {s: len(ids) for s, ids in new.items()} == {"train": 4, "fuse": 2, "evaluate": 6}, "none duplicated or lost"
    children = client.search_runs([study.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parallel_id}'", max_results=100)
    assert {r.info.run_id for r in children} == set(_steps(client, parallel).values()) == set().union(*new.values())
    reference = {k: v for k, v in _steps(client, study).items() if k[0] != "geometric_fused"}
    assert _steps(client, parallel).keys() == reference.keys()
    for key, run_id in _steps(client, parallel).items():  # same params, up to the upstream run IDs
        if key[2] == "train":
            assert client.get_run(run_id).data.params == client.get_run(reference[key]).data.params
    # one torch thread per worker, as in this process: the same numbers
    for name in ("results.csv", "prediction_metrics.csv"):
        a = _csv(client, study.info.run_id, name, tmp_path / "a")
        b = _csv(client, parallel_id, name, tmp_path / "b")
        a = a[~a.Model.str.startswith("geometric_fused")].reset_index(drop=True)
        pd.testing.assert_frame_equal(a, b)
    assert math.isfinite(parallel.data.metrics["summary/accuracy/parent_1_mean"])


def test_a_run_whose_weights_were_changed_is_not_reused(study, client, mlflow_server, capsys, tmp_path):
    # Last in this module: it rewrites files of the reference study's runs. Seed 1's parent_1
    # weights/final.pt overwritten after the run finished (in every run that did that step, so
    # whichever the cache finds is one): a rerun redoes that step and the steps that read it,
    # says why, and still reuses everything else.
    import torch

    reference = client.get_run(_steps(client, study)[("parent_1", 1, "train")])
    same_step = [r.info.run_id for r in client.search_runs([study.info.experiment_id], max_results=1000)
                 if r.data.tags.get("ofexp.stage") == "train" and r.data.params == reference.data.params]
    for run_id in same_step:
        blob = client.download_artifacts(run_id, "weights/final.pt", str(tmp_path / run_id))
        state = torch.load(blob, weights_only=True)
        torch.save({k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, blob)
        client.log_artifact(run_id, blob, "weights")
    capsys.readouterr()
    rerun_id, new = _new_runs(client, study.info.experiment_id,
                              lambda: ofexp(mlflow_server.uri, "study", *TINY, "--seeds", "1", "--method", "naive"))
    warning = capsys.readouterr().err
    (refused,) = [r for r in same_step if f"not reusing run {r} for parent_1 seed 1: run {r}'s weights/final.pt "
                                          "is not the file the run recorded" in warning]
    assert {s: len(ids) for s, ids in new.items()} == {"train": 1, "fuse": 1, "evaluate": 2}
    steps = _steps(client, client.get_run(rerun_id))
    assert steps[("parent_1", 1, "train")] in new["train"] and steps[("parent_1", 1, "train")] != refused
    assert steps[("parent_2", 1, "train")] not in new["train"]
    assert steps[("parent_2", 1, "evaluate")] not in new["evaluate"]
