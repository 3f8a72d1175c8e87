"""Opt-in speed flags: channels_last, torch.compile and TF32 train the same network, keep plain checkpoints."""
from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from ofexp.data import DataConfig, load_dataset
from ofexp.models import ModelSpec, build_model, init_weights
from ofexp.training import SpeedOptions, fit, make_recipe, restore_checkpoint
from ofexp.training.loop import build_optimizer, build_scheduler


@pytest.fixture(scope="module")
def digits_small():
    """256 digits training images at 32x32 (VGG11's smallest input): enough to see it learn, fast."""
    splits = load_dataset(DataConfig(name="digits"))
    return replace(splits, train_x=splits.train_x[:256], train_y=splits.train_y[:256])


def tiny_vgg(splits):
    spec = ModelSpec("vgg11", num_classes=10, in_channels=1, input_size=splits.info.input_size, width=0.125)
    torch.manual_seed(0)
    model = build_model(spec)
    init_weights(model, "kaiming")
    return model


def test_defaults_are_off_and_logged_as_params():
    speed = SpeedOptions()
    assert (speed.channels_last, speed.compile, speed.tf32) == (False, False, False)
    assert SpeedOptions(channels_last=True).to_params() == {"channels_last": "true", "compile": "false",
                                                            "tf32": "false"}


def test_options_round_trip_through_run_params():
    speed = SpeedOptions(channels_last=True, tf32=True)
    assert SpeedOptions.from_params(speed.to_params()) == speed
    assert SpeedOptions.from_params({"compile": True}) == SpeedOptions(compile=True)  # CLI flags are bools
    # a run logged before --tf32 existed has no tf32 param, and was trained without it
    assert SpeedOptions.from_params({"channels_last": "False", "compile": "False"}) == SpeedOptions()


@pytest.mark.parametrize("tf32", [False, True])
def test_float32_kernels_sets_cuda_precision_and_determinism_then_restores(tf32):
    """Default GPU training must be IEEE float32 like the report's, and deterministic for --resume."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    before = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark)
    with SpeedOptions(tf32=tf32).numerics():
        assert (cudnn.allow_tf32, matmul.allow_tf32) == (tf32, tf32)
        assert cudnn.deterministic and not cudnn.benchmark
    assert (cudnn.allow_tf32, matmul.allow_tf32, cudnn.deterministic, cudnn.benchmark) == before


def test_channels_last_changes_layout_not_shapes():
    x = torch.randn(5, 3, 8, 8)
    y = SpeedOptions(channels_last=True).prepare_inputs(x)
    assert y.shape == x.shape and torch.equal(x, y)
    assert y.is_contiguous(memory_format=torch.channels_last)
    flat = torch.randn(5, 7)
    assert SpeedOptions(channels_last=True).prepare_inputs(flat) is flat  # only 4-D images are NHWC
    assert SpeedOptions().prepare_inputs(x) is x


def test_channels_last_trains_like_the_default(digits_small):
    """Same start, same data order: the two layouts agree up to float summation order."""
    recipe = make_recipe(epochs=2)
    plain, fast = tiny_vgg(digits_small), tiny_vgg(digits_small)
    a = fit(plain, digits_small, recipe, device="cpu", seed=1, progress=False)
    checkpoints = []
    b = fit(fast, digits_small, recipe, device="cpu", seed=1, progress=False,
            speed=SpeedOptions(channels_last=True), on_epoch_end=lambda e, m, c: checkpoints.append(c))
    conv = next(p for p in fast.parameters() if p.dim() == 4)
    assert conv.is_contiguous(memory_format=torch.channels_last)
    assert plain.state_dict().keys() == fast.state_dict().keys()
    for k, v in plain.state_dict().items():
        assert torch.allclose(v, fast.state_dict()[k], atol=1e-4, rtol=1e-3), k
    assert b.final_metrics["val_loss"] == pytest.approx(a.final_metrics["val_loss"], rel=1e-3)
    # its checkpoint restores into an ordinary (NCHW) network
    fresh = tiny_vgg(digits_small)
    optimizer = build_optimizer(fresh, recipe)
    scheduler = build_scheduler(optimizer, recipe, 1)
    epoch, _, _ = restore_checkpoint(checkpoints[-1], fresh, optimizer, scheduler, torch.Generator())
    assert epoch == 2
    assert all(torch.equal(v, fast.state_dict()[k]) for k, v in fresh.state_dict().items())


def test_compile_trains_through_the_wrapper_and_keeps_plain_keys(digits_small, monkeypatch):
    """The wiring of --compile: state dicts keep the module's own keys, training still learns.

    Inductor's compile takes a minute on 2 busy cores, so this checks the wrapper with
    dynamo's "eager" backend (real graph capture, no code generation).
    """
    real_compile = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model: real_compile(model, backend="eager"))
    recipe = make_recipe(epochs=2)
    plain, compiled = tiny_vgg(digits_small), tiny_vgg(digits_small)
    a = fit(plain, digits_small, recipe, device="cpu", seed=1, progress=False)
    b = fit(compiled, digits_small, recipe, device="cpu", seed=1, progress=False, speed=SpeedOptions(compile=True))
    assert compiled.state_dict().keys() == plain.state_dict().keys()  # no "_orig_mod." prefix
    assert not any(k.startswith("_orig_mod") for k in b.best_state)
    assert b.final_metrics["val_loss"] == pytest.approx(a.final_metrics["val_loss"], rel=1e-3)
    torch._dynamo.reset()
