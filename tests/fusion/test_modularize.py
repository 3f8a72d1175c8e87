"""pt2 models (MLflow 3's default format) as module trees: layers and attention rebuilt at their paths."""
import pytest
import torch
import torchvision
from torch import nn

from ofexp.fusion import check_alignment_spec, geometric_fuse, naive_fuse, permute_model, trace_alignment
from ofexp.fusion.groups import group_sizes, random_permutations
from ofexp.fusion.modularize import is_exported_graph, modules_from_graph
from ofexp.fusion.trace import UntraceableModelError

X = torch.randn(2, 3, 28, 28, generator=torch.Generator().manual_seed(0))


def _exported(model: nn.Module, x: torch.Tensor = X) -> nn.Module:
    """What `mlflow.pytorch.load_model` returns for a pt2 model: the exported program's module,
    with a dynamic batch axis as MLflow exports it."""
    batch = torch.export.Dim("batch", min=1, max=1024)
    return torch.export.export(model.eval(), (x,), dynamic_shapes=({0: batch},)).module()


def _vit() -> nn.Module:
    torch.manual_seed(0)
    vit = torchvision.models.VisionTransformer(image_size=28, patch_size=4, num_layers=2, num_heads=4,
                                               hidden_dim=32, mlp_dim=64, num_classes=10)
    nn.init.normal_(vit.heads.head.weight, std=0.1)  # torchvision starts it at zero
    return vit.eval()


def test_an_exported_vit_gets_its_attention_back_as_modules_with_the_same_tensors_and_function():
    vit = _vit()
    exported = _exported(vit)
    rebuilt = modules_from_graph(exported)
    assert is_exported_graph(exported) and not any(
        "scaled_dot_product_attention" in str(n.target) for n in rebuilt.graph.nodes)
    attention = rebuilt.get_submodule("encoder.layers.encoder_layer_0.self_attention")
    assert isinstance(attention, nn.MultiheadAttention) and attention.num_heads == 4
    want = vit.state_dict()
    assert list(rebuilt.state_dict()) == list(exported.state_dict())
    assert all(torch.equal(t, want[k]) for k, t in rebuilt.state_dict().items())
    with torch.no_grad():
        assert torch.allclose(rebuilt(X), vit(X), atol=1e-5)
        assert torch.allclose(rebuilt(X[:1]), vit(X[:1]), atol=1e-5)  # the batch axis stays dynamic


def test_an_exported_vit_fused_with_its_permuted_copy_is_itself():
    model = modules_from_graph(_exported(_vit()))
    spec = trace_alignment(model, X)
    assert sorted(spec.heads) == [f"encoder.layers.encoder_layer_{i}.self_attention" for i in (0, 1)]
    check_alignment_spec(model, spec, X)
    twin = permute_model(model, random_permutations(spec, group_sizes(spec, model.state_dict()),
                                                    torch.Generator().manual_seed(1)), spec)
    with torch.no_grad():
        want = model(X)
        fused = geometric_fuse([model, twin], spec=spec, alignment="weights").model
        assert (fused(X) - want).abs().max() <= 1e-4 * want.abs().max()
        assert (naive_fuse([model, twin])(X) - want).abs().max() > 1e-2 * want.abs().max()


class _Causal(nn.Module):
    """Attention with a causal mask: not the plain self-attention that is rebuilt."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(8, 16)
        self.attn = nn.MultiheadAttention(16, 2)
        self.head = nn.Linear(16, 3)

    def forward(self, x):  # x: [S, B, 8]
        h = self.proj(x)
        mask = torch.triu(torch.full((x.shape[0], x.shape[0]), float("-inf")), diagonal=1)
        return self.head(self.attn(h, h, h, attn_mask=mask, need_weights=False)[0].mean(0))


def test_attention_that_is_not_rebuilt_stays_aten_and_is_refused_naming_its_projection():
    x = torch.randn(5, 2, 8)
    model = _Causal().eval()
    rebuilt = modules_from_graph(_exported(model, x))
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), model(x), atol=1e-6)
    with pytest.raises(UntraceableModelError, match=r"cannot align call_function linear .*attn.in_proj_weight"):
        trace_alignment(rebuilt, x)
