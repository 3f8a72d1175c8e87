import math
import statistics
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ofexp.data import DatasetInfo, DataSplits
from ofexp.errors import ConfigError
from ofexp.metrics import (
    MEASURES,
    MeasureContext,
    SearchBudget,
    flatness,
    pac_bayes_deviation,
    pac_bayes_sigma,
    resolve_measures,
    sharpness,
    sharpness_deviation,
    sharpness_sigma,
)
from ofexp.metrics import context as context_module
from ofexp.models import ModelSpec, build_model

NEW_MEASURES = (
    "lipschitz", "hessian_top_eigenvalue", "hessian_trace",
    "sharpness_flatness", "sharpness_init", "sharpness_orig",
    "sharpness_mag_flat", "sharpness_mag_init", "sharpness_mag_orig",
    "pac_bayes_flatness", "flatness_init", "flatness_orig",
    "pac_bayes_mag_flat", "flatness_mag_init", "flatness_mag_orig",
)


# ---------------------------------------------------------------- the 12 formulas, by hand in numpy

DELTA, EPS = 0.05, 1e-3


def hand_formulas(sigma, sigma_mag, theta, theta0, m):
    omega = theta.size
    s = np.log(2 * omega / DELTA)
    c = np.log(m / DELTA) + 10
    diff = theta - theta0

    def mag(w, extra, sg):
        top = EPS**2 + (sg**2 + extra) * np.sum(w**2) / omega
        return 0.5 * np.sum(np.log(top / (EPS**2 + sg**2 * w**2))) + c

    return {
        "sharpness_flatness": 1 / sigma**2,
        "sharpness_init": np.sum(diff**2) * s / sigma**2 + c,
        "sharpness_orig": np.sum(theta**2) * s / sigma**2 + c,
        "sharpness_mag_flat": 1 / sigma_mag**2,
        "sharpness_mag_init": mag(diff, 4 * s, sigma_mag),
        "sharpness_mag_orig": mag(theta, 4 * s, sigma_mag),
        "pac_bayes_flatness": 1 / sigma**2,
        "flatness_init": np.sum(diff**2) / (2 * sigma**2) + c,
        "flatness_orig": np.sum(theta**2) / (2 * sigma**2) + c,
        "pac_bayes_mag_flat": 1 / sigma_mag**2,
        "flatness_mag_init": mag(diff, 1.0, sigma_mag),
        "flatness_mag_orig": mag(theta, 1.0, sigma_mag),
    }


def test_each_formula_matches_a_hand_computation():
    rng = np.random.default_rng(0)
    theta = rng.normal(size=300) * 0.2
    theta0 = theta + rng.normal(size=300) * 0.05
    sigma, sigma_mag, m = 0.37, 1.3, 4500
    t, t0 = torch.tensor(theta, dtype=torch.float32), torch.tensor(theta0, dtype=torch.float32)
    theta, theta0 = t.double().numpy(), t0.double().numpy()  # the float32 values the functions see
    expected = hand_formulas(sigma, sigma_mag, theta, theta0, m)
    got = {
        "sharpness_flatness": sharpness.sharpness_flatness(sigma),
        "sharpness_init": sharpness.sharpness_init(sigma, t, t0, m),
        "sharpness_orig": sharpness.sharpness_orig(sigma, t, m),
        "sharpness_mag_flat": sharpness.sharpness_mag_flat(sigma_mag),
        "sharpness_mag_init": sharpness.sharpness_mag_init(sigma_mag, t, t0, m),
        "sharpness_mag_orig": sharpness.sharpness_mag_orig(sigma_mag, t, m),
        "pac_bayes_flatness": flatness.pac_bayes_flatness(sigma),
        "flatness_init": flatness.flatness_init(sigma, t, t0, m),
        "flatness_orig": flatness.flatness_orig(sigma, t, m),
        "pac_bayes_mag_flat": flatness.pac_bayes_mag_flat(sigma_mag),
        "flatness_mag_init": flatness.flatness_mag_init(sigma_mag, t, t0, m),
        "flatness_mag_orig": flatness.flatness_mag_orig(sigma_mag, t, m),
    }
    assert set(got) == set(expected)
    for name, value in got.items():
        assert isinstance(value, float)
        assert value == pytest.approx(expected[name], rel=1e-12), name


def test_formulas_at_sigma_zero_are_infinite_not_errors():
    theta = torch.ones(10)
    assert sharpness.sharpness_flatness(0.0) == math.inf
    assert sharpness.sharpness_init(0.0, theta, torch.zeros(10), 100) == math.inf
    assert flatness.flatness_orig(0.0, theta, 100) == math.inf
    assert math.isfinite(sharpness.sharpness_mag_orig(0.0, theta, 100))


# ---------------------------------------------------------------- the searches

@pytest.fixture(scope="module")
def trained():
    """Softmax regression on 100-d Gaussian inputs with noisy labels, trained to near its minimum.

    Many parameters that matter about equally make the perturbed loss concentrate, so the
    Monte Carlo deviations are smooth enough in σ to check the search's answer.
    """
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(512, 100, generator=g)
    teacher = torch.randn(100, 10, generator=g) * 0.3
    y = torch.distributions.Categorical(logits=x @ teacher).sample()
    model = nn.Linear(100, 10)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    loss = F.cross_entropy(model(x), y).item()
    return model, x, y, loss


# full-batch loss estimates (batch_size ≥ n): the remaining noise is the perturbations'
BUDGET = SearchBudget(sharpness_depth=20, sharpness_draws=8, ascent_steps=5, sharpness_batches=1,
                      pac_bayes_depth=30, pac_bayes_draws=32, pac_bayes_batches=1, batch_size=512)
CASES = [
    (sharpness_sigma, sharpness_deviation, False, None, sharpness.SHARPNESS_TOL),
    (sharpness_sigma, sharpness_deviation, True, None, sharpness.SHARPNESS_TOL),
    (pac_bayes_sigma, pac_bayes_deviation, False, None, flatness.PAC_BAYES_TOL),
    # σ′ ≥ 0.5 is too much noise for this model: see test_search_warns_when_bounds_cannot_reach
    (pac_bayes_sigma, pac_bayes_deviation, True, (0.0, 0.5), flatness.PAC_BAYES_TOL),
]


@pytest.mark.parametrize("search,deviation,magnitude_aware,bounds,tol", CASES,
                         ids=["sharpness", "sharpness_mag", "pac_bayes", "pac_bayes_mag"])
def test_search_finds_sigma_at_the_target_deviation(trained, search, deviation, magnitude_aware, bounds, tol):
    model, x, y, loss = trained
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a converged search must not warn
        result = search(model, x, y, loss=loss, magnitude_aware=magnitude_aware, budget=BUDGET, bounds=bounds,
                        generator=torch.Generator().manual_seed(1))
    assert result.converged and result.stop_reason == "tolerance"
    assert abs(result.deviation - 0.1) < tol
    assert result.steps == len(result.history) and result.history[-1] == (result.sigma, result.deviation)
    # re-measure d(σ) with fresh draws: its mean is within the tolerance, give or take 3 × the draws' noise
    again = [deviation(model, x, y, result.sigma, loss=loss, magnitude_aware=magnitude_aware, budget=BUDGET,
                       generator=torch.Generator().manual_seed(seed)) for seed in range(2, 7)]
    assert abs(statistics.mean(again) - 0.1) < tol + 3 * statistics.stdev(again)
    assert statistics.stdev(again) < 0.01  # and that noise is small: the check has teeth


def test_search_warns_when_bounds_cannot_reach(trained):
    model, x, y, loss = trained
    with pytest.warns(RuntimeWarning, match="raise the upper bound"):
        result = sharpness_sigma(model, x, y, loss=loss, budget=BUDGET, bounds=(0.0, 0.05))
    assert not result.converged and result.deviation < 0.1 and result.sigma > 0.04
    with pytest.warns(RuntimeWarning, match="lower the lower bound"):
        result = pac_bayes_sigma(model, x, y, loss=loss, magnitude_aware=True, budget=BUDGET)  # [0.5, 4]
    assert not result.converged and result.deviation > 0.1 and result.sigma < 0.51
    with pytest.warns(RuntimeWarning, match="raise the search depth"):
        result = pac_bayes_sigma(model, x, y, loss=loss, budget=SearchBudget(pac_bayes_depth=1, pac_bayes_draws=2))
    assert not result.converged and result.stop_reason == "depth" and result.steps == 1


def test_deviation_at_sigma_zero_is_zero_and_worst_case_option(trained):
    model, x, y, loss = trained
    # full batches and σ = 0: the projection / clipping / noise leave θ exactly in place
    for magnitude_aware in (False, True):
        assert sharpness_deviation(model, x, y, 0.0, loss=loss, magnitude_aware=magnitude_aware,
                                   budget=BUDGET) == pytest.approx(0, abs=1e-5)
        assert pac_bayes_deviation(model, x, y, 0.0, loss=loss, budget=BUDGET) == pytest.approx(0, abs=1e-5)
    # same draws, max vs min over them: the worst case deviates at least as much
    kw = dict(loss=loss, budget=BUDGET)
    d_max = sharpness_deviation(model, x, y, 2.0, worst="max", generator=torch.Generator().manual_seed(3), **kw)
    d_min = sharpness_deviation(model, x, y, 2.0, worst="min", generator=torch.Generator().manual_seed(3), **kw)
    assert d_max > d_min > 0
    with pytest.raises(ConfigError, match="unknown worst 'mean'; use 'max'"):
        sharpness_deviation(model, x, y, 1.0, worst="mean", **kw)
    assert model.training and all(p.grad is None for p in model.parameters())


def test_budget_defaults_are_the_reports_and_quick_is_small():
    b = SearchBudget()
    assert (b.sharpness_depth, b.sharpness_draws, b.ascent_steps, b.sharpness_batches) == (20, 15, 20, 10)
    assert (b.pac_bayes_depth, b.pac_bayes_draws, b.pac_bayes_batches, b.batch_size) == (30, 20, 20, 64)
    q = SearchBudget.quick()
    assert q.sharpness_draws * q.ascent_steps < b.sharpness_draws * b.ascent_steps
    with pytest.raises(ConfigError, match="pac_bayes_draws"):
        SearchBudget(pac_bayes_draws=0)


# ---------------------------------------------------------------- registry and context

def tiny_context(**kw) -> MeasureContext:
    g = torch.Generator().manual_seed(0)
    spec = ModelSpec("mlp", 3, 1, 4, width=0.0625, batchnorm=True)
    torch.manual_seed(0)
    model = build_model(spec)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=g))

    def split(n):
        return torch.randn(n, 1, 4, 4, generator=g), torch.randint(3, (n,), generator=g)

    (tx, ty), (vx, vy), (sx, sy) = split(96), split(16), split(120)
    info = DatasetInfo("synthetic", 3, 1, 4, (0.0,), (1.0,), 96, 16, 120, "test")
    kw.setdefault("budget", SearchBudget.quick())
    return MeasureContext(model, DataSplits(tx, ty, vx, vy, sx, sy, info), reference_weights=lambda: init, **kw)


def test_all_includes_every_new_measure_with_its_space():
    names = resolve_measures("all")
    assert set(NEW_MEASURES) <= set(names) and len(names) >= 17
    assert MEASURES["lipschitz"].space == "input"
    assert all(MEASURES[n].space == "parameter" for n in NEW_MEASURES[1:])
    assert resolve_measures("input") == ["lipschitz"]


def test_every_new_measure_is_a_finite_float_and_searches_run_once(monkeypatch):
    calls = []
    real = MeasureContext._run_search
    monkeypatch.setattr(MeasureContext, "_run_search", lambda self, name: (calls.append(name), real(self, name))[1])
    ctx = tiny_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the quick budget may not converge
        values = {name: MEASURES[name].compute(ctx) for name in NEW_MEASURES}
    for name, value in values.items():
        assert isinstance(value, float) and math.isfinite(value), (name, value)
    assert sorted(calls) == ["pac_bayes", "pac_bayes_mag", "sharpness", "sharpness_mag"]
    assert ctx.hessian_batch[0].shape == (100, 1, 4, 4)  # 100 test images
    assert ctx.theta0.shape == ctx.theta.shape and not torch.equal(ctx.theta0, ctx.theta)
    # seeded per purpose: a fresh context, asked in another order, gives the same numbers
    again = tiny_context()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        for name in reversed(NEW_MEASURES):
            assert MEASURES[name].compute(again) == values[name], name


def test_measures_needing_theta0_say_so_without_it():
    ctx = tiny_context()
    ctx.reference_weights = None
    with pytest.raises(ConfigError, match="reference weights"):
        _ = ctx.theta0


@pytest.mark.parametrize("search", context_module.SEARCHES)
def test_context_search_equals_the_public_search_function(search):
    """The context's hooked search makes exactly the calls of sharpness_sigma / pac_bayes_sigma."""
    ctx = tiny_context(sharpness_worst="min", seed=3)
    steps = []
    ctx.on_search_step = lambda name, step, sigma, d: steps.append((name, step, sigma, d))
    x, y = ctx.splits.train_x, ctx.splits.train_y
    kwargs = dict(magnitude_aware=search.endswith("_mag"), loss=ctx.train_loss, budget=ctx.budget,
                  generator=ctx.generator(search))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        got = ctx.search(search)
        if search.startswith("sharpness"):
            want = sharpness_sigma(ctx.model, x, y, worst="min", **kwargs)
        else:
            want = pac_bayes_sigma(ctx.model, x, y, **kwargs)
    assert got == want
    assert [(s, d) for _, _, s, d in steps] == list(want.history)
    assert [n for n, *_ in steps] == [search] * want.steps and [k for _, k, *_ in steps] == list(range(1, want.steps + 1))


def test_a_failing_search_runs_once_and_fails_each_of_its_measures(monkeypatch):
    calls = []

    def broken(self, name):
        calls.append(name)
        raise FloatingPointError("loss is nan")

    monkeypatch.setattr(MeasureContext, "_run_search", broken)
    ctx = tiny_context()
    for name in ("sharpness_flatness", "sharpness_init", "sharpness_orig"):
        with pytest.raises(FloatingPointError, match="nan"):
            MEASURES[name].compute(ctx)
    assert calls == ["sharpness"] and ctx.completed_searches() == {}


def test_non_convergence_is_recorded_per_search():
    ctx = tiny_context(budget=SearchBudget(sharpness_depth=1, sharpness_draws=1, ascent_steps=0, sharpness_batches=1))
    with pytest.warns(RuntimeWarning, match="did not converge"):
        result = ctx.search("sharpness")
    assert not result.converged and result.steps == 1
    assert ctx.completed_searches() == {"sharpness": result}
    assert len(ctx.search_warnings["sharpness"]) == 1 and "did not converge" in ctx.search_warnings["sharpness"][0]


def test_presets_and_worst_case_are_checked():
    assert context_module.search_budget("report") == SearchBudget()
    assert context_module.search_budget("quick") == SearchBudget.quick()
    with pytest.raises(ConfigError, match="unknown preset 'slow'; use one of: report, quick"):
        context_module.search_budget("slow")
    with pytest.raises(ConfigError, match="unknown sharpness_worst 'mean'; use 'max'"):
        tiny_context(sharpness_worst="mean")
