"""Alignment specs traced from the network: ofexp's own architectures and torchvision's."""
import itertools

import pytest
import torch
import torchvision
from torch import nn

from hand_specs import hand_alignment_spec
from ofexp.errors import ConfigError
from ofexp.fusion import (alignment_spec, check_alignment_spec, geometric_fuse, naive_fuse, permute_model,
                          trace_alignment)
from ofexp.fusion.groups import AlignmentSpec, group_sizes, random_permutations
from ofexp.fusion.invariance import AlignmentSpecError
from ofexp.fusion.trace import UntraceableModelError
from ofexp.models import ARCHITECTURES, ModelSpec, build_model

OWN = list(itertools.product(ARCHITECTURES, [False, True], [False, True]))
X32 = torch.zeros(2, 3, 32, 32)


def _nontrivial_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random batch-norm statistics and affine terms, so that a wrong BN alignment shows."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=gen) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.1)
    return model.eval()


def _partition(spec: AlignmentSpec) -> list[tuple]:
    """The groups as sets of (key, axis), whatever their names."""
    parts: dict[str, list] = {}
    for key, axes in spec.axes.items():
        for i, g in enumerate(axes):
            if g is not None:
                parts.setdefault(g, []).append((key, i))
    return sorted(tuple(v) for v in parts.values())


def _own(arch, bias, bn, seed):
    torch.manual_seed(seed)
    spec = ModelSpec(arch, 10, 3, 32, width=0.125, bias=bias, batchnorm=bn)
    return _nontrivial_bn(build_model(spec), seed)


@pytest.mark.parametrize("arch,bias,bn", OWN)
def test_traced_spec_of_own_architectures_equals_the_hand_written_one(arch, bias, bn):
    spec = ModelSpec(arch, 10, 3, 32, width=0.125, bias=bias, batchnorm=bn)
    traced, hand = alignment_spec(spec), hand_alignment_spec(spec)
    assert _partition(traced) == _partition(hand)
    assert list(traced.axes) == list(hand.axes)
    rename = dict(zip(hand.groups, traced.groups))  # both in forward order
    assert {rename[g]: p for g, p in hand.probes.items()} == traced.probes


@pytest.mark.parametrize("arch,bias,bn", OWN)
def test_fusing_with_the_traced_spec_gives_bit_identical_weights(arch, bias, bn):
    a, b = _own(arch, bias, bn, 1), _own(arch, bias, bn, 2)
    inputs = torch.randn(16, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for alignment in ("weights", "activations"):
        kw = dict(alignment=alignment, inputs=inputs)
        with_hand = geometric_fuse([a, b], spec=hand_alignment_spec(a.spec), **kw).model.state_dict()
        traced = geometric_fuse([a, b], **kw).model.state_dict()  # the default: traced
        assert list(traced) == list(with_hand)
        assert all(torch.equal(traced[k], with_hand[k]) for k in traced), alignment


def _torchvision_models() -> dict[str, nn.Module]:
    """Architectures nobody here wrote, narrowed to run on 2 CPU cores."""
    vgg = torchvision.models.vgg11_bn(num_classes=10)
    vgg.classifier[0], vgg.classifier[3], vgg.classifier[6] = nn.Linear(512 * 49, 32), nn.Linear(32, 32), nn.Linear(32, 10)
    dense = torchvision.models.DenseNet(growth_rate=8, block_config=(2, 2, 2), num_init_features=16, bn_size=2,
                                        num_classes=10)
    return {
        "resnet18": torchvision.models.resnet18(num_classes=10),
        "vgg11_bn": vgg,
        "mobilenet_v2": torchvision.models.mobilenet_v2(num_classes=10, width_mult=0.25),
        "densenet": dense,
        "vit": _vit(),
    }


def _vit() -> nn.Module:
    vit = torchvision.models.VisionTransformer(image_size=32, patch_size=4, num_layers=2, num_heads=4,
                                               hidden_dim=64, mlp_dim=128, num_classes=10)
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts it at zero: every output would be 0
    return vit


@pytest.fixture(scope="module")
def torchvision_models():
    torch.manual_seed(0)
    return {name: _nontrivial_bn(m, i) for i, (name, m) in enumerate(_torchvision_models().items())}


@pytest.mark.parametrize("name", ["resnet18", "vgg11_bn", "mobilenet_v2", "densenet", "vit"])
def test_torchvision_model_fused_with_its_permuted_copy_is_itself(torchvision_models, name):
    model = torchvision_models[name]
    spec = trace_alignment(model, X32)
    check_alignment_spec(model, spec, torch.randn(2, 3, 32, 32))
    gen = torch.Generator().manual_seed(1)
    sizes = group_sizes(spec, model.state_dict())
    permuted = permute_model(model, random_permutations(spec, sizes, gen), spec).eval()
    x = torch.randn(4, 3, 32, 32, generator=gen)
    with torch.no_grad():
        want = model(x)
        fused = geometric_fuse([model, permuted], spec=spec).model.eval()
        naive = naive_fuse([model, permuted]).eval()
        scale = want.abs().max()
        assert (fused(x) - want).abs().max() <= 1e-4 * scale
        assert (naive(x) - want).abs().max() > 1e-2 * scale  # the symmetry is real: averaging breaks it


def test_block_structured_axes_are_traced(torchvision_models):
    """cat gives concatenated segments; flatten into a Linear gives a channel x position product."""
    dense = trace_alignment(torchvision_models["densenet"], X32)
    first, second = "features.conv0", "features.denseblock1.denselayer1.conv2"
    assert dense.axes["features.denseblock1.denselayer2.norm1.weight"] == ((((first, 16),), ((second, 8),)),)
    vgg = trace_alignment(torchvision_models["vgg11_bn"], X32)
    assert vgg.axes["classifier.0.weight"] == ("classifier.0", ((("features.25", 512), (None, 49)),))
    mobile = trace_alignment(torchvision_models["mobilenet_v2"], X32)
    depthwise = mobile.axes["features.2.conv.1.0.weight"]  # ties its input and output groups
    assert depthwise[0] == mobile.axes["features.2.conv.0.0.weight"][0] and depthwise[1:] == (None,) * 3


def test_a_wrongly_wired_group_fails_the_check_and_is_named():
    model = _own("resnet18", True, True, 0)
    spec = alignment_spec(model)
    axes = dict(spec.axes)
    # the stem's batch-norm shift no longer follows its channels
    axes["bn1.bias"] = (None,)
    with pytest.raises(AlignmentSpecError, match=r"^alignment check failed: permuting group 'conv1' \(8 neurons"):
        check_alignment_spec(model, AlignmentSpec(axes, spec.probes), X32 + torch.randn(2, 3, 32, 32))
    check_alignment_spec(model, spec, torch.randn(2, 3, 32, 32))


class _Attention(nn.Module):
    """Attention on a token stream; with kdim, keys and values come from a second stream of another width."""

    def __init__(self, kdim=None):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.other = nn.Linear(8, kdim) if kdim else None
        self.attn = nn.MultiheadAttention(16, 4, batch_first=True, kdim=kdim, vdim=kdim)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        h = self.proj(x)
        kv = self.other(x) if self.other is not None else h
        return self.head(self.attn(h, kv, kv, need_weights=True)[0].mean(1))


class _Grouped(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Conv2d(3, 8, 3), nn.Conv2d(8, 8, 3, groups=2)

    def forward(self, x):
        return self.b(self.a(x)).mean((2, 3))


class _CumulativeSum(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 6), nn.Linear(6, 2)

    def forward(self, x):
        return self.b(torch.cumsum(self.a(x), dim=1))


@pytest.mark.parametrize("model,x,message", [
    (_Grouped(), X32, r"cannot align call_module b at b .*a grouped conv \(groups=2, 8 -> 8 channels\)"),
    (_CumulativeSum(), torch.zeros(2, 4), r"cannot align call_function cumsum at the top level \(node cumsum\): no "
                                          r"alignment rule covers this op; it would leave a.weight, a.bias unaligned"),
])
def test_what_cannot_be_aligned_is_refused_in_one_line_naming_the_node(model, x, message):
    with pytest.raises(UntraceableModelError, match=message) as e:
        trace_alignment(model, x)
    assert "\n" not in str(e.value) and isinstance(e.value, ConfigError)


def test_attention_heads_are_blocks_queries_share_keys_values_share_the_output(torchvision_models):
    vit = torchvision_models["vit"]
    spec = trace_alignment(vit, X32)
    attn = "encoder.layers.encoder_layer_0.self_attention"
    qk, vo = f"{attn}.qk", f"{attn}.vo"
    assert spec.heads[attn] == (4, (qk, vo))
    assert spec.axes[f"{attn}.in_proj_weight"] == ((((qk, 64),), ((qk, 64),), ((vo, 64),)), "conv_proj")
    assert spec.axes[f"{attn}.out_proj.weight"] == ("conv_proj", vo)
    assert spec.axes["class_token"] == (None, None, "conv_proj") and spec.axes["heads.head.weight"][0] is None
    assert spec.token_probes[qk] == ((attn, "query-key"),) and spec.token_probes[vo] == ((attn, "value"),)
    assert ("encoder.layers.encoder_layer_0.ln_1", "input") in spec.token_probes["conv_proj"]
    # activation alignment reads the stream, the MLPs' hidden layers and the projections on the tokens
    gen = torch.Generator().manual_seed(2)
    twin = permute_model(vit, random_permutations(spec, group_sizes(spec, vit.state_dict()), gen), spec).eval()
    x = torch.randn(8, 3, 32, 32, generator=gen)
    with torch.no_grad():
        fused = geometric_fuse([vit, twin], spec=spec, alignment="activations", inputs=x).model.eval()
        assert (fused(x) - vit(x)).abs().max() <= 1e-4 * vit(x).abs().max()
    # a free permutation of the 64 query dimensions mixes heads: the check catches a spec without heads
    with pytest.raises(AlignmentSpecError, match=f"permuting group '{qk}' \\(64 neurons"):
        check_alignment_spec(vit, AlignmentSpec(spec.axes, spec.probes), torch.randn(2, 3, 32, 32))


@pytest.mark.parametrize("kdim", [None, 6])
def test_attention_of_another_module_with_separate_projections_is_aligned(kdim):
    torch.manual_seed(0)
    model = _Attention(kdim).eval()
    x = torch.randn(3, 5, 8)
    spec = trace_alignment(model, x)
    check_alignment_spec(model, spec, x)
    permuted = permute_model(model, random_permutations(spec, group_sizes(spec, model.state_dict()),
                                                        torch.Generator().manual_seed(3)), spec).eval()
    with torch.no_grad():
        fused = geometric_fuse([model, permuted], spec=spec, alignment="weights").model.eval()
        assert torch.allclose(fused(x), model(x), atol=1e-5)
        assert not torch.allclose(naive_fuse([model, permuted]).eval()(x), model(x), atol=1e-3)


def test_a_network_ofexp_did_not_build_needs_an_example_input():
    with pytest.raises(ConfigError, match="pass example_input=.* to trace a Linear, which ofexp did not build"):
        alignment_spec(nn.Linear(2, 2))
    with pytest.raises(ConfigError, match=r"does not run on an input of shape \[2, 5\]"):
        trace_alignment(nn.Linear(2, 2), torch.zeros(2, 5))


class _Tokens(nn.Module):
    """A ViT without attention: patches, a class token (cat on the sequence axis), a learned
    position embedding (add), LayerNorm and a token MLP on the last axis, the class token's output."""

    def __init__(self, hidden=16):
        super().__init__()
        self.patch = nn.Conv2d(3, hidden, 8, stride=8)
        self.cls = nn.Parameter(torch.randn(1, 1, hidden))
        self.pos = nn.Parameter(torch.randn(1, 17, hidden))
        self.norm = nn.LayerNorm(hidden)
        self.up, self.down = nn.Linear(hidden, 32), nn.Linear(32, hidden)
        self.head = nn.Linear(hidden, 10)

    def forward(self, x):
        t = self.patch(x).reshape(x.shape[0], self.cls.shape[-1], -1).permute(0, 2, 1)  # [B, 16, hidden]
        t = torch.cat([self.cls.expand(x.shape[0], -1, -1), t], dim=1) + self.pos  # [B, 17, hidden]
        t = t + self.down(nn.functional.gelu(self.up(self.norm(t))))
        return self.head(t[:, 0])


def test_tokens_class_token_and_position_embedding_follow_the_stream():
    torch.manual_seed(0)
    model = _Tokens().eval()
    spec = trace_alignment(model, X32)
    assert spec.axes["cls"] == (None, None, "patch") and spec.axes["pos"] == (None, None, "patch")
    assert spec.axes["norm.weight"] == ("patch",) and spec.axes["down.weight"] == ("patch", "up")
    check_alignment_spec(model, spec, torch.randn(2, 3, 32, 32))
    sizes = group_sizes(spec, model.state_dict())
    permuted = permute_model(model, {g: torch.randperm(n) for g, n in sizes.items()}, spec).eval()
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        fused = geometric_fuse([model, permuted], spec=spec).model.eval()
        assert torch.allclose(fused(x), model(x), atol=1e-5)
