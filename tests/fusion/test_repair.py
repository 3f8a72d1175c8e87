"""REPAIR: fused neurons get the (weighted) mean activation statistics of their sources."""
import itertools

import pytest
import torch

from ofexp.fusion import (alignment_diagnostics, alignment_spec, geometric_fuse, naive_fuse,
                          permute_model, repair_geometric, repair_statistics)
from ofexp.fusion.repair import _channel_stats
from ofexp.models import ARCHITECTURES
from test_geometric import _model, _random_perms  # random nets with non-trivial batch-norm

FLAGS = list(itertools.product(ARCHITECTURES, [False, True], [False, True]))


def _probe_stats(model, x):
    """Per probe module (the pre-activations that REPAIR corrects): its channels' (mean, std)."""
    names = list(dict.fromkeys(n for group in alignment_spec(model.spec).probes.values() for n in group))
    modules, stats = dict(model.named_modules()), {}
    hooks = [modules[n].register_forward_hook(lambda m, i, o, n=n: stats.__setitem__(n, _channel_stats(o)))
             for n in names]
    with torch.no_grad():
        model(x)
    for h in hooks:
        h.remove()
    return stats


@pytest.mark.parametrize("arch,bias,bn", FLAGS)
def test_repaired_neurons_take_the_weighted_mean_of_the_sources_statistics(arch, bias, bn):
    sources = [_model(arch, bias, bn, seed=seed) for seed in (0, 1)]
    weights = (0.3, 0.7)
    fused = naive_fuse(sources, weights=weights).eval()
    x = torch.randn(64, 3, 32, 32)
    scales = repair_statistics(fused, sources, x, weights)
    after = _probe_stats(fused, x)
    goal = [_probe_stats(s, x) for s in sources]
    assert set(scales) == set(after) and any(abs(s - 1) > 0.01 for s in scales.values())
    for name, (mean, std) in after.items():
        goal_mean = weights[0] * goal[0][name][0] + weights[1] * goal[1][name][0]
        goal_std = weights[0] * goal[0][name][1] + weights[1] * goal[1][name][1]
        torch.testing.assert_close(std, goal_std, rtol=1e-3, atol=1e-5, msg=name)
        module = dict(fused.named_modules())[name]
        if getattr(module, "bias", None) is not None:  # the shift needs a bias to live in
            torch.testing.assert_close(mean, goal_mean, rtol=1e-3, atol=1e-4, msg=name)


def _fused_with_a_permuted_copy(model):
    parents = [model, permute_model(model, _random_perms(model, seed=1)).eval()]
    x = torch.randn(32, 3, 32, 32)
    return parents, x, geometric_fuse(parents, alignment="activations", inputs=x)


@pytest.mark.parametrize("arch,bias,bn", FLAGS)
def test_repair_is_a_no_op_when_the_fusion_is_exact(arch, bias, bn):
    """A net fused with a permuted copy of itself already has its parents' statistics."""
    model = _model(arch, bias, bn, seed=0)
    parents, x, result = _fused_with_a_permuted_copy(model)
    before = {k: v.clone() for k, v in result.model.state_dict().items()}
    scales = repair_geometric(result, x)
    assert all(s == pytest.approx(1.0, abs=1e-3) for s in scales.values())
    for k, v in result.model.state_dict().items():
        torch.testing.assert_close(v, before[k], rtol=1e-3, atol=1e-5, msg=k)
    with torch.no_grad():
        assert (result.model.eval()(x) - model(x)).abs().max() <= 1e-3


def test_repair_keeps_each_channels_sign_and_leaves_dead_channels_alone():
    sources = [_model("vgg11", seed=seed) for seed in (0, 1)]
    fused = naive_fuse(sources).eval()
    first = fused.features[0]
    with torch.no_grad():
        first.weight[0].zero_()  # a dead channel: its output is 0 everywhere
    x = torch.randn(16, 3, 32, 32)
    before = first.weight.detach().clone()
    repair_statistics(fused, sources, x)
    assert torch.equal(first.weight[0], before[0])
    ratio = first.weight[1:].flatten(1) / before[1:].flatten(1)  # [C-1, k]: one positive scale per channel
    assert (ratio > 0).all() and torch.allclose(ratio, ratio[:, :1].expand_as(ratio), rtol=1e-4)


def test_repair_needs_two_samples():
    model = _model("mlp", bias=True)
    with pytest.raises(ValueError, match="at least 2"):
        repair_statistics(model, [model], torch.randn(1, 3, 32, 32))


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_diagnostics_of_an_exact_fusion_are_perfect_and_repair_restores_a_collapsed_spread(arch):
    model = _model(arch, bn=True)
    parents, x, exact = _fused_with_a_permuted_copy(model)
    for g, d in alignment_diagnostics(exact.model, exact.parents, x).items():
        assert d["match_correlation"] == pytest.approx(1.0, abs=1e-4), g
        assert d["std_ratio"] == pytest.approx(1.0, abs=1e-3), g
    # Two unrelated nets averaged as they are: neurons do not match, and the spread shrinks.
    others = [_model(arch, bn=True, seed=s) for s in (0, 1)]
    fused = naive_fuse(others).eval()
    collapsed = alignment_diagnostics(fused, others, x)
    assert max(d["match_correlation"] for d in collapsed.values()) < 0.6
    assert min(d["std_ratio"] for d in collapsed.values()) < 0.9
    repair_statistics(fused, others, x)
    for g, d in alignment_diagnostics(fused, others, x).items():
        assert d["std_ratio"] == pytest.approx(1.0, abs=0.05), g  # median over the group's probes
