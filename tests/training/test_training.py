"""ofexp.training: recipes, devices, the loop, best-weights copies and bit-identical resume."""

from __future__ import annotations


import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.errors import ConfigError, TrainingDivergedError
from ofexp.training import (
    RECIPES,
    evaluate,
    fit,
    lr_factor,
    make_recipe,
    resolve_device,
    seed_everything,
)

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits8() -> DataSplits:
    return load_dataset(DataConfig(name="digits", image_size=8, split_seed=0))


def tiny_mlp(in_features: int = 64, hidden: int = 32, dropout: float = 0.0, seed: int = 0) -> nn.Module:
    """A small Kaiming-initialised MLP (the default recipe's init), reproducible from `seed`."""
    seed_everything(seed)
    model = nn.Sequential(
        nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, 10)
    )
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
            nn.init.zeros_(m.bias)
    return model


def same_weights(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k].cpu(), b[k].cpu()) for k in a)


# ---------------------------------------------------------------- recipes


def test_report_recipe_is_design_section_3():
    r = RECIPES["report"]
    assert (r.lr, r.momentum, r.weight_decay, r.batch_size, r.epochs) == (0.05, 0.9, 0.0, 64, 30)
    assert (r.schedule, r.milestones, r.gamma) == ("multistep", (12, 20, 25, 28), 0.1)
    assert (r.init, r.warmup_epochs, r.grad_clip) == ("default", 0.0, 0.0)


def test_default_recipe_is_the_sturdy_one():
    r = make_recipe()
    assert (r.name, r.init, r.lr, r.momentum, r.weight_decay, r.warmup_epochs, r.grad_clip, r.batch_size) == (
        "default", "kaiming", 0.1, 0.9, 5e-4, 1.0, 1.0, 64,
    )  # fmt: skip
    params = r.to_params()
    assert params["recipe"] == "default" and all(isinstance(v, str) for v in params.values())


def test_make_recipe_overrides_and_ignores_none():
    r = make_recipe("report", epochs=3, lr=None, milestones=[1, 2])
    assert (r.epochs, r.lr, r.milestones, r.name) == (3, 0.05, (1, 2), "report")
    assert r.to_params()["milestones"] == "1,2"


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"epochs": 0}, "--epochs must be ≥ 1, got 0"),
        ({"batch_size": 0}, "--batch-size must be ≥ 1"),
        ({"lr": 0.0}, "--lr must be > 0"),
        ({"lr": float("nan")}, "--lr must be > 0"),
        ({"momentum": 1.0}, "--momentum must be in"),
        ({"weight_decay": -1.0}, "--weight-decay must be ≥ 0"),
        ({"init": "xavier"}, "--init must be one of default, kaiming"),
        ({"grad_clip": -1.0}, "--grad-clip"),
        ({"schedule": "step"}, "--schedule must be one of"),
        ({"milestones": (5, 3)}, "--milestones"),
        ({"gamma": 0.0}, "--gamma"),
        ({"epochs": 2.5}, "--epochs"),
        ({"nesterov": True}, "unknown recipe option"),
    ],
)
def test_make_recipe_validation(overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_recipe("default", **overrides)


def test_unknown_recipe_name():
    with pytest.raises(ConfigError, match="default, report"):
        make_recipe("fast")


def test_lr_factor_warmup_then_multistep_or_cosine():
    multi = make_recipe("report", epochs=4, warmup_epochs=1.0, milestones=(2, 3), gamma=0.5)
    assert [lr_factor(multi, i, 4) for i in range(4)] == [0.25, 0.5, 0.75, 1.0]  # linear warm-up
    assert [lr_factor(multi, i, 4) for i in (4, 7, 8, 12, 15)] == [1.0, 1.0, 0.5, 0.25, 0.25]
    cos = make_recipe("default", epochs=3, warmup_epochs=1.0)
    assert lr_factor(cos, 10, 10) == 1.0 and lr_factor(cos, 29, 10) < 0.01
    assert lr_factor(cos, 20, 10) == pytest.approx(0.5, abs=0.01)
    short = make_recipe("default", epochs=1, warmup_epochs=5.0)  # warm-up longer than the run
    assert lr_factor(short, 9, 10) == 1.0


# ---------------------------------------------------------------- devices and seeds


def test_resolve_device():
    assert resolve_device("cpu") == CPU
    assert resolve_device("auto").type in ("cpu", "cuda", "mps")
    with pytest.raises(ConfigError, match="cpu, cuda, mps, auto"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_resolve_unavailable_cuda_is_a_config_error():
    with pytest.raises(ConfigError, match="not available"):
        resolve_device("cuda")


def test_seed_everything_repeats_torch_draws():
    seed_everything(7)
    a = torch.rand(3)
    seed_everything(7)
    assert torch.equal(a, torch.rand(3))


# ---------------------------------------------------------------- evaluate


def test_evaluate_is_the_true_mean_and_restores_mode(digits8):
    model = tiny_mlp()
    x, y = digits8.val_x, digits8.val_y
    full = F.cross_entropy(model(x), y).item()
    for training in (True, False):
        model.train(training)
        out = evaluate(model, x, y, batch_size=32, device=CPU)  # 32 does not divide n
        assert out["loss"] == pytest.approx(full, rel=1e-5)
        assert model.training is training


# ---------------------------------------------------------------- fit


def test_default_recipe_trains_digits(digits8):
    splits = load_dataset(DataConfig(name="digits", image_size=16))
    model = tiny_mlp(in_features=256, hidden=128)
    result = fit(model, splits, make_recipe("default"), device=CPU, seed=0, progress=False)
    assert result.final_metrics["val_accuracy"] > 0.9
    assert [h["epoch"] for h in result.history] == list(range(1, 11))
    assert set(result.final_metrics) == {"train_loss", "train_accuracy", "val_loss", "val_accuracy", "lr"}


def test_fit_is_deterministic(digits8):
    recipe = make_recipe("default", epochs=2)
    runs = [tiny_mlp(dropout=0.2, seed=1) for _ in range(3)]
    fit(runs[0], digits8, recipe, device=CPU, seed=5, progress=False)
    fit(runs[1], digits8, recipe, device=CPU, seed=5, progress=False)
    fit(runs[2], digits8, recipe, device=CPU, seed=6, progress=False)
    assert same_weights(runs[0].state_dict(), runs[1].state_dict())
    assert not same_weights(runs[0].state_dict(), runs[2].state_dict())


def test_best_state_is_a_real_copy(digits8):
    # validation labels that contradict the training labels on the same images: val loss
    # rises as training succeeds, so the best epoch is early and must not be the final weights
    s = digits8
    wrong = (s.train_y[:200] + 1) % 10
    misled = DataSplits(s.train_x, s.train_y, s.train_x[:200], wrong, s.test_x, s.test_y, s.info)
    model = tiny_mlp()
    per_epoch = {}
    recipe = make_recipe("default", epochs=4, warmup_epochs=0.0)
    result = fit(model, misled, recipe, device=CPU, seed=0, progress=False,
                 on_epoch_end=lambda e, m, ckpt: per_epoch.__setitem__(e, ckpt["model"]))  # fmt: skip
    losses = [h["val_loss"] for h in result.history]
    assert result.best_epoch == 1 + losses.index(min(losses)) < recipe.epochs
    assert result.best_val_loss == min(losses)
    assert same_weights(result.best_state, per_epoch[result.best_epoch])
    assert not same_weights(result.best_state, model.state_dict())
    live = model.state_dict()
    assert all(result.best_state[k].data_ptr() != live[k].data_ptr() for k in live)


def test_divergence_names_the_epoch(digits8):
    recipe = make_recipe("report", epochs=3, lr=1e6)
    expected = r"diverged at epoch 1: loss is (nan|inf); lower --lr \(now 1000000.0\) or enable --grad-clip"
    with pytest.raises(TrainingDivergedError, match=expected):
        fit(tiny_mlp(), digits8, recipe, device=CPU, seed=0, progress=False)


def test_resume_is_bit_identical(digits8, tmp_path):
    recipe = make_recipe("default", epochs=4)
    path = tmp_path / "ckpt.pt"

    straight = tiny_mlp(dropout=0.3)  # dropout draws from torch's global RNG, which resume restores
    fit(straight, digits8, recipe, device=CPU, seed=3, progress=False)

    class Interrupted(Exception):
        pass

    def stop_after_two(epoch, metrics, checkpoint):
        if epoch == 2:
            torch.save(checkpoint, path)
            raise Interrupted

    with pytest.raises(Interrupted):
        interrupted = tiny_mlp(dropout=0.3)
        fit(interrupted, digits8, recipe, device=CPU, seed=3, progress=False, on_epoch_end=stop_after_two)
    torch.manual_seed(12345)  # scramble the global RNG: resume must restore it
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["epoch"] == 2 and set(checkpoint["rng"]) >= {"torch", "shuffle", "cuda"}
    resumed = tiny_mlp(dropout=0.3, seed=99)  # different init: every weight must come from the checkpoint
    result = fit(resumed, digits8, recipe, device=CPU, seed=3, progress=False, resume=checkpoint)
    assert same_weights(straight.state_dict(), resumed.state_dict())
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]


def test_resume_refuses_another_recipe(digits8):
    saved = {}
    fit(tiny_mlp(), digits8, make_recipe("default", epochs=1), device=CPU, seed=0, progress=False,
        on_epoch_end=lambda e, m, ckpt: saved.update(ckpt))  # fmt: skip
    with pytest.raises(ConfigError, match="lr 0.1→0.02"):
        fit(tiny_mlp(), digits8, make_recipe("default", epochs=2, lr=0.02), device=CPU, seed=0,
            progress=False, resume=saved)  # fmt: skip


def test_progress_bar_goes_to_stderr(digits8, capsys):
    fit(tiny_mlp(), digits8, make_recipe("default", epochs=1), device=CPU, seed=0, progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "val_loss" in err
