import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from ofexp.metrics import hessian_lanczos, hessian_top_eigenvalue, hessian_trace, hessian_trace_with_error


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
    """The full Hessian of the mean cross-entropy w.r.t. all parameters, in float64."""
    named = [(k, p.detach().double()) for k, p in model.named_parameters()]
    model64 = model.double()
    flat0 = torch.cat([p.reshape(-1) for _, p in named])

    def loss(flat):
        params, i = {}, 0
        for k, p in named:
            params[k] = flat[i:i + p.numel()].view(p.shape)
            i += p.numel()
        return F.cross_entropy(functional_call(model64, params, (x.double(),)), y)

    h = torch.autograd.functional.hessian(loss, flat0)
    model.float()
    return h.numpy()


def data(features=6, classes=4, n=50, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, features, generator=g), torch.randint(classes, (n,), generator=g)


@pytest.mark.parametrize("make", [
    lambda: nn.Linear(6, 4),
    lambda: nn.Sequential(nn.Linear(6, 5), nn.Tanh(), nn.Linear(5, 4, bias=False)),
], ids=["linear", "two-layer"])
def test_top_eigenvalue_matches_dense(make):
    torch.manual_seed(0)
    model = make()
    x, y = data()
    h = dense_hessian(model, x, y)
    expected = np.linalg.eigvalsh(h)[-1]
    got = hessian_top_eigenvalue(model, x, y)
    assert got == pytest.approx(expected, rel=1e-3)


def test_trace_matches_dense_with_enough_samples():
    torch.manual_seed(0)
    model = nn.Linear(6, 4)
    x, y = data()
    expected = np.trace(dense_hessian(model, x, y))
    est = hessian_trace_with_error(model, x, y, max_samples=4000, tol=0.0, method="hutchinson")
    assert est.samples == 4000
    assert est.trace == pytest.approx(expected, rel=0.01)
    assert abs(est.trace - expected) < 4 * est.stderr  # the reported error is honest
    assert hessian_trace(model, x, y, max_samples=4000, tol=0.0, method="hutchinson") == est.trace  # same default seed


def test_trace_stops_at_tolerance_and_leaves_the_model_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 5), nn.Dropout(0.5), nn.ReLU(), nn.Linear(5, 4)).train()
    x, y = data()
    est = hessian_trace_with_error(model, x, y, max_samples=100, tol=0.1, deflation=5, min_samples=4,
                                   method="hutchinson")
    assert 4 <= est.samples < 100 and np.isfinite(est.trace) and np.isfinite(est.stderr)
    assert est.stderr <= 0.1 * abs(est.trace)  # the stopping rule: relative standard error ≤ tol
    # eval mode (dropout off) while measuring, so two calls agree; mode and grads untouched
    assert hessian_top_eigenvalue(model, x, y) == hessian_top_eigenvalue(model, x, y)
    assert model.training
    assert all(p.grad is None for p in model.parameters())


def two_layer():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 4))  # ω = 92


def test_deflated_trace_is_unbiased_and_has_lower_variance():
    model, (x, y) = two_layer(), data()
    expected = np.trace(dense_hessian(model, x, y))
    plain = hessian_trace_with_error(model, x, y, max_samples=1500, tol=0.0, deflation=0)
    deflated = hessian_trace_with_error(model, x, y, max_samples=1500, tol=0.0, deflation=40)
    assert deflated.deflated == 40 and plain.deflated == 0
    for est in (plain, deflated):
        assert est.trace == pytest.approx(expected, rel=0.01)
        assert abs(est.trace - expected) < 4 * est.stderr  # the reported error is honest
    assert deflated.stderr < 0.5 * plain.stderr  # the dominant directions no longer add variance


def test_full_deflation_is_exact():
    model, (x, y) = two_layer(), data()
    expected = np.trace(dense_hessian(model, x, y))
    est = hessian_trace_with_error(model, x, y, deflation=92, min_samples=3)
    assert est.deflated <= 92 and est.samples == 3 and est.trace == pytest.approx(expected, rel=1e-4)
    assert est.stderr < 1e-4 * abs(expected)


def test_one_shared_lanczos_run_serves_both_in_either_order():
    model, (x, y) = two_layer(), data()
    top = hessian_top_eigenvalue(model, x, y)
    run = hessian_lanczos(model, x, y)  # same default seed as the standalone call
    est = hessian_trace_with_error(model, x, y, lanczos=run, deflation=30, tol=0.0, max_samples=20)
    assert hessian_top_eigenvalue(model, x, y, lanczos=run) == top  # the first converged step, not the last
    assert run.op.products == 30 + 20  # the eigenvalue took no extra products
    assert est.deflated == 30
    run.release()
    assert hessian_top_eigenvalue(model, x, y, lanczos=run) == top  # history outlives the basis
    with pytest.raises(ValueError, match="released"):
        hessian_trace_with_error(model, x, y, lanczos=run)


@pytest.mark.parametrize("kwargs, name", [({"max_samples": 0}, "max_samples"), ({"deflation": -1}, "deflation"),
                                          ({"tol": -1.0}, "tol"), ({"min_samples": 0}, "min_samples")])
def test_bad_trace_arguments_are_named(kwargs, name):
    model, (x, y) = two_layer(), data()
    with pytest.raises(ValueError, match=name):
        hessian_trace_with_error(model, x, y, **kwargs)


def test_deflation_rows_stay_within_the_memory_cap():
    model, (x, y) = two_layer(), data()
    row_mib = 92 * 4 / 2**20
    est = hessian_trace_with_error(model, x, y, deflation=40, max_basis_mib=10.5 * row_mib, max_samples=5)
    assert est.deflated == 10
    run = hessian_lanczos(model, x, y)
    hessian_top_eigenvalue(model, x, y, lanczos=run)  # steps taken before stay deflated
    est = hessian_trace_with_error(model, x, y, lanczos=run, max_basis_mib=0.0, max_samples=5)
    assert est.deflated == run.steps > 0
