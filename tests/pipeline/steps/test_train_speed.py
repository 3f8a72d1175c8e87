"""`ofexp train --channels-last/--compile/--tf32`: recorded as run params, kept on resume, off by default."""
from __future__ import annotations

import pytest
from mlflow import MlflowClient

from conftest import run_cli_in_process
from ofexp.pipeline.steps.train import TrainConfig, train_config_from_run
from ofexp.training import SpeedOptions

TRAIN = ["train", "--model", "vgg11", "--width", "0.125", "--epochs", "1", "--no-log-model",
         "--experiment-name", "speed-flags"]


@pytest.mark.slow
def test_channels_last_run_records_its_flags_and_rebuilds_them(mlflow_server, capsys):
    result = run_cli_in_process([*TRAIN, "--channels-last", "--tf32"], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr
    client = MlflowClient(mlflow_server.uri)
    run = client.get_run(result.last_line)
    assert run.info.status == "FINISHED"
    assert [run.data.params[k] for k in ("channels_last", "compile", "tf32")] == ["true", "false", "true"]
    assert run.data.metrics["prediction/accuracy"] > 0.2  # it trained (chance is 0.1)
    # what `train --resume` rebuilds from the run: the same speed options
    assert train_config_from_run(run, {}).speed == SpeedOptions(channels_last=True, tf32=True)


def test_speed_flags_default_off():
    params = TrainConfig().params()
    assert [params[k] for k in ("channels_last", "compile", "tf32")] == ["false", "false", "false"]
