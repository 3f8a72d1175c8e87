import numpy as np
import pytest
import torch
from torch import nn

from ofexp.metrics import exact_trace_unsupported, hessian_trace, hessian_trace_exact, hessian_trace_with_error
from ofexp.models import ModelSpec, build_model
from ofexp.models.resnet import BasicBlock, BlockPlan
from tests.metrics.test_hessian import dense_hessian


def _bn(c: int, dims: int = 2) -> nn.Module:
    bn = nn.BatchNorm2d(c) if dims == 2 else nn.BatchNorm1d(c)
    bn.running_mean.normal_()  # non-trivial statistics, so that eval mode differs from train mode
    bn.running_var.uniform_(0.5, 2.0)
    bn.weight.data.normal_()
    bn.bias.data.normal_()
    return bn


def _nets():
    torch.manual_seed(0)
    return {
        "mlp-bn-bias": nn.Sequential(nn.Flatten(), nn.Linear(32, 7), _bn(7, dims=1), nn.ReLU(), nn.Linear(7, 5)),
        "conv-bn-pool-stride": nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1), _bn(3), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(3, 4, 3, padding=1, stride=2, bias=False), nn.ReLU(),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5)),
        "residual": nn.Sequential(
            nn.Conv2d(2, 3, 3, padding=1, bias=False), nn.ReLU(),
            BasicBlock(BlockPlan(0, 0, 3, 4, 2), bias=True, batchnorm=True),  # conv shortcut
            BasicBlock(BlockPlan(0, 1, 4, 4, 1), bias=False, batchnorm=False),  # identity shortcut
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 5, bias=False)),
    }


@pytest.mark.parametrize("name", ["mlp-bn-bias", "conv-bn-pool-stride", "residual"])
def test_exact_trace_equals_the_dense_hessians_trace(name):
    net = _nets()[name]
    for m in net.modules():  # random running statistics for the blocks' batch-norms too
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(30, 2, 4, 4, generator=g), torch.randint(0, 5, (30,), generator=g)
    assert exact_trace_unsupported(net) is None
    net.train()
    got = hessian_trace_exact(net, x, y)
    assert net.training  # measured in eval mode, mode restored
    expected = np.trace(dense_hessian(net.eval(), x, y))  # float64, eval mode
    assert got == pytest.approx(expected, rel=1e-4)
    assert hessian_trace(net, x, y) == got  # method="auto" picks it


def test_exact_trace_agrees_with_hutchinson_on_a_narrow_vgg11():
    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg11", 10, 1, 32, width=0.0625))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 1, 32, 32, generator=g), torch.randint(0, 10, (20,), generator=g)
    exact = hessian_trace_with_error(model, x, y)
    assert exact.method == "exact" and exact.stderr == 0 and exact.samples == 0
    est = hessian_trace_with_error(model, x, y, method="hutchinson", tol=0.05, max_samples=500)
    assert abs(exact.trace - est.trace) < 4 * est.stderr


def test_every_ofexp_architecture_qualifies():
    for arch in ("mlp", "vgg11", "resnet18"):
        for batchnorm in (False, True):
            model = build_model(ModelSpec(arch, 10, 1, 32, width=0.0625, batchnorm=batchnorm, bias=True))
            assert exact_trace_unsupported(model) is None, (arch, batchnorm)


@pytest.mark.parametrize("net, reason", [
    (nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 3)), "Tanh"),
    (nn.Sequential(nn.Linear(4, 4), nn.ReLU(inplace=True), nn.Linear(4, 3)), "in place"),
    (nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4, track_running_stats=False), nn.Linear(4, 3)), "running"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.Flatten(), nn.LazyLinear(3)), "groups"),
])
def test_other_networks_fall_back_to_hutchinson_and_exact_says_why(net, reason):
    assert reason in exact_trace_unsupported(net)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    if reason != "groups":
        assert hessian_trace_with_error(net, x, y, max_samples=5).method == "hutchinson"
    with pytest.raises(ValueError, match="hutchinson"):
        hessian_trace_with_error(net, x, y, method="exact")
    with pytest.raises(ValueError, match="method"):
        hessian_trace_with_error(net, x, y, method="dense")


def test_a_shared_layer_is_refused():
    layer = nn.Linear(4, 4)
    net = nn.Sequential(layer, nn.ReLU(), layer)
    with pytest.raises(ValueError, match="twice"):
        hessian_trace_exact(net, torch.randn(8, 4), torch.randint(0, 4, (8,)))
