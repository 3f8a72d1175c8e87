"""The fuse run: interpolation curves, description, and bad input that leaves no RUNNING run."""
from __future__ import annotations

import pytest
import torch
from mlflow import MlflowClient

from conftest import run_cli_in_process, using_tracking_uri
from ofexp.fusion.interpolation import CURVES

pytestmark = pytest.mark.slow

EXPERIMENT = "fuse-bad-input"


def _history(client: MlflowClient, run_id: str, key: str) -> dict[int, float]:
    return {m.step: m.value for m in client.get_metric_history(run_id, key)}


def test_geometric_run_logs_three_interpolation_curves_and_a_plot(tiny_runs):
    client = MlflowClient(tiny_runs.server.uri)
    run_id = tiny_runs.fused["geometric"]
    run = client.get_run(run_id)
    assert run.data.params["interpolation"] == "true"
    curves = {c: {w: _history(client, run_id, f"interp/{c}/{w}") for w in ("loss", "accuracy")} for c in CURVES}
    for name, curve in curves.items():
        assert sorted(curve["loss"]) == sorted(curve["accuracy"]) == list(range(11)), name
        line = [(1 - s / 10) * curve["loss"][0] + s / 10 * curve["loss"][10] for s in range(11)]
        barrier = max(curve["loss"][s] - line[s] for s in range(11))
        assert run.data.metrics[f"interp/{name}/loss_barrier"] == pytest.approx(barrier, abs=1e-6)
    # Every curve starts at the target parent; the aligned parent computes what the raw one does
    # (a permutation), and the fused end is the run's own fused network.
    assert len({curves[c]["loss"][0] for c in CURVES}) == 1
    assert curves["parents_aligned"]["loss"][10] == pytest.approx(curves["parents_raw"]["loss"][10], abs=1e-5)
    assert curves["parent_fused"]["accuracy"][10] == pytest.approx(run.data.metrics["prediction/accuracy"])
    assert curves["parent_fused"]["loss"][10] == pytest.approx(run.data.metrics["prediction/test_loss"], rel=1e-5)
    assert "plots/interpolation.png" in [f.path for f in client.list_artifacts(run_id, "plots")]
    assert any(k.startswith("group_seconds/") for k in run.data.metrics)
    naive = client.get_run(tiny_runs.fused["naive"])
    assert not any(k.startswith("interp/") for k in naive.data.metrics)


def test_description_names_parents_options_and_accuracies(tiny_runs):
    client = MlflowClient(tiny_runs.server.uri)
    run = client.get_run(tiny_runs.fused["geometric"])
    text = run.data.tags["mlflow.note.content"]
    parent_acc = client.get_run(tiny_runs.parent_1).data.metrics["prediction/accuracy"]
    assert tiny_runs.parent_1 in text and tiny_runs.parent_2 in text
    assert "alignment=activations" in text and "solver=exact" in text and "target=parent 2" in text
    assert f"Fused test accuracy: {run.data.metrics['prediction/accuracy']:.4f}" in text
    assert f"{parent_acc:.4f}" in text and "Loss barriers:" in text
    # Why the fusion lost accuracy: per group, how well neurons matched and how much activations shrank.
    groups = [k.removeprefix("ot_cost/") for k in run.data.metrics if k.startswith("ot_cost/")]
    assert groups
    for g in groups:
        assert -1 <= run.data.metrics[f"match_correlation/{g}"] <= 1
        assert run.data.metrics[f"std_ratio/{g}"] > 0
    assert "Matched neurons correlate" in text and "--repair restores the spread" in text
    assert "plots/alignment.png" in [f.path for f in client.list_artifacts(run.info.run_id, "plots")]


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


BAD = [
    ("k=1", lambda r: ["--parents", r.parent_1], "at least 2"),
    ("unknown alignment", lambda r: ["--parents", f"{r.parent_1},{r.parent_2}", "--alignment", "gradients"],
     "'gradients' is not one of"),
    ("unknown solver", lambda r: ["--parents", f"{r.parent_1},{r.parent_2}", "--solver", "hungarian"],
     "'hungarian' is not one of"),
    ("target out of range", lambda r: ["--parents", f"{r.parent_1},{r.parent_2}", "--target", "2"],
     "--target 2 is not a parent index for 2 parents"),
    ("sinkhorn without a positive reg", lambda r: ["--parents", f"{r.parent_1},{r.parent_2}", "--solver",
                                                   "sinkhorn", "--reg", "0"], "--reg must be a positive number"),
    ("different families", lambda r: ["--parents", f"{r.parent_1},{r.other_arch}"], "arch="),
]


@pytest.mark.parametrize("case,argv,expected", BAD, ids=[c[0] for c in BAD])
def test_bad_fuse_input_is_one_line_and_leaves_no_running_run(tiny_runs, capsys, case, argv, expected):
    result = run_cli_in_process(["fuse", *argv(tiny_runs), "--experiment-name", EXPERIMENT],
                                tiny_runs.server.uri, capsys)
    assert result.returncode != 0 and result.stdout.strip() == ""
    assert expected in _error_line(result.stderr)
    client = MlflowClient(tiny_runs.server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    if experiment is not None:  # the options and the parents are checked before any fuse run starts
        assert client.search_runs([experiment.experiment_id], "tags.`ofexp.stage` = 'fuse'") == []


def test_parents_with_different_input_shapes_are_refused(tiny_runs, capsys):
    train = ["train", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--image-size", "16",
             "--no-log-model", "--experiment-name", EXPERIMENT]
    small = run_cli_in_process(train, tiny_runs.server.uri, capsys)
    assert small.returncode == 0, small.stderr[-2000:]
    result = run_cli_in_process(["fuse", "--parents", f"{tiny_runs.parent_1},{small.last_line}",
                                 "--experiment-name", EXPERIMENT], tiny_runs.server.uri, capsys)
    assert result.returncode != 0 and result.stdout.strip() == ""
    line = _error_line(result.stderr)
    assert "different data" in line and "same dataset" in line
    client = MlflowClient(tiny_runs.server.uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    assert client.search_runs([experiment.experiment_id], "tags.`ofexp.stage` = 'fuse'") == []


def test_vgg11_parents_of_different_widths_fuse_onto_the_targets_width(tiny_runs, capsys):
    def train(width: str) -> str:
        result = run_cli_in_process(["train", "--model", "vgg11", "--width", width, "--epochs", "1",
                                     "--no-log-model", "--experiment-name", "widths"], tiny_runs.server.uri, capsys)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.last_line

    narrow, wide = train("0.125"), train("0.25")
    both = run_cli_in_process(["fuse", "--parents", f"{narrow},{wide}", "--experiment-name", "widths"],
                              tiny_runs.server.uri, capsys)
    assert both.returncode != 0 and "width" in _error_line(both.stderr)  # naive averaging needs one width
    result = run_cli_in_process(["fuse", "--parents", f"{narrow},{wide}", "--method", "geometric",
                                 "--experiment-name", "widths"], tiny_runs.server.uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.last_line.split()[1]
    client = MlflowClient(tiny_runs.server.uri)
    run = client.get_run(run_id)
    accuracies = [client.get_run(r).data.metrics["prediction/accuracy"] for r in (narrow, wide)]
    text = run.data.tags["mlflow.note.content"]
    assert all(f"{a:.4f}" in text for a in accuracies) and "width 0.125" in text and "width 0.25" in text
    assert 0 <= run.data.metrics["prediction/accuracy"] <= 1
    spec = client.download_artifacts(run_id, "spec.json", str(tiny_runs.workdir / run_id))
    assert '"width": 0.25' in open(spec).read()  # the target (last parent) sets the width
    assert "interp/parents_raw/loss" not in run.data.metrics  # no straight line between different shapes
    assert len(client.get_metric_history(run_id, "interp/parents_aligned/accuracy")) == 11


def test_repair_is_a_logged_option_that_changes_the_fused_network(tiny_runs, capsys):
    result = run_cli_in_process(["fuse", "--parents", f"{tiny_runs.parent_1},{tiny_runs.parent_2}", "--method",
                                 "geometric", "--repair", "--no-interpolation", "--experiment-name", "repair"],
                                tiny_runs.server.uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    client = MlflowClient(tiny_runs.server.uri)
    run = client.get_run(result.last_line.split()[1])
    plain = client.get_run(tiny_runs.fused["geometric"])
    assert run.data.params["repair"] == "true" and plain.data.params["repair"] == "false"
    assert run.data.params["activation_samples"] == "256"  # the samples REPAIR measured
    assert "REPAIR on 256 training inputs" in run.data.tags["mlflow.note.content"]
    assert run.data.metrics["prediction/test_loss"] != pytest.approx(plain.data.metrics["prediction/test_loss"], rel=1e-6)
    for g in (k.removeprefix("std_ratio/") for k in run.data.metrics if k.startswith("std_ratio/")):
        assert run.data.metrics[f"std_ratio/{g}"] == pytest.approx(1.0, abs=0.05), g  # the spread is restored


def test_recompute_bn_is_an_option_of_fuse_that_keeps_the_averaged_statistics_when_off(tiny_runs, capsys):
    uri = tiny_runs.server.uri

    def ofexp(*args: str) -> str:
        result = run_cli_in_process([*args, "--experiment-name", "recompute-bn"], uri, capsys)
        assert result.returncode == 0, result.stderr[-2000:]
        return result.last_line.split()[-1]

    parents = [ofexp("train", "--width", "0.25", "--batchnorm", "--epochs", "1", "--no-log-model", "--seed", str(s))
               for s in (1, 2)]
    fused = {flag: ofexp("fuse", "--parents", ",".join(parents), "--method", "geometric", "--no-interpolation",
                         "--no-log-model", flag) for flag in ("--recompute-bn", "--no-recompute-bn")}
    client = MlflowClient(uri)
    runs = {flag: client.get_run(run_id) for flag, run_id in fused.items()}
    assert runs["--recompute-bn"].data.params["recompute_bn"] == "true"
    assert runs["--no-recompute-bn"].data.params["recompute_bn"] == "false"
    assert "batch-norm statistics averaged" in runs["--no-recompute-bn"].data.tags["mlflow.note.content"]
    assert "batch-norm statistics recomputed" in runs["--recompute-bn"].data.tags["mlflow.note.content"]
    # the same alignment and weights; only the running statistics differ
    from ofexp import tracking

    with using_tracking_uri(uri):
        weights = {flag: tracking.load_weights_from_run(run_id, "fused") for flag, run_id in fused.items()}
    means = [k for k in weights["--recompute-bn"] if k.endswith("running_mean")]
    assert means and all(not torch.equal(weights["--recompute-bn"][k], weights["--no-recompute-bn"][k]) for k in means)
    for key in (k for k in weights["--recompute-bn"] if k.endswith(".weight")):
        assert torch.equal(weights["--recompute-bn"][key], weights["--no-recompute-bn"][key]), key
