import numpy as np
import pytest
import torch

from ofexp.fusion import alignment_spec, geometric_fuse, permute_model
from ofexp.fusion.groups import group_sizes
from ofexp.fusion.interpolation import ALPHAS, barrier, fusion_curves, interpolation_curve, plot_curves
from ofexp.models import ModelSpec, build_model
from ofexp.training import evaluate


def _mlp(seed=0, bn=False, width=0.125):
    torch.manual_seed(seed)
    return build_model(ModelSpec("mlp", 10, 1, 8, width=width, batchnorm=bn)).eval()


def _data(n=64, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen)


def test_barrier_is_the_largest_rise_above_the_chord():
    alphas = np.array(ALPHAS)
    assert barrier(2 + 3 * alphas, alphas) == pytest.approx(0.0, abs=1e-12)  # on the chord
    bump = 1 + alphas * (1 - alphas)  # chord is 1, peak 0.25 at 0.5
    assert barrier(bump, alphas) == pytest.approx(0.25)
    assert barrier(1 - alphas * (1 - alphas), alphas) == pytest.approx(0.0)  # a dip is no barrier


def test_endpoints_are_the_two_models_and_the_grid_is_eleven_points():
    a, b = _mlp(0), _mlp(1)
    x, y = _data()
    curve = interpolation_curve(a, b, x, y)
    assert curve.alphas == ALPHAS and len(ALPHAS) == 11 and ALPHAS[0] == 0 and ALPHAS[-1] == 1
    for end, model in ((0, a), (-1, b)):
        expected = evaluate(model, x, y, device=torch.device("cpu"))
        assert curve.losses[end] == pytest.approx(expected["loss"], rel=1e-6)
        assert curve.accuracies[end] == pytest.approx(expected["accuracy"])
    line = [(1 - t) * curve.losses[0] + t * curve.losses[-1] for t in ALPHAS]
    assert curve.loss_barrier == pytest.approx(max(l - c for l, c in zip(curve.losses, line)))


def test_alignment_flattens_the_curve_to_a_permuted_copy():
    model = _mlp(0, width=0.25)
    gen = torch.Generator().manual_seed(5)
    sizes = group_sizes(alignment_spec(model.spec), model.state_dict())
    permuted = permute_model(model, {g: torch.randperm(n, generator=gen) for g, n in sizes.items()}).eval()
    x, y = _data(256)
    result = geometric_fuse([permuted, model])  # target: the original
    curves = fusion_curves(model, permuted, result.aligned[0], result.model, x, y)
    assert list(curves) == ["parents_raw", "parents_aligned", "parent_fused"]
    aligned = curves["parents_aligned"]
    assert max(aligned.losses) - min(aligned.losses) < 1e-5 and aligned.loss_barrier < 1e-5
    assert curves["parents_raw"].loss_barrier > 1e-3  # the raw line leaves the function
    assert curves["parent_fused"].losses[-1] == pytest.approx(curves["parents_raw"].losses[0], abs=1e-5)


def test_batchnorm_statistics_are_recomputed_at_every_point():
    a, b = _mlp(0, bn=True), _mlp(1, bn=True)
    x, y = _data()
    with pytest.raises(ValueError, match="bn_inputs"):
        interpolation_curve(a, b, x, y)
    train_x = torch.randn(128, 1, 8, 8)
    curve = interpolation_curve(a, b, x, y, bn_inputs=train_x)
    # The endpoint is model A with statistics re-estimated on train_x, not A's stored ones.
    from ofexp.fusion import recompute_batchnorm_stats
    import copy
    expected = copy.deepcopy(a)
    recompute_batchnorm_stats(expected, train_x)
    assert curve.losses[0] == pytest.approx(evaluate(expected, x, y, device=torch.device("cpu"))["loss"], rel=1e-6)
    assert a.features[1].running_mean.abs().sum() == 0  # the input models are untouched


def test_different_shapes_and_bad_grids_are_refused():
    x, y = _data()
    with pytest.raises(ValueError, match="align B onto A's width first"):
        interpolation_curve(_mlp(0), _mlp(1, width=0.25), x, y)
    with pytest.raises(ValueError, match="rise from 0 to 1"):
        interpolation_curve(_mlp(0), _mlp(1), x, y, alphas=(0.0, 0.5))


def test_different_widths_skip_the_raw_curve_and_plot_has_every_curve():
    small, large = _mlp(0, width=0.125), _mlp(1, width=0.25)
    x, y = _data()
    result = geometric_fuse([large, small])  # onto the small target's width
    curves = fusion_curves(small, large, result.aligned[0], result.model, x, y)
    assert list(curves) == ["parents_aligned", "parent_fused"]
    fig = plot_curves(curves, "title")
    loss_ax, acc_ax = fig.axes
    assert [line.get_label() for line in acc_ax.get_lines()] == list(curves)
    assert len(loss_ax.get_lines()) == 2 and list(loss_ax.get_lines()[0].get_xdata()) == list(ALPHAS)
