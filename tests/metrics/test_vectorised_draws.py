"""The vmap'd Monte Carlo draws of the σ searches equal a plain per-draw loop on the same noise."""
import copy

import pytest
import torch
import torch.nn.functional as F

from ofexp.metrics import SearchBudget, pac_bayes_deviation, sharpness_deviation
from ofexp.metrics.sharpness import ASCENT_LR, EPSILON, minibatch_indices
from ofexp.models import ModelSpec, build_model, init_weights

BUDGET = SearchBudget(sharpness_draws=3, ascent_steps=3, sharpness_batches=2, pac_bayes_draws=3,
                      pac_bayes_batches=2, batch_size=16)


@pytest.fixture(scope="module")
def conv_net():
    """A tiny VGG11 (convs, max-pools, a linear head) and 64 random 32×32 images."""
    torch.manual_seed(0)
    model = build_model(ModelSpec("vgg11", 10, 1, 32, width=0.0625))
    init_weights(model, "kaiming")
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 1, 32, 32, generator=g), torch.randint(10, (64,), generator=g)
    return model, x, y, F.cross_entropy(model.eval()(x), y).item()


def set_flat(model, flat):
    """Copy a flat vector into the model's parameters, in named_parameters order."""
    with torch.no_grad():
        i = 0
        for p in model.parameters():
            p.copy_(flat[i:i + p.numel()].view_as(p))
            i += p.numel()


def flat_params(model):
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def loop_losses(twin, x, y, idx):
    """Mean loss of each draw over its minibatches: idx [batches, draws, b] -> list of draws floats."""
    with torch.no_grad():
        return [sum(F.cross_entropy(twin[d](x[idx[k, d]]), y[idx[k, d]]).item() for k in range(idx.shape[0]))
                / idx.shape[0] for d in range(idx.shape[1])]


def reference_sharpness(model, x, y, sigma, loss, magnitude_aware, worst, seed):
    """Per draw: a deep copy, autograd ascent steps, projection; the same random numbers as ofexp's."""
    gen = torch.Generator().manual_seed(seed)
    theta = flat_params(model)
    draws, n = BUDGET.sharpness_draws, x.shape[0]
    u = (torch.rand((draws, theta.numel()), generator=gen) - 0.5) * sigma
    ascent = minibatch_indices(n, draws, BUDGET.ascent_steps, BUDGET.batch_size, gen)
    twins = []
    for d in range(draws):
        twin = copy.deepcopy(model).eval()
        set_flat(twin, theta + u[d])
        for step in range(BUDGET.ascent_steps):
            twin.zero_grad()
            F.cross_entropy(twin(x[ascent[step, d]]), y[ascent[step, d]]).backward()
            delta = flat_params(twin) - theta + ASCENT_LR * torch.cat([p.grad.reshape(-1) for p in twin.parameters()])
            if magnitude_aware:
                bound = sigma * (theta.abs() + EPSILON)
                delta = torch.maximum(torch.minimum(delta, bound), -bound)
            elif delta.norm() > sigma:
                delta = delta * sigma / delta.norm()
            set_flat(twin, theta + delta)
        twins.append(twin)
    losses = loop_losses(twins, x, y, minibatch_indices(n, draws, BUDGET.sharpness_batches, BUDGET.batch_size, gen))
    return abs(loss - (max(losses) if worst == "max" else min(losses)))


def reference_pac_bayes(model, x, y, sigma, loss, magnitude_aware, seed):
    gen = torch.Generator().manual_seed(seed)
    theta = flat_params(model)
    draws = BUDGET.pac_bayes_draws
    noise = torch.randn((draws, theta.numel()), generator=gen)
    std = (sigma**2 * theta.pow(2) + EPSILON**2).sqrt() if magnitude_aware else sigma
    twins = []
    for d in range(draws):
        twin = copy.deepcopy(model).eval()
        set_flat(twin, theta + noise[d] * std)
        twins.append(twin)
    losses = loop_losses(twins, x, y, minibatch_indices(x.shape[0], draws, BUDGET.pac_bayes_batches,
                                                         BUDGET.batch_size, gen))
    return abs(loss - sum(losses) / len(losses))


# chunk: draws through the network together (None: the device's choice, one at a time on the CPU)
@pytest.mark.parametrize("chunk", [None, 2, 3], ids=["auto", "chunks-of-2", "all-draws"])
@pytest.mark.parametrize("magnitude_aware,worst,sigma", [(False, "max", 0.5), (True, "min", 0.3)],
                         ids=["plain-max", "magnitude-min"])
def test_sharpness_draws_match_a_per_draw_loop(conv_net, magnitude_aware, worst, sigma, chunk):
    model, x, y, loss = conv_net
    got = sharpness_deviation(model, x, y, sigma, loss=loss, magnitude_aware=magnitude_aware, budget=BUDGET,
                              worst=worst, generator=torch.Generator().manual_seed(5), chunk=chunk)
    want = reference_sharpness(model, x, y, sigma, loss, magnitude_aware, worst, seed=5)
    assert want > 1e-3  # the perturbation moved the loss: the comparison is not 0 == 0
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)


@pytest.mark.parametrize("chunk", [None, 2, 3], ids=["auto", "chunks-of-2", "all-draws"])
@pytest.mark.parametrize("magnitude_aware,sigma", [(False, 0.05), (True, 0.5)], ids=["plain", "magnitude"])
def test_pac_bayes_draws_match_a_per_draw_loop(conv_net, magnitude_aware, sigma, chunk):
    model, x, y, loss = conv_net
    got = pac_bayes_deviation(model, x, y, sigma, loss=loss, magnitude_aware=magnitude_aware, budget=BUDGET,
                              generator=torch.Generator().manual_seed(7), chunk=chunk)
    want = reference_pac_bayes(model, x, y, sigma, loss, magnitude_aware, seed=7)
    assert want > 1e-3
    assert got == pytest.approx(want, rel=1e-4, abs=1e-6)
