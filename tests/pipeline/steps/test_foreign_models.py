"""Foreign networks end to end (issue #23): `ofexp train` of a torchvision classifier and of a
user's factory, `ofexp fuse` of two seeds, `ofexp evaluate` and `ofexp train --init-from` of the
fused run and a one-seed `ofexp study`, through the real entry point in this process against a SQLite store; and a
spec.json that names a factory nobody trusted is refused without importing it."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from mlflow import MlflowClient

from conftest import fake_train_run, run_artifact_bytes, run_cli_in_process
from ofexp.errors import ConfigError
from ofexp.models import TRUSTED_FACTORIES_ENV

MOBILENET = ["--model", "torchvision:mobilenet_v2", "--model-kwargs", '{"width_mult": 0.25}']
# 16-pixel digits, one epoch, no interpolation curve: each step takes a few seconds on one thread
FAST = ["--epochs", "1", "--image-size", "16", "--device", "cpu", "--no-log-model", "--experiment-name", "foreign"]
EVAL = ["--measures", "prediction", "--preset", "quick", "--device", "cpu", "--experiment-name", "foreign"]

FACTORY_MODULE = '''
from pathlib import Path
Path(__file__).with_name("imported").touch()   # shows that the module was imported
from torch import nn

def small_cnn(num_classes, channels=8):
    return nn.Sequential(nn.Conv2d(1, channels, 3, padding=1), nn.BatchNorm2d(channels), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes))
'''


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("foreign-store")
    uri = f"sqlite:///{root}/mlflow.db"
    MlflowClient(uri).create_experiment("foreign", artifact_location=str(root / "artifacts"))
    return uri


def _ok(args: list[str], uri: str, capsys) -> str:
    result = run_cli_in_process(args, uri, capsys)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def _error(args: list[str], uri: str, capsys) -> str:
    result = run_cli_in_process(args, uri, capsys)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-3000:]
    lines = [line for line in result.stderr.strip().splitlines() if "rror" in line]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_torchvision_model_trains_fuses_and_evaluates(store, capsys):
    client = MlflowClient(store)
    parents = [_ok(["train", *MOBILENET, *FAST, "--seed", str(seed)], store, capsys).split()[-1] for seed in (1, 2)]
    params = client.get_run(parents[0]).data.params
    assert params["model"] == "torchvision:mobilenet_v2" and params["model_kwargs"] == '{"width_mult":0.25}'
    spec = json.loads(run_artifact_bytes(client, parents[0], "spec.json"))["model"]
    assert spec["arch"] == "torchvision:mobilenet_v2" and spec["kwargs"] == {"width_mult": 0.25}

    fuse = ["fuse", "--parents", ",".join(parents), "--no-interpolation", "--no-log-model", "--device", "cpu",
            "--experiment-name", "foreign"]
    fused = dict(line.split() for line in _ok(fuse, store, capsys).splitlines() if line.strip())
    assert set(fused) == {"naive", "geometric"}
    fused_spec = json.loads(run_artifact_bytes(client, fused["geometric"], "spec.json"))["model"]
    assert fused_spec == spec

    evaluation = _ok(["evaluate", "--model-run", fused["geometric"], *EVAL], store, capsys).split()[-1]
    metrics = client.get_run(evaluation).data.metrics
    assert 0.0 <= metrics["prediction/accuracy"] <= 1.0

    # fine-tuning the fused network keeps its kwargs; a contradicting --model-kwargs is refused
    tuned = _ok(["train", "--init-from", fused["geometric"], "--epochs", "1", "--device", "cpu", "--no-log-model",
                 "--experiment-name", "foreign"], store, capsys).split()[-1]
    assert client.get_run(tuned).data.params["model_kwargs"] == '{"width_mult":0.25}'
    line = _error(["train", "--init-from", fused["geometric"], "--model-kwargs", "width_mult=0.5", "--epochs", "1",
                   "--experiment-name", "foreign"], store, capsys)
    assert "--model-kwargs" in line and "width_mult" in line


def test_a_factory_trains_and_evaluates_when_named(store, capsys, tmp_path, monkeypatch):
    (tmp_path / "ofexp_e2e_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "")  # naming it with --model trusts it; restored after
    run = _ok(["train", "--model", "ofexp_e2e_factories:small_cnn", "--model-kwargs", "channels=4", *FAST],
              store, capsys).split()[-1]
    evaluation = _ok(["evaluate", "--model-run", run, *EVAL], store, capsys).split()[-1]
    assert "prediction/accuracy" in MlflowClient(store).get_run(evaluation).data.metrics


def test_a_run_naming_an_untrusted_factory_is_refused_unimported(store, capsys, tmp_path, monkeypatch):
    (tmp_path / "ofexp_hostile_factory.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "")
    client = MlflowClient(store)
    spec = {"model": {"arch": "ofexp_hostile_factory:small_cnn", "num_classes": 10, "in_channels": 1,
                      "input_size": 32, "width": 1.0, "bias": False, "batchnorm": False},
            "data": {"name": "digits", "data_dir": None, "val_fraction": 0.1, "split_seed": 0, "image_size": 32}}
    run = fake_train_run(client, "foreign", {"spec.json": json.dumps(spec).encode(), "weights/final.pt": b"x"})
    line = _error(["evaluate", "--model-run", run, *EVAL], store, capsys)
    assert run in line and TRUSTED_FACTORIES_ENV in line and "not trusted" in line
    assert not (tmp_path / "imported").exists(), "a run's spec.json made ofexp import its factory"


@pytest.mark.parametrize("args,expected", [
    (["--model", "torchvision:nope"], "torchvision has no classifier 'nope'"),
    (["--model", "torchvision:resnet18", "--model-kwargs", "[1]"], "not a JSON object"),
    (["--model", "torchvision:resnet18", "--width", "0.5"], "--width does not apply"),
    (["--model", "torchvision:resnet18", "--batchnorm"], "--batchnorm does not apply"),
    (["--model", "mlp", "--model-kwargs", "hidden=3"], "--model-kwargs does not apply"),
    (["--model", "ofexp_no_such_module:make"], "cannot import 'ofexp_no_such_module'"),
    (["--model", "torchvision:alexnet"], "--image-size"),  # FAST gives 16: too small for alexnet
])
def test_bad_model_options_are_one_line_before_any_run(store, capsys, monkeypatch, args, expected):
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "")
    client = MlflowClient(store)
    before = len(client.search_runs([client.get_experiment_by_name("foreign").experiment_id]))
    line = _error(["train", *args, *FAST], store, capsys)
    assert expected in line
    assert len(client.search_runs([client.get_experiment_by_name("foreign").experiment_id])) == before


def test_a_one_seed_study_of_a_torchvision_model(store, capsys):
    out = _ok(["study", "--model", "torchvision:mobilenet_v2", "--model-kwargs", "width_mult=0.25", "--seeds", "1",
               *FAST[:-2], "--no-interpolation", "--measures", "prediction", "--preset", "quick",
               "--experiment-name", "foreign-study"], store, capsys)
    study = out.split()[-1]
    client = MlflowClient(store)
    run = client.get_run(study)
    assert run.info.status == "FINISHED"
    steps = run_artifact_bytes(client, study, "steps.csv").decode().splitlines()
    assert len(steps) == 1 + 2 + 2 + 4  # header, 2 trains, 2 fusions, 4 evaluations
    trains = [line.split(",")[3] for line in steps[1:] if ",train," in line]
    assert {client.get_run(r).data.params["model_kwargs"] for r in trains} == {'{"width_mult":0.25}'}


def test_cluster_steps_pass_the_kwargs_unquoted_and_the_trusted_factories(monkeypatch):
    from ofexp.pipeline.steps.train import TrainConfig
    from ofexp.pipeline.engines.cluster_steps import plan_study, trust_env
    from ofexp.pipeline.study.run import StudyConfig

    train = TrainConfig(model="torchvision:mobilenet_v2", model_kwargs={"width_mult": 0.25})
    steps = plan_study(StudyConfig(train=train, seeds=(1,)))
    assert {s.params["model_kwargs"] for s in steps if s.entry_point == "train"} == {"width_mult=0.25"}
    plain = plan_study(StudyConfig(train=TrainConfig(model="mlp"), seeds=(1,)))
    assert {s.params["model_kwargs"] for s in plain if s.entry_point == "train"} == {"none"}
    listed = StudyConfig(train=TrainConfig(model="torchvision:vgg11", model_kwargs={"x": [1, 2]}), seeds=(1,))
    with pytest.raises(ConfigError, match="needs shell quoting"):
        plan_study(listed)  # MLflow's Kubernetes backend would pass the JSON's quotes on literally
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "")
    assert trust_env() == {}
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "mine:make")
    assert trust_env() == {TRUSTED_FACTORIES_ENV: "mine:make"}
