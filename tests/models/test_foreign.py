"""Foreign networks (issue #23): torchvision classifiers and the user's factories, built from a
ModelSpec that round-trips through JSON; every bad name, kwarg or option is one line naming the fix;
a factory is imported only when trusted."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from ofexp.errors import ConfigError
from ofexp.models import (TRUSTED_FACTORIES_ENV, ModelName, ModelSpec, build_model, check_forward, has_batchnorm,
                          parse_kwargs, trust_factory)
from ofexp.models.foreign import GreyToRGB, kwargs_words
from ofexp.pipeline.steps.train import TrainConfig


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert "\n" not in text and "; " in text, text  # one line, with a fix
    return text


def test_torchvision_spec_builds_and_round_trips_through_json():
    spec = ModelSpec("torchvision:mobilenet_v2", 10, 1, 32, kwargs={"width_mult": 0.25, "dropout": 0.1})
    assert spec.kwargs == (("dropout", 0.1), ("width_mult", 0.25)) and spec.foreign
    again = ModelSpec.from_json(spec.to_json())
    assert again == spec and hash(again) == hash(spec)
    assert json.loads(spec.to_json())["kwargs"] == {"dropout": 0.1, "width_mult": 0.25}
    model = build_model(again)
    assert isinstance(model, GreyToRGB) and model.spec is again and has_batchnorm(model)
    assert model.eval()(torch.randn(2, 1, 32, 32)).shape == (2, 10)  # the grey channel is repeated
    rgb = build_model(ModelSpec("torchvision:resnet18", 7, 3, 32))
    assert not isinstance(rgb, GreyToRGB) and "fc.weight" in rgb.state_dict()
    assert rgb.fc.out_features == 7


def test_lists_are_kept_as_tuples_and_given_back_as_lists():
    spec = ModelSpec("torchvision:vgg11", 10, 3, 32, kwargs={"dropout": 0.0, "extra": [1, [2, 3]]})
    assert dict(spec.kwargs)["extra"] == (1, (2, 3))
    assert json.loads(spec.to_json())["kwargs"]["extra"] == [1, [2, 3]]
    assert ModelSpec.from_json(spec.to_json()) == spec


def test_own_specs_are_written_as_before():
    assert "kwargs" not in ModelSpec("mlp", 10, 1, 8).to_dict()
    assert ModelSpec.from_dict({"arch": "mlp", "num_classes": 10, "in_channels": 1, "input_size": 8}).kwargs == ()


BASE = {"arch": "torchvision:resnet18", "num_classes": 10, "in_channels": 3, "input_size": 32}
BAD_SPECS = [
    ({"arch": "torchvision:nope"}, "torchvision has no classifier 'nope'"),
    ({"arch": "torchvision:fasterrcnn_resnet50_fpn"}, "no classifier"),  # a detector, not a classifier
    ({"arch": "not a name"}, "unknown arch"),
    ({"kwargs": "width_mult=1"}, "JSON object"),
    ({"kwargs": {"a": {"b": 1}}}, "a is a dict"),
    ({"kwargs": {"a": float("nan")}}, "not finite"),
    ({"kwargs": {"num_classes": 3}}, "comes from the data set"),
    ({"kwargs": {"weights": "IMAGENET1K_V1"}}, "downloads nothing"),
    ({"kwargs": {"1x": 3}}, "identifier"),
    ({"kwargs": {"x": "y" * 2000}}, "longer than"),
    ({"width": 0.5}, "width=0.5 does not apply"),
    ({"batchnorm": True}, "batchnorm=True does not apply"),
    ({"in_channels": 2}, "3-channel"),
    ({"arch": "mlp", "kwargs": {"a": 1}}, "kwargs do not apply to mlp"),
]


@pytest.mark.parametrize("change,expected", BAD_SPECS, ids=[e for _, e in BAD_SPECS])
def test_bad_foreign_specs_are_refused_in_one_line(change, expected):
    with pytest.raises(ConfigError) as exc:
        ModelSpec.from_dict({**BASE, **change})
    assert expected in _one_line(exc)


@pytest.mark.parametrize("text,expected", [
    ('{"width_mult": 0.5}', (("width_mult", 0.5),)),
    ("width_mult=0.5,norm=batch,flag=true,none=null", (("flag", True), ("none", None), ("norm", "batch"),
                                                        ("width_mult", 0.5))),
    ("none", ()), ("", ()), ("{}", ()), (None, ()),
])
def test_model_kwargs_parse(text, expected):
    assert parse_kwargs(text) == expected


@pytest.mark.parametrize("text,expected", [
    ("[1, 2]", "not a JSON object"), ('{"a": ', "not valid JSON"), ("width_mult", "not a JSON object"),
    ("a=1,b", "not key=value"), ('{"a": 1, "a": 2}', None),
])
def test_bad_model_kwargs_are_refused_in_one_line(text, expected):
    if expected is None:  # JSON keeps the last of a repeated key, as Python's json does
        assert parse_kwargs(text) == (("a", 2),)
        return
    with pytest.raises(ConfigError) as exc:
        parse_kwargs(text)
    assert expected in _one_line(exc) and "--model-kwargs" in str(exc.value)


def test_key_value_form_is_used_only_when_it_reads_back_the_same():
    assert kwargs_words(parse_kwargs('{"width_mult": 0.5, "act": "relu"}')) == "act=relu,width_mult=0.5"
    assert kwargs_words(parse_kwargs('{"name": "1"}')) is None  # would read back as a number
    assert kwargs_words(parse_kwargs('{"sizes": [1, 2]}')) is None
    assert kwargs_words(parse_kwargs('{"name": "a b"}')) is None  # needs shell quoting


def test_forward_check_names_the_image_size():
    check_forward(ModelSpec("torchvision:mobilenet_v2", 10, 1, 32, kwargs={"width_mult": 0.25}))
    with pytest.raises(ConfigError) as exc:
        check_forward(ModelSpec("torchvision:alexnet", 10, 3, 8))  # alexnet's stem leaves nothing of 8 pixels
    assert "--image-size" in _one_line(exc)


# --- factories ---------------------------------------------------------------------------------

FACTORY_MODULE = '''
from pathlib import Path
Path(__file__).with_name("imported").touch()   # shows that the module was imported
from torch import nn

def tiny(num_classes, hidden=4):
    return nn.Sequential(nn.Flatten(), nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

def not_a_module(num_classes):
    return "a string"
'''


@pytest.fixture
def factory_module(tmp_path, monkeypatch):
    (tmp_path / "ofexp_test_factories.py").write_text(FACTORY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "")  # none; restored after the test
    yield tmp_path / "imported"
    import sys
    sys.modules.pop("ofexp_test_factories", None)


def test_an_untrusted_factory_is_never_imported(factory_module):
    spec = ModelSpec("ofexp_test_factories:tiny", 10, 1, 8)  # a spec may name it: it is only text
    for build in (lambda: build_model(spec), lambda: check_forward(spec)):
        with pytest.raises(ConfigError) as exc:
            build()
        assert TRUSTED_FACTORIES_ENV in _one_line(exc) and "--model ofexp_test_factories:tiny" in str(exc.value)
    assert not factory_module.exists(), "building from a spec imported an untrusted module"


def test_a_trusted_factory_builds_with_its_kwargs(factory_module, monkeypatch):
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, "other:thing, ofexp_test_factories:tiny")
    model = build_model(ModelSpec("ofexp_test_factories:tiny", 10, 1, 8, kwargs={"hidden": 6}))
    assert factory_module.exists() and model[1].out_features == 6 and model[3].out_features == 10
    assert model(torch.randn(3, 1, 8, 8)).shape == (3, 10)


def test_naming_a_factory_trusts_it_for_this_process_and_its_children(factory_module):
    trust_factory("torchvision:resnet18")  # not a factory: nothing to trust
    trust_factory("ofexp_test_factories:tiny")
    import os
    assert os.environ[TRUSTED_FACTORIES_ENV] == "ofexp_test_factories:tiny"
    assert isinstance(build_model(ModelSpec("ofexp_test_factories:tiny", 10, 1, 8)), nn.Module)


@pytest.mark.parametrize("arch,expected", [
    ("ofexp_test_factories:not_a_module", "not an nn.Module"),
    ("ofexp_test_factories:missing", "has no function 'missing'"),
    ("ofexp_no_such_module:tiny", "cannot import 'ofexp_no_such_module'"),
])
def test_factory_errors_are_one_line(factory_module, monkeypatch, arch, expected):
    monkeypatch.setenv(TRUSTED_FACTORIES_ENV, arch)
    with pytest.raises(ConfigError) as exc:
        build_model(ModelSpec(arch, 10, 1, 8))
    assert expected in _one_line(exc)


def test_constructor_errors_name_the_kwargs():
    with pytest.raises(ConfigError) as exc:
        build_model(ModelSpec("torchvision:resnet18", 10, 3, 32, kwargs={"depth": 3}))
    assert '{"depth":3}' in _one_line(exc) and "--model-kwargs" in str(exc.value)


# --- the train config ------------------------------------------------------------------------


def test_train_config_takes_kwargs_from_the_command_lines_model_name():
    cfg = TrainConfig(model=ModelName("torchvision:mobilenet_v2", parse_kwargs("width_mult=0.25")))
    assert type(cfg.model) is str and cfg.model_kwargs == (("width_mult", 0.25),)
    assert cfg.params()["model_kwargs"] == '{"width_mult":0.25}'
    assert TrainConfig(model="mlp").params()["model_kwargs"] == "none"
    assert TrainConfig(model="torchvision:mobilenet_v2", model_kwargs={"width_mult": 0.25}) == cfg


@pytest.mark.parametrize("kwargs,expected", [
    ({"model": "torchvision:resnet18", "width": 0.5}, "--width does not apply to --model torchvision:resnet18"),
    ({"model": "torchvision:resnet18", "bias": True}, "--bias does not apply"),
    ({"model": "torchvision:resnet18", "batchnorm": True}, "--batchnorm does not apply"),
    ({"model": "mlp", "model_kwargs": {"hidden": 3}}, "--model-kwargs does not apply to --model mlp"),
    ({"model": "torchvision:nope"}, "torchvision has no classifier 'nope'"),
    ({"model": "torchvision:resnet18", "model_kwargs": {"weights": "DEFAULT"}}, "downloads nothing"),
])
def test_train_config_refuses_options_that_do_not_apply(kwargs, expected):
    with pytest.raises(ConfigError) as exc:
        TrainConfig(**kwargs)
    assert expected in _one_line(exc)
