"""The MLflow model a train run logs: loadable through pyfunc, and logging it leaves the environment as it was."""
from __future__ import annotations

import os

import mlflow
import numpy as np
import pytest
import torch

from conftest import using_tracking_uri
from ofexp.models import ModelSpec, build_model
from ofexp.tracking.artifacts import PREDICTION_DEVICE, log_mlflow_model


@pytest.mark.parametrize("chosen", [None, "cpu"])
def test_logged_model_predicts_like_the_network_and_the_device_choice_is_restored(tmp_path, monkeypatch, chosen):
    """MLflow validates the input example on the GPU where there is one; ofexp pins that check
    to the CPU (the pt2 export is a CPU one) only for the call, and keeps a user's own choice."""
    if chosen is None:
        monkeypatch.delenv(PREDICTION_DEVICE, raising=False)
    else:
        monkeypatch.setenv(PREDICTION_DEVICE, chosen)
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    model = build_model(ModelSpec("mlp", 10, 1, 8, width=0.25)).eval()
    x = torch.randn(3, 1, 8, 8)
    with using_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"), mlflow.start_run():
        model_id = log_mlflow_model(model, x[:2])
    assert os.environ.get(PREDICTION_DEVICE) == chosen
    with using_tracking_uri(f"sqlite:///{tmp_path}/mlflow.db"):
        served = mlflow.pyfunc.load_model(f"models:/{model_id}")
        predicted = np.asarray(served.predict(x.numpy()))
    with torch.no_grad():
        assert np.allclose(predicted, model(x).numpy(), atol=1e-5)
