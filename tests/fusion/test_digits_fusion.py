"""On the digits default, geometric fusion keeps far more accuracy than naive averaging."""
from __future__ import annotations

import pytest
import torch

from ofexp.data import DataConfig, load_dataset
from ofexp.fusion import geometric_fuse, naive_fuse, recompute_batchnorm_stats
from ofexp.models import ModelSpec, build_model, init_weights
from ofexp.pipeline.steps.fuse import activation_inputs
from ofexp.training import evaluate, fit, make_recipe, seed_everything

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits():
    return load_dataset(DataConfig())


_TRAINED: dict[tuple, torch.nn.Module] = {}


def _train(splits, seed: int, arch: str = "mlp", width: float = 0.25, batchnorm: bool = False, epochs=None):
    """A network trained with the default recipe; each configuration is trained once per session."""
    key = (arch, width, batchnorm, epochs, seed)
    if key in _TRAINED:
        return _TRAINED[key]
    info = splits.info
    spec = ModelSpec(arch, info.num_classes, info.in_channels, info.input_size, width=width, batchnorm=batchnorm)
    recipe = make_recipe("default", epochs=epochs)
    seed_everything(seed)
    model = build_model(spec)
    init_weights(model, recipe.init)
    fit(model, splits, recipe, device=CPU, seed=seed, progress=False)
    _TRAINED[key] = model.eval()
    return model


def _accuracy(model, splits) -> float:
    return evaluate(model, splits.test_x, splits.test_y, device=CPU)["accuracy"]


@pytest.mark.parametrize("seed", [1, 2])
def test_geometric_beats_naive_on_digits_mlp(digits, seed):
    parents = [_train(digits, 100 * seed + i) for i in (1, 2)]
    parent_acc = [_accuracy(p, digits) for p in parents]
    naive = _accuracy(naive_fuse(parents), digits)
    by_weights = _accuracy(geometric_fuse(parents, alignment="weights").model, digits)
    by_activations = _accuracy(geometric_fuse(parents, alignment="activations",
                                              inputs=activation_inputs(digits, 256)).model, digits)
    print(f"seed {seed}: parents {parent_acc}, naive {naive:.3f}, weights {by_weights:.3f}, "
          f"activations {by_activations:.3f}")
    assert min(parent_acc) > 0.95
    assert by_weights > naive + 0.1
    assert by_activations > naive + 0.2
    assert by_activations > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_geometric_fusion_of_narrow_vgg11s_beats_the_issues_figures(digits, seed):
    """Narrow VGG11 (width 0.25), default recipe: the issue measured parents 98%, naive 10%,
    weight-based 19% and activation-based 77%; activation-based fusion must beat those."""
    parents = [_train(digits, 100 * seed + i, "vgg11", 0.25) for i in (1, 2)]
    parent_acc = [_accuracy(p, digits) for p in parents]
    naive = _accuracy(naive_fuse(parents), digits)
    fused = _accuracy(geometric_fuse(parents, alignment="activations",
                                     inputs=activation_inputs(digits, 256)).model, digits)
    print(f"vgg11 seed {seed}: parents {parent_acc}, naive {naive:.3f}, activations {fused:.3f}")
    assert min(parent_acc) > 0.97
    # without alignment the average collapses, as in the paper. Measured naive: 0.23 and 0.20 on
    # the machine that set this test, 0.259 and 0.323 on another with the same code and seeds (CPU
    # kernels change the trained weights); both far below the parents' 0.98-0.99
    assert naive < 0.4
    assert fused > 0.77 and fused > naive + 0.5


def test_three_parents_fuse_better_than_their_naive_average(digits):
    parents = [_train(digits, 100 + i) for i in (1, 2, 3)]
    parent_acc = [_accuracy(p, digits) for p in parents]
    naive = _accuracy(naive_fuse(parents), digits)
    result = geometric_fuse(parents, alignment="activations", inputs=activation_inputs(digits, 256))
    fused = _accuracy(result.model, digits)
    print(f"three parents {parent_acc}, naive {naive:.3f}, geometric {fused:.3f}")
    assert all(len(plans) == 2 for plans in result.plans.values())  # two parents mapped onto the third
    assert fused > naive + 0.2


@pytest.mark.slow
@pytest.mark.parametrize("seed", [1, 2])
def test_geometric_beats_naive_on_digits_resnet18(digits, seed):
    """Narrow ResNet18 (width 0.125, batch-norm, 5 epochs): residual streams align as one group each.

    Statistics are recomputed, as `ofexp fuse` does. Measured: parents 0.98, naive
    0.14-0.16, geometric 0.75-0.83.
    """
    parents = [_train(digits, 100 * seed + i, "resnet18", 0.125, batchnorm=True, epochs=5) for i in (1, 2)]
    inputs = activation_inputs(digits, 256)
    naive, geometric = naive_fuse(parents), geometric_fuse(parents, alignment="activations", inputs=inputs).model
    for model in (naive, geometric):
        recompute_batchnorm_stats(model, digits.train_x)
    parent_acc = [_accuracy(p, digits) for p in parents]
    accs = {"naive": _accuracy(naive, digits), "geometric": _accuracy(geometric, digits)}
    print(f"resnet18 seed {seed}: parents {parent_acc}, {accs}")
    assert min(parent_acc) > 0.9
    assert accs["geometric"] > accs["naive"] + 0.3
