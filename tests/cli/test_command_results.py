"""Every command reports its result (issue #25): train, fuse, ensemble and evaluate end with one
line on stderr giving the run's test accuracy (for a fusion or an ensemble, its ratio to the mean
accuracy of its inputs), while the run ID stays the last line of stdout. MLflow's known warnings
stay out of the way unless --verbose is given."""
from __future__ import annotations

import os
import re
import subprocess

import numpy as np
import pytest
from mlflow import MlflowClient
from PIL import Image
from sklearn.datasets import load_digits

from conftest import BIN, run_cli_in_process, sqlite_store_with_parents

pytestmark = pytest.mark.slow
EXPERIMENT = "results"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    uri, parents, _, _ = sqlite_store_with_parents(tmp_path_factory.mktemp("results"), EXPERIMENT)
    return uri, parents


def _accuracy(uri: str, run_id: str) -> float:
    return MlflowClient(uri).get_run(run_id).data.metrics["prediction/accuracy"]


def _result(stderr: str, run_id: str) -> str:
    """The result line naming `run_id`: exactly one."""
    # a progress line ends with "\r" (cleared in place), so a terminal's lines split on it too
    lines = [line for line in re.split(r"[\r\n]", stderr) if f" run {run_id}" in line]
    assert len(lines) == 1, stderr[-1500:]
    return lines[0]


def test_train_ends_with_its_test_accuracy_and_the_run_id_last(store, capsys):
    uri, _ = store
    result = run_cli_in_process(["train", "--model", "mlp", "--width", "0.125", "--epochs", "1", "--device", "cpu",
                                 "--no-log-model", "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.last_line
    line = _result(result.stderr, run_id)
    assert line.startswith(f"train run {run_id}: test accuracy {_accuracy(uri, run_id):.4f}, test loss ")
    assert result.stderr.rstrip().endswith(line), "the result is the last thing said"


def test_fuse_reports_its_ratio_to_the_parents_mean_accuracy(store, capsys):
    uri, parents = store
    result = run_cli_in_process(["fuse", "--parents", ",".join(parents), "--method", "naive", "--device", "cpu",
                                 "--no-log-model", "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    method, run_id = result.last_line.split()
    assert method == "naive"
    accuracy, mean = _accuracy(uri, run_id), np.mean([_accuracy(uri, p) for p in parents])
    line = _result(result.stderr, run_id)
    assert line.startswith(f"fuse run {run_id}: test accuracy {accuracy:.4f}")
    assert line.endswith(f"; {accuracy / mean:.3f}x the parents' mean accuracy {mean:.4f}"), line


def test_ensemble_reports_its_ratio_to_the_members_mean_accuracy(store, capsys):
    uri, parents = store
    result = run_cli_in_process(["ensemble", "--parents", ",".join(parents), "--device", "cpu", "--no-log-model",
                                 "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.last_line
    accuracy, mean = _accuracy(uri, run_id), np.mean([_accuracy(uri, p) for p in parents])
    line = _result(result.stderr, run_id)
    assert line.endswith(f"; {accuracy / mean:.3f}x the members' mean accuracy {mean:.4f}"), line


def test_evaluate_reports_the_accuracy_it_measured(store, capsys):
    uri, parents = store
    result = run_cli_in_process(["evaluate", "--model-run", parents[0], "--measures", "prediction", "--device", "cpu",
                                 "--experiment-name", EXPERIMENT], uri, capsys)
    assert result.returncode == 0, result.stderr[-2000:]
    run_id = result.last_line
    line = _result(result.stderr, run_id)
    measured = MlflowClient(uri).get_run(run_id).data.metrics
    assert line.startswith(f"evaluate run {run_id} (model run {parents[0]}): "
                           f"accuracy {measured['prediction/accuracy']:.4f}, {len(measured)} metrics"), line


@pytest.fixture(scope="module")
def image_folder(tmp_path_factory):
    """A tiny image folder (digits as PNGs): a data set MLflow logs from a local path."""
    root = tmp_path_factory.mktemp("images")
    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images[:60], digits.target[:60])):
        (root / str(label)).mkdir(exist_ok=True)
        Image.fromarray((image * 15).astype(np.uint8)).save(root / str(label) / f"{i}.png")
    return root


@pytest.mark.parametrize("verbose", [False, True])
def test_mlflows_dataset_source_warning_shows_only_with_verbose(image_folder, tmp_path, verbose):
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path}/mlflow.db", "OMP_NUM_THREADS": "1"}
    args = [*(["--verbose"] if verbose else []), "train", "--model", "mlp", "--width", "0.125", "--epochs", "1",
            "--dataset", "imagefolder", "--data-dir", str(image_folder), "--image-size", "8", "--device", "cpu",
            "--no-log-model"]
    done = subprocess.run([str(BIN / "ofexp"), *args], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"[0-9a-f]{32}", done.stdout.strip().splitlines()[-1])
    warned = "can be interpreted in multiple ways" in done.stderr
    assert warned == verbose, done.stderr[-2000:]
