"""Digests are required where they were written, and checkpoints vouch for themselves (issue #27,
items 6, 13 and 14).

- A run that records digests (tag `ofexp.digests`, or any `ofexp.sha256.*` tag) must have one for
  every tensor file read back: a deleted digest tag is refused like a wrong digest, instead of
  reading the run as one logged before digests existed.
- `--allow-unfinished` accepts a run that is not FINISHED, but still checks a digest it has.
- `train --resume` refuses a rewritten `checkpoint/last.pt`: checkpoints carry a digest too.

Each tampered run is a copy of a real train run's params, tags and files (as in
test_recorded_integrity.py), then edited as someone with write access to the store would.
"""
from __future__ import annotations

import hashlib
import io

import pytest
import torch
from mlflow import MlflowClient
from mlflow.entities import ViewType

from conftest import clone_run, run_artifact_bytes, run_cli_in_process, sqlite_store_with_parents, the_error_line

EXPERIMENT = "required-digests"
FILES = ("spec.json", "weights/initial.pt", "weights/best.pt", "weights/final.pt", "checkpoint/last.pt")


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, parents, _, experiment_id = sqlite_store_with_parents(tmp_path_factory.mktemp("digests"), EXPERIMENT)
    return uri, parents, experiment_id


def _clone(store, *, status: str = "FINISHED", files: dict[str, bytes] | None = None,
           drop_tags: tuple[str, ...] = (), set_tags: dict[str, str] | None = None) -> str:
    """A copy of parent 2 (params, tags, files) ending `status`, with `files` written over the
    copied ones, the tags `drop_tags` deleted and `set_tags` set afterwards."""
    uri, parents, experiment_id = store
    return clone_run(MlflowClient(uri), parents[1], experiment_id, FILES, files=files, drop_tags=drop_tags,
                     set_tags=set_tags, status=status)


def _rewritten(store, path: str) -> bytes:
    """Parent 2's tensor file `path` with every float tensor doubled: loads fine, is not the file."""
    blob = run_artifact_bytes(MlflowClient(store[0]), store[1][1], path)
    obj = torch.load(io.BytesIO(blob), weights_only=True)

    def doubled(value):
        if isinstance(value, torch.Tensor):
            return value * 2 if value.is_floating_point() else value
        if isinstance(value, dict):
            return {k: doubled(v) for k, v in value.items()}
        return value

    buffer = io.BytesIO()
    torch.save(doubled(obj), buffer)
    return buffer.getvalue()


def _all_runs(store) -> dict[str, str]:
    client = MlflowClient(store[0])
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return {r.info.run_id: r.info.status for r in client.search_runs(experiments, run_view_type=ViewType.ALL)}


def _run(store, args: list[str], capsys):
    return run_cli_in_process([*args, "--device", "cpu", "--experiment-name", EXPERIMENT], store[0], capsys)


def _refused(store, args: list[str], capsys) -> str:
    """The one error line of a command refused before any run exists or changes."""
    before = _all_runs(store)
    line = the_error_line(_run(store, args, capsys))
    assert _all_runs(store) == before, "a run was created or changed before the refusal"
    return line


def _fuse(store, run_id: str, *extra: str) -> list[str]:
    return ["fuse", "--parents", f"{store[1][0]},{run_id}", "--method", "naive", *extra]


FINAL_TAG = "ofexp.sha256.weights/final.pt"
CHECKPOINT_TAG = "ofexp.sha256.checkpoint/last.pt"


def test_every_tensor_file_a_run_logs_carries_its_digest_and_the_run_says_it_records_them(store):
    uri, parents, _ = store
    run = MlflowClient(uri).get_run(parents[0])
    assert run.data.tags["ofexp.digests"] == "sha256"
    blob = run_artifact_bytes(MlflowClient(uri), parents[0], "checkpoint/last.pt")
    assert run.data.tags[CHECKPOINT_TAG] == hashlib.sha256(blob).hexdigest()


@pytest.mark.parametrize("rewrite", [True, False], ids=["tag deleted and file rewritten", "tag deleted only"])
def test_a_deleted_digest_tag_is_refused_like_a_wrong_digest(store, capsys, rewrite):
    # item 6: the run still carries its other digests, and says it records them
    files = {"weights/final.pt": _rewritten(store, "weights/final.pt")} if rewrite else {}
    run_id = _clone(store, files=files, drop_tags=(FINAL_TAG,))
    line = _refused(store, _fuse(store, run_id), capsys)
    assert f"run {run_id}'s weights/final.pt has no digest (tag {FINAL_TAG})" in line
    assert "the tag was deleted" in line and "re-run the step that made it" in line


def test_a_run_that_only_says_it_records_digests_is_refused_without_them(store, capsys):
    # every tensor file's digest tag deleted: the run's ofexp.digests tag still says they were written
    tags = tuple(k for k in MlflowClient(store[0]).get_run(store[1][1]).data.tags
                 if k.startswith("ofexp.sha256.") and k.endswith(".pt"))
    run_id = _clone(store, files={"weights/final.pt": _rewritten(store, "weights/final.pt")}, drop_tags=tags)
    line = _refused(store, ["evaluate", "--model-run", run_id, "--measures", "accuracy"], capsys)
    assert f"run {run_id}'s weights/final.pt has no digest" in line


def test_a_run_from_before_digests_is_still_read_as_it_is(store, capsys):
    # the control: no digest tag at all and no ofexp.digests tag is a run logged by an older ofexp
    tags = tuple(k for k in MlflowClient(store[0]).get_run(store[1][1]).data.tags
                 if k.startswith("ofexp.sha256.") or k == "ofexp.digests")
    run_id = _clone(store, drop_tags=tags)
    result = _run(store, _fuse(store, run_id), capsys)
    assert result.returncode == 0, result.stderr[-2000:]


@pytest.mark.parametrize("status", ["KILLED", "FAILED"])
def test_allow_unfinished_still_checks_a_digest_that_exists(store, capsys, status):
    # item 14: the unfinished run's rewritten final.pt, its tag kept
    run_id = _clone(store, status=status, files={"weights/final.pt": _rewritten(store, "weights/final.pt")})
    line = _refused(store, _fuse(store, run_id, "--allow-unfinished"), capsys)
    assert f"run {run_id}'s weights/final.pt is not the file the run recorded" in line


def test_allow_unfinished_refuses_an_unfinished_runs_missing_digest(store, capsys):
    run_id = _clone(store, status="KILLED", drop_tags=(FINAL_TAG,))
    line = _refused(store, ["evaluate", "--model-run", run_id, "--measures", "accuracy", "--allow-unfinished"], capsys)
    assert f"run {run_id}'s weights/final.pt has no digest" in line


@pytest.mark.parametrize("edit", ["rewritten", "tag deleted"])
def test_resume_refuses_a_checkpoint_the_run_did_not_write(store, capsys, edit):
    # item 13: a killed run's checkpoint/last.pt, overwritten (or its digest tag deleted), then resumed
    if edit == "rewritten":
        run_id = _clone(store, status="KILLED", files={"checkpoint/last.pt": _rewritten(store, "checkpoint/last.pt")})
    else:
        run_id = _clone(store, status="KILLED", drop_tags=(CHECKPOINT_TAG,))
    line = _refused(store, ["train", "--resume", run_id], capsys)
    expected = "is not the file the run recorded" if edit == "rewritten" else f"has no digest (tag {CHECKPOINT_TAG})"
    assert f"run {run_id}'s checkpoint/last.pt {expected}" in line


def test_a_checkpoint_killed_between_its_upload_and_its_tag_still_resumes(store, capsys):
    # The tag names the new checkpoint and the one it replaces until the upload is done: a run
    # killed in between holds either file, and resumes from it.
    uri, parents, _ = store
    own = MlflowClient(uri).get_run(parents[1]).data.tags[CHECKPOINT_TAG]
    run_id = _clone(store, status="KILLED", set_tags={CHECKPOINT_TAG: f"{'0' * 64} {own}"})
    result = _run(store, ["train", "--resume", run_id], capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    assert MlflowClient(uri).get_run(run_id).info.status == "FINISHED"
