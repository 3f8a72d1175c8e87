"""Fusing PyTorch models logged by plain MLflow code, named by model URI (issue #23).

The parents are a small torchvision ResNet and a copy with every alignment group
permuted at random: the same function, other weights. Geometric fusion must give that
function back; naive averaging must not.
"""
from __future__ import annotations

import mlflow
import numpy as np
import pytest
import torch

from tests.conftest import run_cli_in_process, using_tracking_uri

torchvision = pytest.importorskip("torchvision")

INPUT = ["--dataset", "digits", "--image-size", "16", "--channels", "3"]


def _small_resnet() -> torch.nn.Module:
    torch.manual_seed(0)
    net = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 1], num_classes=10,
                                           width_per_group=64)
    # a narrow network: 2 cores run it in milliseconds
    for m in net.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1), m.running_var.uniform_(0.5, 1.5)
    return net.eval()


def _permuted(net: torch.nn.Module, example: torch.Tensor) -> torch.nn.Module:
    from ofexp.fusion import permute_model, trace_alignment
    from ofexp.fusion.groups import group_sizes

    spec = trace_alignment(net, example)
    gen = torch.Generator().manual_seed(1)
    perms = {g: torch.randperm(n, generator=gen) for g, n in group_sizes(spec, net.state_dict()).items()}
    return permute_model(net, perms, spec)


@pytest.fixture(scope="module")
def logged_pair(mlflow_server):
    """Two runs of plain MLflow code, each logging one network (pt2, MLflow 3's default)."""
    example = torch.rand(2, 3, 16, 16)
    net = _small_resnet()
    twin = _permuted(net, example)
    run_ids = []
    with using_tracking_uri(mlflow_server.uri):
        mlflow.set_experiment("plain-mlflow-code")
        for model in (net, twin):
            with mlflow.start_run() as run:
                info = mlflow.pytorch.log_model(model, name="model", input_example=example.numpy())
            run_ids.append(run.info.run_id)
        version = mlflow.register_model(info.model_uri, "plain-resnet").version
        mlflow.MlflowClient().set_registered_model_alias("plain-resnet", "twin", version)
    return net, run_ids


def test_permuted_copy_fused_by_runs_and_alias_uris_gives_back_the_network(mlflow_server, logged_pair, capsys):
    net, (first, second) = logged_pair
    result = run_cli_in_process(["fuse", "--parents", f"runs:/{first}/model,models:/plain-resnet@twin", *INPUT,
                                 "--no-interpolation", "--no-recompute-bn", "--alignment", "weights"], mlflow_server.uri, capsys)
    assert result.returncode == 0, result.stderr
    runs = dict(line.split() for line in result.stdout.strip().splitlines())
    with using_tracking_uri(mlflow_server.uri):
        client = mlflow.MlflowClient()
        geo, naive = client.get_run(runs["geometric"]), client.get_run(runs["naive"])
        parent_acc = geo.data.metrics["parent_1/accuracy"]
        assert geo.data.metrics["prediction/accuracy"] == pytest.approx(parent_acc, abs=1e-9)
        assert naive.data.metrics["prediction/accuracy"] != pytest.approx(parent_acc, abs=1e-3)
        # the fused model loads as MLflow logged it, with the parents' signature, and computes the parent's function
        fused = mlflow.pytorch.load_model(f"runs:/{geo.info.run_id}/model")
        x = torch.rand(4, 3, 16, 16)
        with torch.no_grad():
            assert torch.allclose(fused(x), net(x), atol=1e-4)
        info = mlflow.models.get_model_info(f"runs:/{geo.info.run_id}/model")
        assert list(info.signature.inputs.inputs[0].shape) == [-1, 3, 16, 16]
        # both parents' logged models are inputs of the fuse run: the lineage the UI shows
        parent_ids = {mlflow.models.get_model_info(f"runs:/{r}/model").model_id for r in (first, second)}
        assert {m.model_id for m in geo.inputs.model_inputs} == parent_ids
        assert geo.data.tags["ofexp.parent_run_ids"] == f"runs:/{first}/model,models:/plain-resnet@twin"
    # evaluate by URI: the parent with its input named, the fused model with the input its run recorded
    for args in (["--model-run", f"runs:/{first}/model", *INPUT], ["--model-run", f"runs:/{geo.info.run_id}/model"]):
        result = run_cli_in_process(["evaluate", *args], mlflow_server.uri, capsys)
        assert result.returncode == 0, result.stderr
        with using_tracking_uri(mlflow_server.uri):
            measured = mlflow.MlflowClient().get_run(result.last_line)
        assert measured.data.metrics["prediction/accuracy"] == pytest.approx(parent_acc, abs=1e-9)
        assert measured.data.tags["ofexp.model_uri"] == args[1]


def test_refusals_are_one_line_and_leave_no_run(mlflow_server, logged_pair, capsys):
    _, (first, second) = logged_pair
    uris = f"runs:/{first}/model,runs:/{second}/model"
    cases = {
        "takes inputs of shape [n, 3, 16, 16]": ["--parents", uris, "--dataset", "digits", "--image-size", "16"],
        "not made by ofexp": ["--parents", uris],
        "no model at runs:/": ["--parents", f"runs:/{first}/nothing,runs:/{second}/model", *INPUT],
        "mixes run IDs and model URIs": ["--parents", f"runs:/{first}/model,{second}", *INPUT],
    }
    with using_tracking_uri(mlflow_server.uri):
        before = len(mlflow.search_runs(search_all_experiments=True))
    for expected, args in cases.items():
        result = run_cli_in_process(["fuse", *args], mlflow_server.uri, capsys)
        assert result.returncode != 0
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and expected in lines[0], (expected, lines)
    with using_tracking_uri(mlflow_server.uri):
        assert len(mlflow.search_runs(search_all_experiments=True)) == before


def test_parents_of_different_architectures_are_refused_naming_the_first_differing_key(mlflow_server, logged_pair,
                                                                                         capsys):
    _, (first, _) = logged_pair
    with using_tracking_uri(mlflow_server.uri):
        other = torchvision.models.resnet.ResNet(torchvision.models.resnet.BasicBlock, [1, 1, 1, 2], num_classes=10)
        with mlflow.start_run() as run:
            mlflow.pytorch.log_model(other.eval(), name="model", input_example=np.zeros((2, 3, 16, 16), np.float32))
    result = run_cli_in_process(["fuse", "--parents", f"runs:/{first}/model,runs:/{run.info.run_id}/model", *INPUT],
                                mlflow_server.uri, capsys)
    assert result.returncode != 0
    assert "layer4.1.conv1.weight" in result.stderr and len(result.stderr.strip().splitlines()) == 1
