import itertools
import warnings

import numpy as np
import ot
import pytest
import torch
from torch import nn

from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.fusion import (
    alignment_spec,
    geometric_fuse,
    permute_model,
    recompute_batchnorm_stats,
    solve_transport,
)
from ofexp.fusion.groups import group_sizes, permutation_plan
from ofexp.fusion.transport import MIN_SINKHORN_REG
from ofexp.models import ARCHITECTURES, ModelSpec, build_model

FLAGS = list(itertools.product(ARCHITECTURES, [False, True], [False, True]))
WIDTH = {"mlp": 0.125, "vgg11": 0.125, "resnet18": 0.125}


def _model(arch="vgg11", bias=False, bn=False, width=0.125, seed=0, classes=10):
    torch.manual_seed(seed)
    model = build_model(ModelSpec(arch, classes, 3, 32, width=width, bias=bias, batchnorm=bn))
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            # Non-trivial statistics, so that a wrong BN alignment changes the outputs.
            m.running_mean.normal_(0, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.normal_(0, 0.1)
    return model.eval()


def _random_perms(model, seed):
    gen = torch.Generator().manual_seed(seed)
    sizes = group_sizes(alignment_spec(model.spec), model.state_dict())
    return {g: torch.randperm(n, generator=gen) for g, n in sizes.items()}


@pytest.mark.parametrize("arch,bias,bn", FLAGS)
def test_fusing_with_a_permuted_copy_recovers_the_model(arch, bias, bn):
    model = _model(arch, bias, bn, width=WIDTH[arch])
    perms = _random_perms(model, seed=1)
    permuted = permute_model(model, perms).eval()
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
        assert (permuted(x) - expected).abs().max() <= 1e-5  # the spec captures the symmetry
        assert not torch.equal(permuted.classifier.weight, model.classifier.weight)
        result = geometric_fuse([model, permuted])
        assert (result.model.eval()(x) - expected).abs().max() <= 1e-4
    assert list(result.plans) == list(perms)
    for g, perm in perms.items():
        assert torch.equal(result.plans[g][0].float(), permutation_plan(perm)), g
        assert result.costs[g] == pytest.approx(0.0, abs=1e-3)  # float32 Gram: ~1e-3 near zero
    assert result.model.spec == model.spec and result.seconds > 0


@pytest.mark.parametrize("arch,bn", [("mlp", True), ("vgg11", False), ("resnet18", False),
                                     ("resnet18", True)])
def test_activation_alignment_recovers_the_permutation(arch, bn):
    model = _model(arch, bias=True, bn=bn)
    perms = _random_perms(model, seed=2)
    permuted = permute_model(model, perms).eval()
    inputs = torch.randn(20, 3, 32, 32)
    result = geometric_fuse([model, permuted], alignment="activations", inputs=inputs)
    for g, perm in perms.items():
        assert torch.equal(result.plans[g][0].float(), permutation_plan(perm)), g
    with torch.no_grad():
        assert (result.model.eval()(inputs) - model(inputs)).abs().max() <= 1e-4
    assert not model.training  # the mode is restored


def test_three_parents_fuse_and_run():
    models = [_model("resnet18", bn=True, seed=s) for s in range(3)]
    result = geometric_fuse(models, weights=[1, 1, 2], target=0)
    out = result.model(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 10) and torch.isfinite(out).all()
    assert all(len(p) == 2 for p in result.plans.values())
    assert all(c > 0 for c in result.costs.values())


@pytest.mark.parametrize("target,width", [(-1, 0.5), (0, 0.25)])
def test_different_widths_fuse_onto_the_target_width(target, width):
    small, large = _model("vgg11", width=0.25, seed=0), _model("vgg11", width=0.5, seed=1)
    result = geometric_fuse([small, large], target=target)
    assert result.model.spec.width == width
    assert result.model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    plan = result.plans["features.0"][0]  # [n_parent, n_target]
    assert plan.shape == ((16, 32) if target == -1 else (32, 16))
    assert torch.allclose(plan.sum(0), torch.ones(plan.shape[1], dtype=plan.dtype))


@pytest.mark.parametrize("alignment", ["weights", "activations"])
def test_sinkhorn_fusion_runs_and_gives_soft_plans(alignment):
    a, b = _model("mlp", seed=0), _model("mlp", seed=1)
    inputs = 10 * torch.randn(64, 3, 32, 32)  # large activations: costs far above reg
    result = geometric_fuse([a, b], solver="sinkhorn", reg=0.05, alignment=alignment, inputs=inputs)
    plan = result.plans["features.0"][0]
    assert ((plan > 0) & (plan < 1)).any()
    assert torch.allclose(plan.sum(0), torch.ones(64, dtype=plan.dtype), atol=1e-6)
    assert torch.isfinite(result.model(torch.randn(2, 3, 32, 32))).all()


@pytest.mark.parametrize("kwargs,error,pattern", [
    ({"solver": "hungarian"}, ConfigError, "unknown solver 'hungarian'; use one of exact, sinkhorn"),
    ({"alignment": "gradients"}, ConfigError, "unknown alignment 'gradients'"),
    ({"alignment": "activations"}, ConfigError, "needs inputs="),
    ({"target": 2}, ConfigError, r"target 2 is not a parent index for 2 parents; .* \[-2, 1\]"),
    ({"weights": [1.0]}, ConfigError, "weights has 1 values for 2 parents"),
    ({"weights": [1.0, -1.0]}, ConfigError, "non-negative"),
])
def test_bad_options_are_refused_on_one_line(kwargs, error, pattern):
    with pytest.raises(error, match=pattern) as e:
        geometric_fuse([_model("mlp"), _model("mlp", seed=1)], **kwargs)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("other,pattern", [
    (lambda: _model("mlp"), "arch='vgg11' but model 1 has arch='mlp'"),
    (lambda: _model(classes=100), "num_classes=10 but model 1 has num_classes=100"),
    (lambda: _model(bn=True), "batchnorm=False but model 1 has batchnorm=True"),
])
def test_incompatible_parents_are_refused(other, pattern):
    with pytest.raises(IncompatibleModelsError, match=pattern) as e:
        geometric_fuse([_model(), other()])
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="at least 2 models, got 1"):
        geometric_fuse([_model()])


@pytest.mark.parametrize("n,m", [(1, 1), (7, 7), (64, 64), (300, 300), (5, 9), (40, 24)])
def test_exact_solver_equals_emd_with_uniform_marginals(n, m):
    # Square costs take the linear-assignment shortcut, the others ot.emd: both must give EMD's plan.
    rng = np.random.default_rng(n * 1000 + m)
    for cost in (rng.random((n, m)), rng.standard_normal((n, m)) ** 2 * 100):
        plan = solve_transport(cost)
        emd = ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), cost, numItermax=10_000_000)
        assert np.allclose(plan, emd, atol=1e-12)
        assert np.allclose(plan.sum(1), 1 / n) and np.allclose(plan.sum(0), 1 / m)


def test_assignment_shortcut_is_optimal_where_permutations_tie():
    # Duplicated neurons tie several permutations: the plan may differ from EMD's, never its cost.
    rng = np.random.default_rng(3)
    cost = np.repeat(rng.random((4, 8)), 2, axis=0)  # [8, 8], rows 2i and 2i+1 equal
    plan = solve_transport(cost)
    emd = ot.emd(np.full(8, 1 / 8), np.full(8, 1 / 8), cost)
    assert (plan * cost).sum() == pytest.approx((emd * cost).sum(), abs=1e-12)
    assert np.allclose(plan.sum(1), 1 / 8) and np.allclose(plan.sum(0), 1 / 8)
    assert set(np.unique(plan)) == {0.0, 1 / 8}


def test_solver_errors():
    cost = np.random.default_rng(0).random((3, 3))
    with pytest.raises(ConfigError, match="use one of exact, sinkhorn"):
        solve_transport(cost, solver="emd")
    with pytest.raises(ValueError, match="NaN or inf"):
        solve_transport(np.array([[np.nan]]))


def test_sinkhorn_marginals_and_warning():
    rng = np.random.default_rng(1)
    cost = rng.random((6, 4))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plan = solve_transport(cost, solver="sinkhorn", reg=0.1)
    assert np.allclose(plan.sum(1), 1 / 6, atol=1e-6) and np.allclose(plan.sum(0), 1 / 4, atol=1e-6)
    with pytest.warns(RuntimeWarning, match="retried in the log domain. Raise reg"):
        plan = solve_transport(cost, solver="sinkhorn", reg=MIN_SINKHORN_REG)
    assert np.isfinite(plan).all() and plan.sum() == pytest.approx(1.0, abs=0.5)
    with pytest.raises(ConfigError, match="reg must be a positive number for solver sinkhorn, got 0;"):
        solve_transport(cost, solver="sinkhorn", reg=0)


@pytest.mark.parametrize("reg", [1e-12, 1e-6, MIN_SINKHORN_REG / 2])
def test_sinkhorn_reg_too_small_to_converge_is_refused_before_solving(reg, monkeypatch):
    """reg=1e-12 used to run 10,000 log-domain iterations per layer group (8 minutes on a digits MLP)."""
    from ofexp.fusion import transport

    def never(*args, **kwargs):
        raise AssertionError("the solver ran")

    monkeypatch.setattr(transport, "_sinkhorn_plan", never)
    cost = np.random.default_rng(3).random((256, 256))
    with pytest.raises(ConfigError, match=f"below {MIN_SINKHORN_REG:g}.*use solver exact for a sharp plan"):
        solve_transport(cost, solver="sinkhorn", reg=reg)


def test_sinkhorn_that_does_not_converge_fails_instead_of_returning_a_bad_plan(monkeypatch):
    from ofexp.fusion import transport

    monkeypatch.setattr(transport, "_SINKHORN_MAX_ITER", 3)  # far too few iterations for this reg
    cost = np.random.default_rng(4).random((32, 32))
    with pytest.raises(ValueError, match="did not converge in 3 iterations.*solver='exact'"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            solve_transport(cost, solver="sinkhorn", reg=MIN_SINKHORN_REG)


def test_sinkhorn_reg_is_relative_to_the_largest_cost():
    """Activation costs run to the hundreds: reg=0.01 must not underflow into an empty plan."""
    rng = np.random.default_rng(2)
    cost = rng.random((8, 8))
    a = np.full(8, 1 / 8)
    plan = solve_transport(cost, solver="sinkhorn", reg=0.05)
    np.testing.assert_allclose(plan, ot.sinkhorn(a, a, cost / cost.max(), 0.05), atol=1e-9)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        scaled = solve_transport(800 * cost, solver="sinkhorn", reg=0.05)
    np.testing.assert_allclose(scaled, plan, atol=1e-9)
    np.testing.assert_allclose(solve_transport(800 * cost), solve_transport(cost))  # exact: scale-free anyway


def test_recompute_batchnorm_stats():
    model = _model("mlp", bn=True)
    model.features[1].momentum = 0.3
    inputs = torch.randn(64, 3, 32, 32)
    recompute_batchnorm_stats(model, inputs, batch_size=16)
    with torch.no_grad():
        h = model.features[0](inputs.flatten(1))  # [64, 64]: input of the first BN
    assert torch.allclose(model.features[1].running_mean, h.mean(0), atol=1e-5)
    assert model.features[1].momentum == 0.3 and not model.training
    plain = _model("mlp")
    before = {k: v.clone() for k, v in plain.state_dict().items()}
    recompute_batchnorm_stats(plain, inputs)
    assert all(torch.equal(before[k], v) for k, v in plain.state_dict().items())
    with pytest.raises(ValueError, match="at least 2"):
        recompute_batchnorm_stats(model, inputs[:1])
