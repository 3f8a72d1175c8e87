"""A run's files are read back only as the run recorded them (issue #15, items 1 and 3).

- Weights and other tensor files carry their sha256 in a tag; a file rewritten after the run
  finished is refused when read, with the run, the file and both digests named.
- spec.json must agree with the params the weights were trained under; an edited data block
  (another data set, another folder, a system folder) is refused before anything is read.
- Data a run names is never downloaded and no folder is created for it: a missing folder is
  one line that names the run.

Every case runs the real entry point in this process against a SQLite store with two tiny
parents; the tampered runs are clones of a parent (params, tags and files) made with the
MLflow client, then edited as someone with write access to the store would.
"""
from __future__ import annotations

import hashlib
import io
import json

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import (clone_run, log_artifact_bytes, run_artifact_bytes, run_cli_in_process, sqlite_store_with_parents,
                      the_error_line)

EXPERIMENT = "recorded-integrity"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, parents, _, experiment_id = sqlite_store_with_parents(tmp_path_factory.mktemp("integrity"), EXPERIMENT)
    return uri, parents, experiment_id


def _clone(store, *, params: dict | None = None, files: dict[str, bytes] | None = None) -> str:
    """A FINISHED copy of parent 2 (its params, tags, spec.json and weights/final.pt, so also its
    digest tag), with `params` changed and `files` written over the copied ones afterwards."""
    uri, parents, experiment_id = store
    return clone_run(MlflowClient(uri), parents[1], experiment_id, ("spec.json", "weights/final.pt"),
                     params=params, files=files)


def _spec(store) -> dict:
    uri, parents, _ = store
    return json.loads(run_artifact_bytes(MlflowClient(uri), parents[1], "spec.json"))


def _all_runs(store) -> dict[str, str]:
    client = MlflowClient(store[0])
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {r.info.run_id: r.info.status for r in client.search_runs(experiments, run_view_type=ViewType.ALL)}


def _refused(store, args: list[str], capsys) -> str:
    """The one error line of a command refused before any run exists."""
    before = _all_runs(store)
    args = [*args, "--device", "cpu", "--experiment-name", EXPERIMENT]
    line = the_error_line(run_cli_in_process(args, store[0], capsys))
    assert _all_runs(store) == before, "a run was created or changed before the refusal"
    return line


def test_logged_weights_carry_their_sha256(store):
    import hashlib

    uri, parents, _ = store
    run = MlflowClient(uri).get_run(parents[0])
    for name in ("initial", "best", "final"):
        blob = run_artifact_bytes(MlflowClient(uri), parents[0], f"weights/{name}.pt")
        assert run.data.tags[f"ofexp.sha256.weights/{name}.pt"] == hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize("command", ["evaluate", "fuse", "ensemble"])
def test_weights_rewritten_after_the_run_finished_are_refused(store, capsys, command):
    uri, parents, _ = store
    state = torch.load(io.BytesIO(run_artifact_bytes(MlflowClient(uri), parents[1], "weights/final.pt")),
                       weights_only=True)
    buffer = io.BytesIO()
    torch.save({k: v * 2 if v.is_floating_point() else v for k, v in state.items()}, buffer)
    changed = _clone(store, files={"weights/final.pt": buffer.getvalue()})
    args = (["evaluate", "--model-run", changed, "--measures", "accuracy"] if command == "evaluate"
            else [command, "--parents", f"{parents[0]},{changed}", *(["--method", "naive"] if command == "fuse" else [])])
    line = _refused(store, args, capsys)
    assert f"run {changed}'s weights/final.pt is not the file the run recorded" in line
    assert "changed after the run wrote it" in line and "re-run the step that made it" in line


def test_an_intact_clone_is_read_as_it_is(store, capsys):
    # the control for the cases around it: copying a run's files with its tags changes nothing
    clone = _clone(store)
    result = run_cli_in_process(["evaluate", "--model-run", clone, "--measures", "accuracy", "--device", "cpu",
                                 "--experiment-name", EXPERIMENT], store[0], capsys)
    assert result.returncode == 0, result.stderr[-2000:]


EDITED_DATA = [
    ("another data set and folder", {"name": "cifar10", "data_dir": "{tmp}/elsewhere"}, "data.name='cifar10'"),
    ("a system folder as images", {"name": "imagefolder", "data_dir": "/etc"}, "data.name='imagefolder'"),
    ("another folder only", {"data_dir": "{tmp}/elsewhere"}, "data.data_dir='{tmp}/elsewhere'"),
    ("another split", {"split_seed": 7}, "data.split_seed=7"),
]


@pytest.mark.parametrize("case,edit,named", EDITED_DATA, ids=[c[0] for c in EDITED_DATA])
def test_a_spec_whose_data_block_was_edited_is_refused_without_touching_the_data(store, capsys, tmp_path,
                                                                                  case, edit, named):
    spec = _spec(store)
    spec["data"].update({k: v.format(tmp=tmp_path) if isinstance(v, str) else v for k, v in edit.items()})
    edited = _clone(store, files={"spec.json": json.dumps(spec).encode()})
    line = _refused(store, ["evaluate", "--model-run", edited, "--measures", "accuracy"], capsys)
    assert f"run {edited}'s spec.json says {named.format(tmp=tmp_path)}, but its params say" in line
    assert "the spec was changed after the run wrote it" in line
    assert not (tmp_path / "elsewhere").exists(), "the edited spec made ofexp create the folder it names"


def test_an_edited_architecture_is_refused(store, capsys):
    spec = _spec(store)
    spec["model"]["batchnorm"] = True
    edited = _clone(store, files={"spec.json": json.dumps(spec).encode()})
    line = _refused(store, ["evaluate", "--model-run", edited, "--measures", "accuracy"], capsys)
    assert "spec.json says model.batchnorm=True, but its params say 'false'" in line


def test_data_a_run_names_is_never_downloaded_nor_its_folder_created(store, capsys, tmp_path):
    # A run whose params and spec agree on CIFAR-10 in a folder that is gone: torchvision would
    # create the folder and download 170 MB into it; ofexp reads it where it is, or not at all.
    gone = tmp_path / "cifar-gone"
    spec = _spec(store)
    spec["data"].update({"name": "cifar10", "data_dir": str(gone)})
    run_id = _clone(store, params={"dataset": "cifar10", "data_dir": str(gone)},
                    files={"spec.json": json.dumps(spec).encode()})
    # as the run would have logged it: its spec's digest agrees too
    MlflowClient(store[0]).set_tag(run_id, "ofexp.sha256.spec.json", hashlib.sha256(json.dumps(spec).encode()).hexdigest())
    line = _refused(store, ["evaluate", "--model-run", run_id, "--measures", "accuracy"], capsys)
    assert str(gone) in line
    assert f"that is where run {run_id} recorded its data, and ofexp never downloads data a run names" in line
    assert not gone.exists()


def test_a_fused_runs_spec_is_checked_against_its_parents_params(store, capsys, tmp_path):
    uri, parents, _ = store
    result = run_cli_in_process(["fuse", "--parents", ",".join(parents), "--method", "naive", "--device", "cpu",
                                 "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    fused = result.stdout.strip().splitlines()[-1].split()[-1]
    client = MlflowClient(uri)
    spec = json.loads(run_artifact_bytes(client, fused, "spec.json"))
    spec["data"]["data_dir"] = str(tmp_path / "elsewhere")
    log_artifact_bytes(client, fused, "spec.json", json.dumps(spec).encode())
    line = _refused(store, ["evaluate", "--model-run", fused, "--measures", "accuracy"], capsys)
    assert f"run {fused}'s spec.json says data.data_dir=" in line
    assert f"its lineage's train run {parents[0]} params say 'none'" in line
