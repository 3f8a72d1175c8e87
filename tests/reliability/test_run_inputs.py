"""Input runs are not trusted blindly (issue #15): fuse, evaluate and ensemble refuse, in one line
and before any new run exists, input runs that are not FINISHED (unless --allow-unfinished, which
tags the new run), weights with NaN or inf, and weights that do not fit the run's spec.json; a
fuse run logs how many activation samples it really used.

Every case runs the real entry point in this process against a SQLite store of its own with two
tiny parents (trained once for the module); the bad input runs are copies of a parent made with
the MLflow client, with another status or edited artifacts. `train --init-from` loads its
source the same way and is checked too.
"""
from __future__ import annotations

import io
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import run_artifact_bytes, run_cli_in_process, sqlite_store_with_parents

EXPERIMENT = "run-inputs"
TAG = "ofexp.unfinished_inputs"
TAG_FAILURE = "ofexp.failure_reason"


@dataclass
class Store:
    uri: str
    parents: tuple[str, str]  # FINISHED tiny MLP train runs (width 0.125)
    splits: object
    experiment_id: str

    def client(self) -> MlflowClient:
        return MlflowClient(self.uri)


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Store:
    return Store(*sqlite_store_with_parents(tmp_path_factory.mktemp("run-inputs-store"), EXPERIMENT))


def _copy_run(store: Store, *, status: str = "FINISHED", spec=None, weights=None, reason: str | None = None) -> str:
    """A train run with parent 2's spec.json and weights/final.pt (or `spec` / `weights` instead),
    left with `status` (and failure reason `reason`), as a crashed or hand-made run would be."""
    client = store.client()
    source = store.parents[1]
    files = {"spec.json": run_artifact_bytes(client, source, "spec.json") if spec is None else json.dumps(spec).encode(),
             "weights/final.pt": run_artifact_bytes(client, source, "weights/final.pt") if weights is None
             else _bytes(weights)}
    tags = {"ofexp.stage": "train", **({TAG_FAILURE: reason} if reason else {})}
    run_id = client.create_run(store.experiment_id, tags=tags, run_name=f"copy {status.lower()}").info.run_id
    with tempfile.TemporaryDirectory() as tmp:
        for path, content in files.items():
            local = Path(tmp) / path
            local.parent.mkdir(parents=True, exist_ok=True)
            local.write_bytes(content)
            client.log_artifact(run_id, str(local), None if Path(path).parent == Path(".") else str(Path(path).parent))
    if status != "RUNNING":
        client.set_terminated(run_id, status)
    return run_id


def _bytes(state: dict) -> bytes:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return buffer.getvalue()


def _state(store: Store) -> dict[str, torch.Tensor]:
    return torch.load(io.BytesIO(run_artifact_bytes(store.client(), store.parents[1], "weights/final.pt")),
                      weights_only=True)


def _spec(store: Store) -> dict:
    return json.loads(run_artifact_bytes(store.client(), store.parents[1], "spec.json"))


def _all_runs(store: Store) -> dict[str, str]:
    """{run ID: status} of every run in the store, deleted ones included."""
    client = store.client()
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {r.info.run_id: r.info.status for r in client.search_runs(experiments, run_view_type=ViewType.ALL)}


def _error_line(result) -> str:
    """The one `error: <what is wrong>; <how to fix it>` line of a failed command."""
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    lines = [line for line in result.stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "; " in lines[0], f"no fix named: {lines[0]}"
    assert result.stdout.strip() == ""
    return lines[0]


def _command(command: str, store: Store, bad: str) -> list[str]:
    """`ofexp <command>` reading the good parent 1 and the run `bad` (evaluate reads `bad` alone)."""
    if command == "evaluate":
        args = ["evaluate", "--model-run", bad, "--preset", "quick"]
    else:
        args = [command, "--parents", f"{store.parents[0]},{bad}"]
        args += ["--method", "naive"] if command == "fuse" else []
    return [*args, "--device", "cpu", "--experiment-name", EXPERIMENT]


def _refused_before_any_run(store: Store, args: list[str], capsys) -> str:
    """Run a command that must be refused before any run exists; return its error line. No run
    appears or changes status (the input runs left RUNNING here stay so, and none other is)."""
    before = _all_runs(store)
    line = _error_line(run_cli_in_process(args, store.uri, capsys))
    assert _all_runs(store) == before, "a run was created (or changed) before the refusal"
    return line


COMMANDS = ("fuse", "evaluate", "ensemble")


# --- 1. input runs that are not FINISHED ---------------------------------------------------------

@pytest.mark.parametrize("status", ["RUNNING", "FAILED", "KILLED"])
@pytest.mark.parametrize("command", COMMANDS)
def test_unfinished_input_run_is_refused_before_any_run(store, capsys, command, status):
    reason = {"FAILED": "unexpected RuntimeError: CUDA out of memory", "KILLED": "stopped by SIGTERM"}.get(status)
    bad = _copy_run(store, status=status, reason=reason)
    line = _refused_before_any_run(store, _command(command, store, bad), capsys)
    assert f"run {bad} (train run 'copy {status.lower()}')" in line and status in line
    assert "pass a FINISHED run" in line and "--allow-unfinished uses it anyway" in line and TAG in line
    if status == "RUNNING":
        assert "still RUNNING" in line and "wait until it ends FINISHED" in line
    else:
        assert f"ended {status} ({reason})" in line and f"`ofexp train --resume {bad}` finishes it" in line


@pytest.mark.parametrize("problem", ["KILLED", "NaN"])
def test_finetuning_refuses_an_unfinished_or_non_finite_source_before_any_run(store, capsys, problem):
    """`train --init-from` loads its source as fuse and evaluate do: the same refusals, with no
    --allow-unfinished to offer (train has no such option)."""
    bad = (_copy_run(store, status="KILLED", reason="stopped by SIGTERM") if problem == "KILLED"
           else _copy_run(store, weights=_all_nan(_state(store))))
    line = _refused_before_any_run(store, ["train", "--init-from", bad, "--epochs", "1", "--no-log-model",
                                           "--device", "cpu", "--experiment-name", EXPERIMENT], capsys)
    assert f"run {bad}" in line and "--allow-unfinished" not in line
    assert ("ended KILLED (stopped by SIGTERM)" if problem == "KILLED" else "holds non-finite weights") in line


@pytest.mark.parametrize("command,status", [("ensemble", "KILLED"), ("fuse", "RUNNING"), ("evaluate", "FAILED")])
def test_allow_unfinished_accepts_the_run_and_tags_it(store, capsys, command, status):
    bad = _copy_run(store, status=status, reason=None if status == "RUNNING" else "stopped by SIGTERM")
    before = _all_runs(store)
    result = run_cli_in_process([*_command(command, store, bad), "--allow-unfinished"], store.uri, capsys)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    assert any(f"run {bad} was {status}" in w and "--allow-unfinished" in w for w in warnings), warnings
    made = result.last_line.split()[-1]  # fuse prints "<method> <run_id>"
    run = store.client().get_run(made)
    assert run.info.status == "FINISHED"
    assert run.data.tags[TAG] == f"{bad}:{status}"
    assert f"run {bad} was {status}" in run.data.tags["mlflow.note.content"]
    assert "allow_unfinished" not in run.data.params  # no param: the study's cache keys stay as they were
    after = _all_runs(store)
    assert set(after) - set(before) == {made}
    assert {r for r, s in after.items() if s == "RUNNING"} == {r for r, s in before.items() if s == "RUNNING"}


# --- 2. NaN or infinite weights -------------------------------------------------------------------

def _all_nan(state: dict) -> dict:
    return {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}


def _one_inf(state: dict) -> dict:
    last = list(state)[-1]
    bad = state[last].clone()
    bad.view(-1)[0] = float("inf")
    return {**state, last: bad}


NON_FINITE = [("all NaN", _all_nan, "{n} NaN of its {n} values"), ("one inf", _one_inf, "1 infinite of its {n} values")]


@pytest.mark.parametrize("case,corrupt,counted", NON_FINITE, ids=[c[0] for c in NON_FINITE])
@pytest.mark.parametrize("command", COMMANDS)
def test_non_finite_weights_are_refused_before_any_run(store, capsys, command, case, corrupt, counted):
    state = corrupt(_state(store))
    tensor = next(k for k, v in state.items() if v.is_floating_point() and not torch.isfinite(v).all())
    bad = _copy_run(store, weights=state)
    line = _refused_before_any_run(store, _command(command, store, bad), capsys)
    counted = counted.format(n=state[tensor].numel())
    assert f"run {bad}'s weights/final.pt holds non-finite weights: tensor '{tensor}' has {counted}" in line
    assert "re-run the step that made it" in line


def test_a_fusion_that_yields_non_finite_weights_ends_its_run_failed(store, capsys, monkeypatch):
    from ofexp.pipeline.steps import fusion_methods

    real = fusion_methods.naive_fuse

    def overflowing(models, weights=None):
        fused = real(models, weights=weights)
        with torch.no_grad():
            next(fused.parameters()).fill_(float("inf"))
        return fused

    monkeypatch.setattr(fusion_methods, "naive_fuse", overflowing)
    before = _all_runs(store)
    line = _error_line(run_cli_in_process(["fuse", "--parents", ",".join(store.parents), "--method", "naive",
                                           "--device", "cpu", "--experiment-name", EXPERIMENT], store.uri, capsys))
    assert f"the naive fusion of {store.parents[0]}, {store.parents[1]} holds non-finite weights" in line
    after = _all_runs(store)
    (new,) = set(after) - set(before)
    assert after[new] == "FAILED"
    assert "non-finite" in store.client().get_run(new).data.tags[TAG_FAILURE]
    assert {r for r, s in after.items() if s == "RUNNING"} == {r for r, s in before.items() if s == "RUNNING"}


# --- 3. weights that do not fit the run's spec.json -----------------------------------------------

def _wider_spec(spec: dict) -> dict:
    return {**spec, "model": {**spec["model"], "width": 0.25}}


MISFITS = [
    ("spec width 0.25", lambda st: None, _wider_spec,
     "tensor 'features.0.weight' has shape [64, 1024] in the weights, but the network needs [128, 1024]"
     " (and 3 more mismatches)", "(mlp width 0.25)"),
    ("a tensor missing", lambda st: {k: v for k, v in st.items() if k != "features.0.weight"}, None,
     "tensor 'features.0.weight' (shape [64, 1024]) is missing from the weights", "(mlp width 0.125)"),
    ("a tensor too many", lambda st: {**st, "extra.weight": torch.zeros(3, 2)}, None,
     "the weights hold tensor 'extra.weight' (shape [3, 2]), which the network lacks", "(mlp width 0.125)"),
]


@pytest.mark.parametrize("case,edit_weights,edit_spec,named,built", MISFITS, ids=[c[0] for c in MISFITS])
@pytest.mark.parametrize("command", COMMANDS)
def test_weights_that_do_not_fit_the_spec_are_one_line_with_the_tensor_and_the_fix(
        store, capsys, command, case, edit_weights, edit_spec, named, built):
    weights = edit_weights(_state(store))
    bad = _copy_run(store, weights=weights, spec=edit_spec(_spec(store)) if edit_spec else None)
    line = _refused_before_any_run(store, _command(command, store, bad), capsys)
    assert f"run {bad}'s weights/final.pt does not fit the network its spec.json builds {built}: {named}" in line
    assert line.endswith("; the run's spec and weights disagree: re-run the step that made it")
    assert "Error(s) in loading" not in line


# --- 4. --activation-samples: what was used, beside what was asked -------------------------------

@pytest.mark.parametrize("asked", [100_000_000, 64])
def test_fuse_logs_the_activation_samples_it_used(store, capsys, asked):
    available = len(store.splits.train_x)
    before = _all_runs(store)
    curves = ["--no-interpolation"] if asked > available else []  # with curves: --curve-samples 2000 of 359
    result = run_cli_in_process(["fuse", "--parents", ",".join(store.parents), "--method", "geometric",
                                 "--activation-samples", str(asked), *curves, "--device", "cpu",
                                 "--experiment-name", EXPERIMENT], store.uri, capsys)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    method, run_id = result.last_line.split()
    run = store.client().get_run(run_id)
    used = min(asked, available)
    assert run.info.status == "FINISHED"
    assert run.data.params["activation_samples"] == str(asked)  # the request: part of the study's cache key
    assert run.data.metrics["activation_samples_used"] == used
    description = run.data.tags["mlflow.note.content"]
    assert f"alignment=activations on {used} training inputs" in description
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning:")]
    if asked > available:
        assert f"all {used} were used (metric activation_samples_used)" in description
        assert len(warnings) == 1 and f"--activation-samples {asked}" in warnings[0] and f"only {used}" in warnings[0]
    else:
        assert "were used" not in description and warnings == []
        test_images = len(store.splits.test_x)
        assert run.data.params["curve_samples"] == "2000"
        assert run.data.metrics["curve_samples_used"] == test_images
        assert f"Interpolation curves on {test_images} test images (--curve-samples 2000)" in description
    after = _all_runs(store)
    assert set(after) - set(before) == {run_id}
    assert {r for r, s in after.items() if s == "RUNNING"} == {r for r, s in before.items() if s == "RUNNING"}
