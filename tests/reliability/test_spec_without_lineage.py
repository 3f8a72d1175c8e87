"""A fuse run's spec.json is checked even when its parents are gone (issue #27, item 8).

Its spec was checked only against its lineage's train run: once the parents were deleted and
garbage-collected (`mlflow gc`), an edited data block (`imagefolder` at `/etc`) was trusted, and
`ofexp evaluate` listed /etc in its error. spec.json now carries a digest like the tensor files;
a fuse run from before that, whose lineage is gone, has nothing to vouch for a data folder its
spec names, so such a spec is refused.
"""
from __future__ import annotations

import json
import subprocess
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import BIN, run_artifact_bytes, run_cli_in_process, sqlite_store_with_parents, using_tracking_uri

EXPERIMENT = "spec-without-lineage"
SPEC_TAG = "ofexp.sha256.spec.json"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Two fuse runs (naive) of two parents that were then deleted and garbage-collected."""
    import mlflow

    from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse

    root = tmp_path_factory.mktemp("no-lineage")
    uri, parents, splits, experiment_id = sqlite_store_with_parents(root, EXPERIMENT)
    with using_tracking_uri(uri):
        mlflow.set_experiment(EXPERIMENT)
        fuse = FuseConfig(parents=parents, methods=("naive",), device="cpu", log_model=False)
        fused = [run_fuse(replace(fuse, run_name=f"fused {i}"), splits)["naive"] for i in range(4)]
    client = MlflowClient(uri)
    for parent in parents:
        client.delete_run(parent)
    gc = subprocess.run([str(BIN / "mlflow"), "gc", "--backend-store-uri", uri], capture_output=True, text=True,
                        timeout=300, env={"MLFLOW_TRACKING_URI": uri, "PATH": str(BIN)})
    assert gc.returncode == 0, gc.stderr[-2000:]
    all_ids = {r.info.run_id for r in client.search_runs([experiment_id], run_view_type=ViewType.ALL)}
    assert not set(parents) & all_ids, "mlflow gc left the parents"
    return uri, fused, root


def _edit_spec(store, run_id: str, **data) -> None:
    uri, _, _ = store
    client = MlflowClient(uri)
    spec = json.loads(run_artifact_bytes(client, run_id, "spec.json"))
    spec["data"].update(data)
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "spec.json"
        local.write_text(json.dumps(spec))
        client.log_artifact(run_id, str(local))


def _evaluate(store, run_id: str, capsys):
    return run_cli_in_process(["evaluate", "--model-run", run_id, "--measures", "accuracy", "--device", "cpu",
                               "--experiment-name", EXPERIMENT], store[0], capsys)


def _refused(store, run_id: str, capsys) -> str:
    result = _evaluate(store, run_id, capsys)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr[-2000:]
    assert "passwd" not in result.stderr and "hosts" not in result.stderr, "/etc was read"
    return lines[0]


def test_an_untouched_fuse_run_without_its_parents_is_evaluated(store, capsys):
    result = _evaluate(store, store[1][0], capsys)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_spec_edited_after_the_parents_were_collected_is_refused(store, capsys):
    # the case
    run_id = store[1][1]
    _edit_spec(store, run_id, name="imagefolder", data_dir="/etc")
    line = _refused(store, run_id, capsys)
    assert f"run {run_id}'s spec.json is not the file the run recorded" in line


def test_a_spec_whose_digest_tag_was_deleted_is_refused(store, capsys):
    run_id = store[1][2]
    MlflowClient(store[0]).delete_tag(run_id, SPEC_TAG)
    _edit_spec(store, run_id, name="imagefolder", data_dir="/etc")
    line = _refused(store, run_id, capsys)
    assert f"run {run_id}'s spec.json has no digest (tag {SPEC_TAG})" in line


def test_an_older_runs_spec_naming_a_folder_nothing_vouches_for_is_refused(store, capsys):
    # a fuse run logged before specs had digests (neither tag), its lineage gone
    run_id = store[1][3]
    client = MlflowClient(store[0])
    tags = client.get_run(run_id).data.tags
    for tag in (SPEC_TAG, "ofexp.digests"):
        if tag in tags:  # the code before this change wrote no spec digest
            client.delete_tag(run_id, tag)
    _edit_spec(store, run_id, name="imagefolder", data_dir="/etc")
    line = _refused(store, run_id, capsys)
    assert f"run {run_id}'s spec.json names data folder '/etc'" in line
    assert "its lineage's train run is gone" in line
