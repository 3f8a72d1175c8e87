"""Models MLflow can load, serve and register (issue #16): train, fuse and ensemble runs log an
MLflow model that takes raw images (pixel values in [0, 1] at the data set's own size) and
normalises inside; `--register-as` registers it with its lineage; `mlflow models serve` answers.

One SQLite store with two tiny digits parents; the fusion and the ensemble are made through the
CLI, and served through MLflow's own `mlflow models serve`.
"""
from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.request

import mlflow
import numpy as np
import pytest
import torch
from mlflow import MlflowClient
from sklearn.datasets import load_digits

from conftest import BIN, free_port, run_cli_in_process, sqlite_store_with_parents, using_tracking_uri
from ofexp import tracking

pytestmark = pytest.mark.slow
EXPERIMENT = "served"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, parents, splits, _ = sqlite_store_with_parents(tmp_path_factory.mktemp("served"), EXPERIMENT)
    return uri, parents, splits


def _logged_model(uri: str, run_id: str):
    tags = MlflowClient(uri).get_run(run_id).data.tags
    with using_tracking_uri(uri):
        return mlflow.pyfunc.load_model(f"models:/{tags['ofexp.logged_model_id']}"), tags


@pytest.fixture(scope="module")
def fused(store):
    # module-scoped, so capsys (function-scoped) is not at hand: stdout is captured by hand
    from contextlib import redirect_stdout
    from io import StringIO

    from ofexp.cli import main

    uri, parents, _ = store
    out = StringIO()
    with using_tracking_uri(uri), redirect_stdout(out):
        try:
            main(["fuse", "--parents", ",".join(parents), "--method", "geometric", "--device", "cpu",
                  "--register-as", "digits-fused", "--experiment-name", EXPERIMENT])
        except SystemExit as exc:
            assert not exc.code
    return out.getvalue().strip().split()[-1]


def test_a_fused_model_takes_raw_images_and_predicts_what_ofexp_measured(store, fused):
    uri, _, splits = store
    served, _ = _logged_model(uri, fused)
    with using_tracking_uri(uri):
        network = tracking.fetch_model_run(fused).model
    raw = torch.tensor(load_digits().data, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0  # [1797, 1, 8, 8]
    # which raw image each of ofexp's test inputs came from: the loader's own resize and normalisation
    loaded = torch.nn.functional.interpolate(raw, size=(32, 32), mode="bilinear", align_corners=False)
    mean, std = splits.info.mean[0], splits.info.std[0]
    loaded = (loaded - mean) / std
    flat = loaded.view(len(raw), -1)
    index = [int(torch.cdist(row.view(1, -1), flat).argmin()) for row in splits.test_x]
    assert torch.allclose(loaded[index], splits.test_x, atol=1e-5), "the raw images behind the test set"
    predicted = np.asarray(served.predict(raw[index].numpy()))  # [360, 10] logits
    with torch.no_grad():
        expected = network(splits.test_x).numpy()
    assert predicted.shape == (len(splits.test_x), 10)
    assert np.allclose(predicted, expected, atol=1e-4)
    accuracy = float((predicted.argmax(1) == splits.test_y.numpy()).mean())
    assert accuracy == pytest.approx(MlflowClient(uri).get_run(fused).data.metrics["prediction/accuracy"], abs=1e-9)


def test_the_registered_version_carries_the_fusions_lineage(store, fused):
    uri, parents, _ = store
    client = MlflowClient(uri)
    (version,) = client.search_model_versions("name = 'digits-fused'")
    assert version.tags["ofexp.run_id"] == fused and version.tags["ofexp.stage"] == "fuse"
    assert version.tags["ofexp.parent_run_ids"] == ",".join(parents)
    assert fused in version.description and all(p in version.description for p in parents)
    # in a code span: Markdown shows "[n, 1, 8, 8] (digits)" as written, not as a link named "n, 1, 8, 8"
    assert "`[n, 1, 8, 8]` (digits)" in version.description
    assert client.get_run(fused).data.tags["ofexp.registered_model"] == f"digits-fused/{version.version}"
    # the version names its logged model: MLflow's SQL store drops a version's model_id, so a tag carries it
    model_id = client.get_run(fused).data.tags["ofexp.logged_model_id"]
    assert version.tags["ofexp.logged_model_id"] == model_id and version.source == f"models:/{model_id}"


def test_a_logged_model_shows_its_own_test_accuracy_and_loss_and_nothing_else(store, fused):
    uri, _, _ = store
    client = MlflowClient(uri)
    run = client.get_run(fused)
    logged = client.get_logged_model(run.data.tags["ofexp.logged_model_id"])
    shown = {m.key: m.value for m in logged.metrics or []}
    # not the first point of each interpolation curve, which the fuse run logs after its model
    assert shown == {"prediction/accuracy": run.data.metrics["prediction/accuracy"],
                     "prediction/test_loss": run.data.metrics["prediction/test_loss"]}


def test_an_ensemble_run_logs_a_model_of_raw_images_too(store, capsys):
    uri, parents, splits = store
    result = run_cli_in_process(["ensemble", "--parents", ",".join(parents), "--device", "cpu",
                                 "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    served, _ = _logged_model(uri, result.last_line)
    raw = torch.tensor(load_digits().data[:5], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    assert np.asarray(served.predict(raw.numpy())).shape == (5, 10)


def _runs_in(uri: str) -> int:
    client = MlflowClient(uri)
    return len(client.search_runs([client.get_experiment_by_name(EXPERIMENT).experiment_id]))


TRAIN_DIGITS = ["train", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--device", "cpu",
                "--experiment-name", EXPERIMENT]
BAD_NAMES = {  # --register-as value -> what the one line must say
    "": "error: --register-as needs a model name",
    "   ": "error: --register-as needs a model name",
    "team/model": "cannot contain '/' or ':'; e.g. --register-as team-model",
    "models:/x": "cannot contain '/' or ':'",
    "..": "'.' and '..' are not model names",
    "two\nlines": "no control characters",
    "x" * 300: "MLflow keeps at most 256",
}


@pytest.mark.parametrize("name", BAD_NAMES, ids=["empty", "blank", "slash", "uri", "dotdot", "newline", "long"])
@pytest.mark.parametrize("command", ["train", "fuse"])
def test_a_name_mlflow_would_refuse_is_refused_before_any_run(store, capsys, name, command):
    uri, parents, _ = store
    before = _runs_in(uri)
    args = TRAIN_DIGITS if command == "train" else ["fuse", "--parents", ",".join(parents), "--method", "naive",
                                                     "--experiment-name", EXPERIMENT]
    result = run_cli_in_process([*args, "--register-as", name], uri, capsys)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(error) == 1 and BAD_NAMES[name] in error[0], result.stderr[-800:]
    assert _runs_in(uri) == before, "no run, so nothing trained"


def test_registering_another_input_shape_under_a_used_name_is_refused_before_training(store, fused, capsys):
    uri, _, _ = store
    before = _runs_in(uri)
    # digits-fused's version 1 takes [n, 1, 8, 8]; a Fashion-MNIST network takes [n, 1, 28, 28]
    result = run_cli_in_process([*TRAIN_DIGITS, "--dataset", "fashion-mnist", "--register-as", "digits-fused"],
                                uri, capsys)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert ("error: --register-as 'digits-fused': version 1 of that model takes inputs of shape [n, 1, 8, 8], "
            "this model takes [n, 1, 28, 28]; register it under another name, e.g. --register-as "
            "digits-fused-28x28") in result.stderr, result.stderr[-800:]
    assert _runs_in(uri) == before
    assert len(MlflowClient(uri).search_model_versions("name = 'digits-fused'")) == 1


def test_register_as_without_a_logged_model_is_refused_before_any_run(store, capsys):
    uri, parents, _ = store
    before = len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id]))
    result = run_cli_in_process(["fuse", "--parents", ",".join(parents), "--method", "naive", "--no-log-model",
                                 "--register-as", "x", "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "error: --register-as registers the logged MLflow model: drop --no-log-model" in result.stderr
    assert len(MlflowClient(uri).search_runs([MlflowClient(uri).get_experiment_by_name(EXPERIMENT).experiment_id])) == before


@pytest.fixture(scope="module")
def served_fusion(store, fused, tmp_path_factory):
    """`mlflow models serve` of the fused run's logged model: (address, loaded pyfunc model)."""
    uri, _, _ = store
    served, tags = _logged_model(uri, fused)
    port, logs = free_port(), tmp_path_factory.mktemp("serve")
    # mlflow models serve starts `uvicorn` by name: the venv's bin must be on PATH, as when it is activated
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "OMP_NUM_THREADS": "1",
           "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    log = open(logs / "serve.log", "wb")
    server = subprocess.Popen([str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{tags['ofexp.logged_model_id']}",
                               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)],
                              env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, (logs / "serve.log").read_text()[-3000:]
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
                break
            except OSError:
                assert time.monotonic() < deadline, "mlflow models serve did not answer /ping in 180 s"
                time.sleep(1)
        yield f"http://127.0.0.1:{port}", served
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=60)
        log.close()


def _request(address: str, body: str) -> tuple[int, dict]:
    """POST `body` to the served model: (HTTP status, the JSON answer)."""
    request = urllib.request.Request(f"{address}/invocations", data=body.encode(),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def test_mlflow_models_serve_answers_with_the_fused_models_predictions(served_fusion):
    address, served = served_fusion
    raw = np.asarray(load_digits().data[:4], dtype=np.float32).reshape(-1, 1, 8, 8) / 16.0
    status, answer = _request(address, json.dumps({"inputs": raw.tolist()}))
    assert status == 200
    assert np.allclose(np.asarray(answer["predictions"]), np.asarray(served.predict(raw)), atol=1e-5)


RAW_DIGITS = np.asarray(load_digits().data[:2], dtype=np.float32).reshape(-1, 1, 8, 8)  # digits' own 0-16
BAD_REQUESTS = {
    # what a careless or hostile caller sends -> words the answer must hold
    "nan": ('{"inputs": %s}' % json.dumps(np.full((1, 1, 8, 8), np.nan).tolist()), "NaN or infinite"),
    "infinity": ('{"inputs": %s}' % json.dumps(np.full((1, 1, 8, 8), np.inf).tolist()), "NaN or infinite"),
    "raw 0-16": (json.dumps({"inputs": RAW_DIGITS.tolist()}), "outside [0, 1]"),
    "8-bit 0-255": (json.dumps({"inputs": (RAW_DIGITS * 255 / 16).tolist()}), "divide 8-bit pixels by 255"),
    "negative": (json.dumps({"inputs": (-RAW_DIGITS / 16).tolist()}), "outside [0, 1]"),
    "fashion-mnist size": (json.dumps({"inputs": np.zeros((1, 1, 28, 28)).tolist()}), "(-1, 1, 8, 8)"),
    "flattened": (json.dumps({"inputs": np.zeros((1, 64)).tolist()}), "(-1, 1, 8, 8)"),
    "nulls": (json.dumps({"inputs": [[[[None] * 8] * 8]]}), "NaN or infinite"),
    "text": (json.dumps({"inputs": [[[["a"] * 8] * 8]]}), "could not convert string to float"),
    "no inputs key": (json.dumps(RAW_DIGITS.tolist()), "inputs"),
}


@pytest.mark.parametrize("case", BAD_REQUESTS)
def test_a_served_model_refuses_input_it_cannot_read_with_http_400_saying_what_it_takes(served_fusion, case):
    address, _ = served_fusion
    body, expected = BAD_REQUESTS[case]
    status, answer = _request(address, body)
    assert status == 400, answer
    # MLflow's scoring server puts its own words in "message" and, for an error raised by the
    # network, the network's words on the last line of "stack_trace"
    trace = (answer.get("stack_trace") or "").strip().splitlines()
    said = f"{answer['message']} {trace[-1] if trace else ''}"
    assert expected in said, said[-600:]
