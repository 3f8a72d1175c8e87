"""Artifacts from other people's runs are input: never run code from them, never build absurd networks."""
from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import torch
from mlflow import MlflowClient

from conftest import fake_train_run, run_artifact_bytes, run_cli_in_process

pytestmark = pytest.mark.slow


class _TouchOnLoad:
    """Unpickling this calls Path.touch(marker): the shape of any code-execution payload."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _hostile_weights(state: dict, marker: Path) -> bytes:
    """A real torch checkpoint of `state` with one extra entry that runs code when unpickled."""
    buffer = io.BytesIO()
    torch.save({**state, "payload": _TouchOnLoad(marker)}, buffer)
    return buffer.getvalue()


def _error_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr[-2000:]
    lines = [line for line in stderr.strip().splitlines() if line.startswith("error:")]
    assert len(lines) == 1, stderr[-2000:]
    return lines[0]


def test_fuse_refuses_weights_that_would_run_code(tiny_runs, tmp_path, capsys):
    client = MlflowClient(tiny_runs.server.uri)
    marker = tmp_path / "code-ran"
    state = torch.load(io.BytesIO(run_artifact_bytes(client, tiny_runs.parent_2, "weights/final.pt")), weights_only=True)
    hostile = _hostile_weights(state, marker)
    # the payload is live: a plain torch.load (weights_only=False) runs it
    torch.load(io.BytesIO(hostile), weights_only=False)
    assert marker.exists()
    marker.unlink()

    spec = run_artifact_bytes(client, tiny_runs.parent_2, "spec.json")
    evil = fake_train_run(client, "hostile", {"spec.json": spec, "weights/final.pt": hostile})
    result = run_cli_in_process(["fuse", "--parents", f"{tiny_runs.parent_1},{evil}", "--experiment-name", "hostile"],
                                tiny_runs.server.uri, capsys)
    assert result.returncode != 0
    line = _error_line(result.stderr)
    assert evil in line and "weights/final.pt" in line and "refusing" in line
    assert not marker.exists(), "loading a parent's weights ran code from the artifact"
    experiment = client.get_experiment_by_name("hostile")
    fused = client.search_runs([experiment.experiment_id], filter_string="tags.`ofexp.stage` = 'fuse'")
    assert fused == []  # refused before any fuse run started


def _spec(client, run_id: str) -> dict:
    return json.loads(run_artifact_bytes(client, run_id, "spec.json"))


BAD_SPECS = [
    ("unknown top-level key", lambda s: {**s, "exec": "rm -rf /"}, "unknown key exec"),
    ("unknown model key", lambda s: {**s, "model": {**s["model"], "hidden": 5}}, "unknown key 'hidden'"),
    ("unknown data key", lambda s: {**s, "data": {**s["data"], "url": "http://x"}}, "unknown key data.url"),
    ("missing data", lambda s: {"model": s["model"]}, "missing key data"),
    ("absurd width", lambda s: {**s, "model": {**s["model"], "width": 1e6}}, "width"),
    ("absurd classes", lambda s: {**s, "model": {**s["model"], "num_classes": 10**9}}, "num_classes"),
    ("absurd input size", lambda s: {**s, "model": {**s["model"], "input_size": 10**6}}, "input_size"),
    ("absurd network", lambda s: {**s, "model": {**s["model"], "input_size": 1024, "in_channels": 64, "width": 16}},
     "parameters"),
    ("wrong type", lambda s: {**s, "data": {**s["data"], "image_size": "32"}}, "image_size"),
    ("not an object", lambda s: [s], "JSON object"),
]


@pytest.mark.parametrize("case,edit,expected", BAD_SPECS, ids=[c[0] for c in BAD_SPECS])
def test_invalid_spec_json_is_refused_before_building(tiny_runs, capsys, case, edit, expected):
    client = MlflowClient(tiny_runs.server.uri)
    spec = edit(_spec(client, tiny_runs.parent_1))
    weights = run_artifact_bytes(client, tiny_runs.parent_1, "weights/final.pt")
    bad = fake_train_run(client, "bad-specs", {"spec.json": json.dumps(spec).encode(), "weights/final.pt": weights})
    result = run_cli_in_process(["evaluate", "--model-run", bad, "--experiment-name", "bad-specs"],
                                tiny_runs.server.uri, capsys)
    assert result.returncode != 0
    line = _error_line(result.stderr)
    assert bad in line and "spec.json" in line and expected in line
    experiment = client.get_experiment_by_name("bad-specs")
    assert client.search_runs([experiment.experiment_id], filter_string="tags.`ofexp.stage` = 'evaluate'") == []
