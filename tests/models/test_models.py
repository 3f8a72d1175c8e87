import itertools

import pytest
import torch
from torch import nn

from ofexp.errors import ConfigError
from ofexp.models import ARCHITECTURES, INIT_SCHEMES, ModelSpec, build_model, init_weights

FLAGS = list(itertools.product(ARCHITECTURES, [False, True], [False, True]))


@pytest.mark.parametrize("in_channels,classes", [(1, 10), (3, 100)])
@pytest.mark.parametrize("arch,bias,bn", FLAGS)
def test_every_arch_builds_and_runs(arch, bias, bn, in_channels, classes):
    spec = ModelSpec(arch, classes, in_channels, 32, width=0.125, bias=bias, batchnorm=bn)
    model = build_model(spec)
    assert model.spec is spec
    model.eval()
    out = model(torch.randn(3, in_channels, 32, 32))
    assert out.shape == (3, classes)
    names = dict(model.named_parameters())
    assert ("classifier.bias" in names) == bias
    assert any(".running_mean" in k for k in model.state_dict()) == bn
    assert all(m.bias is None for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))) != bias


def test_parameter_names_are_simple_and_deterministic():
    vgg = build_model(ModelSpec("vgg11", 10, 3, 32, width=0.125, batchnorm=True))
    assert {"features.0.weight", "features.1.running_var", "classifier.weight"} <= set(vgg.state_dict())
    res = build_model(ModelSpec("resnet18", 10, 3, 32, width=0.125, batchnorm=True))
    keys = set(res.state_dict())
    assert {"conv1.weight", "layers.0.0.conv1.weight", "layers.1.0.shortcut.0.weight",
            "layers.1.0.shortcut.1.running_mean", "classifier.weight"} <= keys
    assert not any(k.startswith("layers.0.0.shortcut") for k in keys)  # same shape: identity
    mlp = build_model(ModelSpec("mlp", 10, 1, 8, width=0.125))
    assert [k for k in mlp.state_dict()] == [
        "features.0.weight", "features.2.weight", "features.4.weight", "classifier.weight"]
    assert mlp.features[0].out_features == 64 and mlp.features[4].out_features == 16


@pytest.mark.parametrize("arch", ["vgg11", "resnet18"])
def test_larger_inputs_work(arch):
    model = build_model(ModelSpec(arch, 10, 3, 48, width=0.125))
    assert model(torch.randn(2, 3, 48, 48)).shape == (2, 10)


def test_width_rounds_and_never_hits_zero():
    spec = ModelSpec("vgg11", 10, 3, 32, width=0.001)
    assert spec.channels(64) == 1 and spec.channels(512) == 1
    assert build_model(spec)(torch.randn(1, 3, 32, 32)).shape == (1, 10)


def test_spec_json_round_trip():
    spec = ModelSpec("resnet18", 100, 3, 32, width=0.5, bias=True, batchnorm=True)
    assert ModelSpec.from_json(spec.to_json()) == spec
    assert ModelSpec.from_dict(spec.to_dict()) == spec
    # an integer width from hand-written JSON equals the float one
    text = '{"arch": "mlp", "num_classes": 10, "in_channels": 1, "input_size": 8, "width": 1}'
    assert ModelSpec.from_json(text) == ModelSpec("mlp", 10, 1, 8, width=1.0)


BASE = {"arch": "vgg11", "num_classes": 10, "in_channels": 3, "input_size": 32}


@pytest.mark.parametrize("change,word", [
    ({"depth": 3}, "depth"),
    ({"arch": "vgg16"}, "arch"),
    ({"num_classes": 1}, "num_classes"),
    ({"num_classes": 100_001}, "num_classes"),
    ({"num_classes": 10.0}, "num_classes"),
    ({"num_classes": True}, "num_classes"),
    ({"width": 0}, "width"),
    ({"width": 17}, "width"),
    ({"width": float("nan")}, "width"),
    ({"width": "1"}, "width"),
    ({"input_size": 0}, "input_size"),
    ({"input_size": 2048}, "input_size"),
    ({"input_size": 28}, "input_size"),  # too small for vgg11
    ({"in_channels": 0}, "in_channels"),
    ({"in_channels": 65}, "in_channels"),
    ({"bias": 1}, "bias"),
    ({"batchnorm": "yes"}, "batchnorm"),
])
def test_from_dict_refuses_bad_values(change, word):
    with pytest.raises(ConfigError, match=word) as e:
        ModelSpec.from_dict({**BASE, **change})
    assert "\n" not in str(e.value) and "; " in str(e.value)  # one line, with a fix


def test_from_dict_refuses_missing_keys_and_bad_json():
    with pytest.raises(ConfigError, match="missing key 'input_size'"):
        ModelSpec.from_dict({k: v for k, v in BASE.items() if k != "input_size"})
    with pytest.raises(ConfigError, match="JSON"):
        ModelSpec.from_json("{not json")
    with pytest.raises(ConfigError, match="JSON object"):
        ModelSpec.from_json("[1, 2]")
    with pytest.raises(ConfigError, match="ModelSpec"):
        build_model(BASE)


def test_init_weights_kaiming():
    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg11", 10, 3, 32, width=0.5, bias=True, batchnorm=True))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight)
    init_weights(model, "kaiming")
    conv = model.features[4]  # [64, 32, 3, 3], fan_out = 64 * 9
    assert conv.weight.std().item() == pytest.approx((2 / (64 * 9)) ** 0.5, rel=0.1)
    assert all(torch.all(m.bias == 0) for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
    bn = model.features[1]
    assert torch.all(bn.weight == 1) and torch.all(bn.bias == 0)


def test_init_weights_default_is_a_no_op_and_unknown_scheme_fails():
    model = build_model(ModelSpec("mlp", 10, 1, 8, width=0.125))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    init_weights(model, "default")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert INIT_SCHEMES == ("default", "kaiming")
    with pytest.raises(ConfigError, match="xavier.*default, kaiming"):
        init_weights(model, "xavier")
