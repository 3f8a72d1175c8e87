import numpy as np
import pytest
import torch

from ofexp.errors import ConfigError, IncompatibleModelsError
from ofexp.fusion import naive_fuse
from ofexp.models import ModelSpec, build_model


def _model(seed, arch="vgg11", width=0.125, bn=True):
    torch.manual_seed(seed)
    model = build_model(ModelSpec(arch, 10, 3, 32, width=width, bias=True, batchnorm=bn))
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.normal_()
            m.num_batches_tracked.fill_(seed + 5)
    return model


def test_fusing_a_model_with_itself_gives_the_model():
    model = _model(0)
    fused = naive_fuse([model, model])
    assert fused is not model and fused.spec == model.spec
    for key, value in model.state_dict().items():
        assert torch.equal(fused.state_dict()[key], value), key


@pytest.mark.parametrize("weights", [(0.25, 0.75), (1, 3)])
def test_weighted_average_matches_hand_computation(weights):
    a, b = _model(0), _model(1)
    fused = naive_fuse([a, b], weights=weights).state_dict()
    sa, sb = a.state_dict(), b.state_dict()
    for key in sa:
        if sa[key].is_floating_point():
            assert torch.allclose(fused[key], 0.25 * sa[key] + 0.75 * sb[key], atol=1e-7), key
        else:
            assert torch.equal(fused[key], sa[key]), key  # counters come from the first model
    assert fused["features.1.num_batches_tracked"] == 5


def test_three_models_default_to_equal_weights():
    models = [_model(s, arch="mlp", bn=False) for s in range(3)]
    fused = naive_fuse(models)
    expected = sum(m.classifier.weight for m in models) / 3
    assert torch.allclose(fused.classifier.weight, expected, atol=1e-7)


def test_weights_from_numpy_or_torch_are_numbers_too():
    models = [_model(s, arch="mlp", bn=False) for s in range(2)]
    expected = naive_fuse(models, weights=[0.25, 0.75]).classifier.weight
    for weights in (np.array([1, 3], dtype=np.float32), torch.tensor([1.0, 3.0]).tolist(), (np.int64(1), np.int64(3))):
        assert torch.allclose(naive_fuse(models, weights=weights).classifier.weight, expected, atol=1e-7)


def test_bad_inputs_are_refused_on_one_line():
    a = _model(0)
    cases = [
        (ConfigError, "at least 2 models, got 1", lambda: naive_fuse([a])),
        (IncompatibleModelsError, "width=0.125 but model 1 has width=0.25",
         lambda: naive_fuse([a, _model(1, width=0.25)])),
        (IncompatibleModelsError, "arch='vgg11' but model 1 has arch='mlp'",
         lambda: naive_fuse([a, _model(1, arch="mlp")])),
        (ConfigError, "non-negative", lambda: naive_fuse([a, a], weights=[-1, 2])),
        (ConfigError, "weights 0,0 sums to 0; pass 2 non-negative", lambda: naive_fuse([a, a], weights=[0, 0])),
        (ConfigError, "weights has 3 values for 2 parents", lambda: naive_fuse([a, a], weights=[1, 1, 1])),
        (IncompatibleModelsError, "model 0 has tensor 'features.0.weight' but model 1 does not; fuse networks of "
                                  "one architecture", lambda: naive_fuse([a, torch.nn.Linear(2, 2)])),
        (IncompatibleModelsError, r"tensor 'weight' is \[2, 2\] in model 0 but \[3, 2\] in model 1",
         lambda: naive_fuse([torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)])),
        (ConfigError, "model 1 is a str, not an nn.Module", lambda: naive_fuse([a, "a.pth"])),
    ]
    for error, pattern, call in cases:
        with pytest.raises(error, match=pattern) as e:
            call()
        assert "\n" not in str(e.value)
