import itertools

import pytest
import torch

from ofexp.fusion import alignment_spec
from ofexp.fusion.groups import (
    AlignmentSpec,
    apply_plan,
    check_covers,
    group_sizes,
    map_axis,
    permutation_plan,
    permute_model,
)
from ofexp.models import ARCHITECTURES, ModelSpec, build_model

FLAGS = list(itertools.product(ARCHITECTURES, [False, True], [False, True]))


def _model(arch, bias=False, bn=False, width=0.125):
    return build_model(ModelSpec(arch, 10, 3, 32, width=width, bias=bias, batchnorm=bn))


@pytest.mark.parametrize("arch,bias,bn", FLAGS)
def test_spec_covers_every_state_dict(arch, bias, bn):
    model = _model(arch, bias, bn)
    spec = alignment_spec(model.spec)
    state = model.state_dict()
    check_covers(spec, state)
    assert list(spec.axes) == list(state)  # forward order = state-dict order
    removed = "classifier.weight"  # a reader: the spec stays valid without it
    broken = AlignmentSpec({k: v for k, v in spec.axes.items() if k != removed})
    with pytest.raises(ValueError, match=f"'{removed}' is not in the spec") as e:
        check_covers(broken, state)
    assert "\n" not in str(e.value)


def test_check_covers_names_extra_keys_axis_counts_and_sizes():
    model = _model("vgg11")
    spec = alignment_spec(model.spec)
    state = model.state_dict()
    with pytest.raises(ValueError, match="'ghost.weight' is in the spec but not in the state dict"):
        check_covers(AlignmentSpec({**spec.axes, "ghost.weight": ("features.0",)}), state)
    with pytest.raises(ValueError, match="'features.0.weight' has 4 axes but the spec names 2"):
        check_covers(AlignmentSpec({**spec.axes, "features.0.weight": ("features.0", None)}), state)
    wrong = {**spec.axes, "classifier.weight": (None, "features.0")}
    with pytest.raises(ValueError, match="group 'features.0' has size 8 in 'features.0.weight' but 64 in"):
        check_covers(AlignmentSpec(wrong), state)


def test_group_without_writer_is_refused():
    with pytest.raises(ValueError, match="group 'g' is read by 'b' but written by no tensor"):
        AlignmentSpec({"a": (None,), "b": (None, "g")})


def test_resnet_residual_stream_is_one_group():
    spec = alignment_spec(ModelSpec("resnet18", 10, 3, 32, width=0.125, batchnorm=True))
    # traced: each group is named after the module that first writes it
    stream0, stream1, stream3 = "conv1", "layers.1.0.conv2", "layers.3.0.conv2"
    assert spec.groups[:5] == (stream0, "layers.0.0.conv1", "layers.0.1.conv1", "layers.1.0.conv1", stream1)
    assert len(spec.groups) == 4 + 8
    assert set(spec.writers[stream0]) >= {"conv1.weight", "bn1.weight", "layers.0.0.conv2.weight",
                                          "layers.0.1.bn2.running_var"}
    assert set(spec.writers[stream1]) >= {
        "layers.1.0.conv2.weight", "layers.1.1.conv2.weight", "layers.1.0.shortcut.0.weight",
        "layers.1.0.shortcut.1.bias"}
    assert set(spec.readers[stream1]) == {"layers.1.1.conv1.weight", "layers.2.0.conv1.weight",
                                          "layers.2.0.shortcut.0.weight"}
    assert spec.axes["layers.1.0.conv2.weight"] == (stream1, "layers.1.0.conv1", None, None)
    assert spec.axes["classifier.weight"] == (None, stream3)
    assert spec.axes["bn1.num_batches_tracked"] == ()


def test_map_axis_is_a_weighted_sum_along_any_axis():
    t = torch.randn(2, 3, 4)
    plan = torch.rand(3, 5)
    out = map_axis(t, 1, plan)  # [2, 5, 4]
    assert torch.allclose(out, torch.einsum("aib,ij->ajb", t, plan), atol=1e-6)
    with pytest.raises(ValueError, match="does not match"):
        map_axis(t, 0, plan)


def test_permutation_plan_and_apply_plan():
    perm = torch.tensor([2, 0, 1])
    p = permutation_plan(perm)
    assert p[2, 0] == 1 and p[0, 1] == 1 and p[1, 2] == 1 and p.sum() == 3
    spec = AlignmentSpec({"w1": ("g", None), "b1": ("g",), "w2": (None, "g")})
    state = {"w1": torch.randn(3, 4), "b1": torch.randn(3), "w2": torch.randn(5, 3)}
    new = dict(state)
    apply_plan(new, spec, "g", p)
    assert torch.equal(new["w1"], state["w1"][perm]) and torch.equal(new["b1"], state["b1"][perm])
    assert torch.equal(new["w2"], state["w2"][:, perm])


def test_permute_model_changes_weights_not_function():
    torch.manual_seed(0)
    model = _model("resnet18", bias=True).eval()
    spec = alignment_spec(model.spec)
    perms = {g: torch.randperm(n) for g, n in group_sizes(spec, model.state_dict()).items()}
    permuted = permute_model(model, perms).eval()
    assert not torch.equal(permuted.conv1.weight, model.conv1.weight)
    assert torch.equal(permuted.conv1.weight, model.conv1.weight[perms["conv1"]])
    x = torch.randn(4, 3, 32, 32)
    assert torch.allclose(permuted(x), model(x), atol=1e-5)


def test_permute_model_refuses_bad_perms():
    model = _model("mlp")
    with pytest.raises(ValueError, match="unknown group 'nope'"):
        permute_model(model, {"nope": [0]})
    with pytest.raises(ValueError, match="not a permutation of 0..63"):
        permute_model(model, {"features.0": [0] * 64})
