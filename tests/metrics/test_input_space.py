import pytest
import torch
from torch import nn

from ofexp.metrics import lipschitz


def test_linear_map_gives_its_largest_singular_value():
    torch.manual_seed(0)
    model = nn.Linear(20, 7, bias=False)
    expected = torch.linalg.svdvals(model.weight.detach().double())[0].item()
    assert lipschitz(model, (1, 20)) == pytest.approx(expected, rel=1e-4)


def test_bias_is_removed_by_f0_and_convolutions_work():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 3, 3, padding=1, bias=True), nn.Flatten())
    # g(x) = f(x) - f(0) is the bias-free linear map; its matrix is the Jacobian
    jac = torch.autograd.functional.jacobian(lambda x: model(x).flatten(), torch.zeros(1, 2, 5, 5))
    expected = torch.linalg.svdvals(jac.reshape(-1, 50).double())[0].item()
    assert lipschitz(model, (1, 2, 5, 5)) == pytest.approx(expected, rel=1e-4)


def test_relu_network_bound_is_below_the_product_of_norms_and_seeded():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 16, bias=False), nn.ReLU(), nn.Linear(16, 3, bias=False)).train()
    upper = 1.0
    for layer in (model[0], model[2]):
        upper *= torch.linalg.svdvals(layer.weight.detach())[0].item()
    value = lipschitz(model, (1, 10), max_iter=200)
    assert 0 < value <= upper * (1 + 1e-6)
    same = lipschitz(model, (1, 10), max_iter=200, generator=torch.Generator().manual_seed(0))
    assert value == same  # the default is a generator seeded 0
    assert model.training and all(p.grad is None for p in model.parameters())


def test_threads_are_restored_and_validated():
    torch.manual_seed(0)
    model = nn.Linear(20, 7, bias=False)
    before = torch.get_num_threads()
    one = lipschitz(model, (1, 20), threads=1)
    assert torch.get_num_threads() == before
    assert lipschitz(model, (1, 20), threads=None) == pytest.approx(one, rel=1e-5)
    with pytest.raises(ValueError, match="threads"):
        lipschitz(model, (1, 20), threads=0)
