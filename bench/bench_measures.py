"""Speed of the report's measures (issue 4 and 7): `python -m bench --only measures [--quick]`.

Full mode: full-width VGG11 (no bias, no batch-norm) on a batch of 100 digits
images (32×32), CPU. Quick mode uses a narrow VGG11 and small search budgets.

- hessian: `hessian_top_eigenvalue` (Lanczos) + `hessian_trace` (exact from per-sample
  gradients, as `ofexp evaluate` computes it for these ReLU nets) vs pyhessian 0.1;
  both sides' Hessian-vector products are counted (pyhessian's by patching its `hessian_vector_product`)
  (`.venv/bin/pip install pyhessian==0.1 --no-deps`; benchmark only, never a
  dependency). Without it, a faithful re-implementation of its algorithm is the
  baseline: power iteration and Hutchinson on double-backward HVPs over lists of
  tensors, 100 iterations / samples at most, relative tolerance 1e-3.
- lipschitz vs a plain per-iteration loop as in the report's code: f(0) re-run
  every iteration, `loss.backward()` into the weights as well as the input; the
  loop at torch's default thread count (as the report ran) and, for the
  algorithmic part alone, on one thread like ofexp.
- sharpness / PAC-Bayes: one step of each σ search (one deviation d(σ), with the
  report's draws, ascent steps and minibatches) vs a per-draw loop over a deep
  copy of the model, updating each parameter tensor; the full searches' time is
  extrapolated from it (depth × step time) in the notes.
- peak RSS (full mode only, CPU) of `ofexp evaluate --measures all --preset quick` on a
  freshly trained full-width VGG11, in a subprocess,
  against a SQLite store in a temporary folder.

With `python -m bench --device cuda` the networks, data and both sides of every row run
on the GPU, in IEEE float32 as `ofexp evaluate` runs its measures; the σ searches then
send all draws through the network in one vmap (`draw_chunks`' GPU choice).
"""
from __future__ import annotations

import copy
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bench.common import Result, bench_device, one_thread, time_pair
from ofexp.data import DataConfig, load_dataset
from ofexp.metrics import (SearchBudget, hessian_lanczos, hessian_top_eigenvalue, hessian_trace_with_error,
                           lipschitz, pac_bayes_deviation, sharpness_deviation)
from ofexp.metrics.sharpness import ASCENT_LR, EPSILON, training_loss
from ofexp.models import ModelSpec, build_model, init_weights
from ofexp.training import fit, make_recipe, seed_everything
from ofexp.training.speed import float32_kernels

ROOT = Path(__file__).resolve().parents[1]


def trained_vgg(width: float, splits, epochs: int = 2, seed: int = 0, device: str = "cpu") -> nn.Module:
    """VGG11 (no bias/BN) at `width`, trained `epochs` epochs on digits with the default recipe.

    A trained network, the kind `ofexp evaluate` measures: its Hessian spectrum has a
    small gap at the top, which is what makes power iteration and Hutchinson slow (a
    net after a few SGD steps let pyhessian stop after ~10 products by chance).
    """
    recipe = make_recipe("default", epochs=epochs)
    seed_everything(seed)
    model = build_model(ModelSpec("vgg11", 10, 1, 32, width=width))
    init_weights(model, recipe.init)
    fit(model, splits, recipe, device=torch.device(device), seed=seed, progress=False)
    model.zero_grad(set_to_none=True)
    return model.eval()


# ---------------------------------------------------------------- hessian

def _pyhessian():
    try:
        from pyhessian import hessian
    except Exception:  # noqa: BLE001 -- missing or broken under this torch: use the faithful baseline
        return None
    return hessian


def _baseline_hessian(model: nn.Module, x, y) -> tuple[float, list[float]]:
    """pyhessian 0.1's algorithm, written out: (top eigenvalue, Hutchinson samples)."""
    params = [p for p in model.parameters() if p.requires_grad]
    loss = F.cross_entropy(model(x), y)
    grads = torch.autograd.grad(loss, params, create_graph=True)

    def hvp(v):
        return torch.autograd.grad(grads, params, grad_outputs=v, retain_graph=True)

    def dot(a, b):
        return sum(torch.sum(i * j) for i, j in zip(a, b))

    v = [torch.randn_like(p) for p in params]
    eig = None
    for _ in range(100):
        norm = float(dot(v, v)) ** 0.5
        v = [t / (norm + 1e-6) for t in v]
        hv = hvp(v)
        new = float(dot(hv, v))
        v = [t.detach() for t in hv]
        if eig is not None and abs(eig - new) / (abs(eig) + 1e-6) < 1e-3:
            break
        eig = new
    samples, trace = [], 0.0
    for _ in range(100):
        z = [torch.randint_like(p, high=2) * 2 - 1 for p in params]
        samples.append(float(dot(hvp(z), z)))
        if abs(np.mean(samples) - trace) / (trace + 1e-6) < 1e-3:
            break
        trace = float(np.mean(samples))
    return eig, samples


class _CountedPyhessian:
    """pyhessian's `hessian` class with its Hessian-vector products counted (module function patched)."""

    def __init__(self, hessian_cls):
        self.cls, self.module = hessian_cls, sys.modules[hessian_cls.__module__]
        self.products = 0

    def __call__(self, model, x, y, cuda: bool = False):
        original = self.module.hessian_vector_product

        def counted(*args, **kwargs):
            self.products += 1
            return original(*args, **kwargs)

        self.products = 0
        self.module.hessian_vector_product = counted
        try:
            comp = self.cls(model, nn.CrossEntropyLoss(), data=(x, y), cuda=cuda)
            top, _ = comp.eigenvalues(maxIter=100, tol=1e-3)
            return top[0], comp.trace(maxIter=100, tol=1e-3)
        finally:
            self.module.hessian_vector_product = original


def bench_hessian(model: nn.Module, x, y, repeats: int) -> Result:
    on_gpu = x.device.type == "cuda"
    pyh = _pyhessian()
    counted = _CountedPyhessian(pyh) if pyh is not None else None
    ours_products = []

    def ours():  # as `ofexp evaluate` does: Lanczos for the eigenvalue, the exact trace (method="auto")
        gen = torch.Generator().manual_seed(0)
        run = hessian_lanczos(model, x, y, generator=gen)
        top = hessian_top_eigenvalue(model, x, y, lanczos=run)
        trace = hessian_trace_with_error(model, x, y, lanczos=run, generator=gen)
        ours_products.append(run.op.products)
        return top, trace

    def baseline():
        twin = copy.deepcopy(model)
        return _baseline_hessian(twin, x, y) if counted is None else counted(twin, x, y, cuda=on_gpu)

    ours_s, base_s, (top, trace), (b_top, b_samples) = time_pair(ours, baseline, repeats, warmup=0)
    b_trace = float(np.mean(b_samples))
    b_err = float(np.std(b_samples, ddof=1) / math.sqrt(len(b_samples))) if len(b_samples) > 1 else math.nan
    top_rel = abs(top - b_top) / abs(b_top)
    # two independent estimates: their difference has the two standard errors combined
    joint_err = math.sqrt(b_err**2 + (trace.stderr if math.isfinite(trace.stderr) else 0.0) ** 2)
    agree = top_rel < 0.01 and abs(trace.trace - b_trace) <= 2 * joint_err
    r = Result("hessian top eigenvalue + trace", f"lanczos + {trace.method} trace (ofexp)",
               "pyhessian 0.1" if pyh is not None else "pyhessian's algorithm (not installed: "
               "`.venv/bin/pip install pyhessian==0.1 --no-deps`)",
               ours_s, base_s, target="ratio >= 10; top eig within 1%, trace within 2 joint std errors")
    r.passed = r.ratio is not None and r.ratio >= 10 and agree
    b_products = counted.products if counted is not None else None
    r.notes = {"top_eig": top, "baseline_top_eig": b_top, "top_eig_rel_diff": top_rel,
               "trace": trace.trace, "trace_stderr": trace.stderr, "trace_samples": trace.samples,
               "trace_deflated": trace.deflated, "trace_method": trace.method,
               "baseline_trace": b_trace, "baseline_trace_stderr": b_err, "baseline_trace_samples": len(b_samples),
               "values_agree": agree, "hvps": ours_products[-1], "baseline_hvps": b_products,
               "s_per_hvp": r.ours_median / ours_products[-1],
               "baseline_s_per_hvp": None if not b_products else r.baseline_median / b_products}
    return r


# ---------------------------------------------------------------- lipschitz

def _baseline_lipschitz(model: nn.Module, shape, max_iter: int = 500, tol: float = 1e-8) -> float:
    """The report's loop: each iteration re-runs f(0) and back-propagates into the weights too."""
    device = next(model.parameters()).device
    v = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(device)
    v = v / v.norm()
    for _ in range(max_iter):
        v = v.detach().requires_grad_(True)
        g = model(v) - model(torch.zeros(shape, device=device))
        model.zero_grad()
        (g.norm() ** 2).backward()
        v_prev, v = v.detach(), (v.grad / v.grad.norm()).detach()
        if (v - v_prev).norm() < tol:
            break
    with torch.no_grad():
        value = float((model(v) - model(torch.zeros(shape, device=device))).norm())
    model.zero_grad(set_to_none=True)
    return value


def _one_thread(fn):
    def run():
        with one_thread():
            return fn()
    return run


def bench_lipschitz(model: nn.Module, shape, repeats: int, max_iter: int, warmup: int) -> list[Result]:
    """Two rows: vs the report's loop at torch's default threads (as it ran), and both on one thread."""
    out = []
    cases = [("default threads", lambda: _baseline_lipschitz(model, shape, max_iter)),
             ("1 thread", _one_thread(lambda: _baseline_lipschitz(model, shape, max_iter)))]
    if next(model.parameters()).device.type == "cuda":  # CPU threads barely matter there
        cases = [("the GPU", cases[0][1])]
    for label, base_fn in cases:
        ours_s, base_s, ours, base = time_pair(lambda: lipschitz(model, shape, max_iter=max_iter),
                                               base_fn, repeats, warmup)
        rel = abs(ours - base) / abs(base)
        r = Result(f"lipschitz ({max_iter} iterations max), baseline on {label}",
                   "ofexp lipschitz (1 thread, input-only grad, f(0) once)",
                   f"per-iteration loop (report), {label}", ours_s, base_s, target="ratio >= 5, value within 1e-3 rel")
        r.passed = r.ratio is not None and r.ratio >= 5 and rel < 1e-3
        r.notes = {"value": ours, "baseline_value": base, "rel_diff": rel,
                   "baseline_threads": torch.get_num_threads() if label == "default threads" else 1}
        out.append(r)
    return out


# ---------------------------------------------------------------- σ-search steps

def _project(params, theta, sigma: float, magnitude_aware: bool) -> None:
    if magnitude_aware:
        for p, t in zip(params, theta):
            bound = sigma * (t.abs() + EPSILON)
            p.copy_(t + torch.maximum(torch.minimum(p - t, bound), -bound))
        return
    norm = math.sqrt(sum(float((p - t).pow(2).sum()) for p, t in zip(params, theta)))
    if norm > sigma:
        for p, t in zip(params, theta):
            p.copy_(t + (p - t) * (sigma / norm))


def _loop_losses(twin, x, y, batches: int, size: int, gen) -> float:
    with torch.no_grad():
        return float(np.mean([F.cross_entropy(twin(x[i]), y[i]).item()
                              for i in (torch.randint(x.shape[0], (size,), generator=gen) for _ in range(batches))]))


def _loop_sharpness(model, x, y, sigma, loss, budget: SearchBudget, magnitude_aware=False) -> float:
    """Straightforward per-draw loop: a deep copy per draw, autograd steps, per-tensor updates."""
    gen = torch.Generator().manual_seed(1)
    theta = [p.detach().clone() for p in model.parameters()]
    worst = -math.inf
    for _ in range(budget.sharpness_draws):
        twin = copy.deepcopy(model)
        params = list(twin.parameters())
        with torch.no_grad():
            for p in params:
                p.add_(((torch.rand(p.shape, generator=gen) - 0.5) * sigma).to(p.device))
        for _ in range(budget.ascent_steps):
            idx = torch.randint(x.shape[0], (budget.batch_size,), generator=gen)
            twin.zero_grad()
            F.cross_entropy(twin(x[idx]), y[idx]).backward()
            with torch.no_grad():
                for p in params:
                    p.add_(ASCENT_LR * p.grad)
                _project(params, theta, sigma, magnitude_aware)
        worst = max(worst, _loop_losses(twin, x, y, budget.sharpness_batches, budget.batch_size, gen))
    return abs(loss - worst)


def _loop_pac_bayes(model, x, y, sigma, loss, budget: SearchBudget) -> float:
    gen = torch.Generator().manual_seed(1)
    losses = []
    for _ in range(budget.pac_bayes_draws):
        twin = copy.deepcopy(model)
        with torch.no_grad():
            for p in twin.parameters():
                p.add_((torch.randn(p.shape, generator=gen) * sigma).to(p.device))
        losses.append(_loop_losses(twin, x, y, budget.pac_bayes_batches, budget.batch_size, gen))
    return abs(loss - float(np.mean(losses)))


def bench_search_steps(model, splits, budget: SearchBudget, repeats: int, warmup: int) -> list[Result]:
    device = next(model.parameters()).device
    x, y = splits.train_x.to(device), splits.train_y.to(device)
    loss = training_loss(model, x, y)
    out = []
    for name, sigma, ours, base, depth in (
        ("sharpness", 0.05,
         lambda s: sharpness_deviation(model, x, y, s, loss=loss, budget=budget,
                                       generator=torch.Generator().manual_seed(1)),
         lambda s: _loop_sharpness(model, x, y, s, loss, budget), budget.sharpness_depth),
        ("pac_bayes", 0.01,
         lambda s: pac_bayes_deviation(model, x, y, s, loss=loss, budget=budget,
                                       generator=torch.Generator().manual_seed(1)),
         lambda s: _loop_pac_bayes(model, x, y, s, loss, budget), budget.pac_bayes_depth),
    ):
        ours_s, base_s, d, d_base = time_pair(lambda: ours(sigma), lambda: base(sigma), repeats, warmup)
        r = Result(f"{name} search step (σ={sigma})", "vmap over draws (ofexp)", "per-draw loop",
                   ours_s, base_s, target="ratio >= 3")
        r.passed = r.ratio is not None and r.ratio >= 3
        step = r.ours_median
        # the plain and magnitude-aware searches cost the same per step; at most `depth` steps each
        r.notes = {"deviation": d, "baseline_deviation": d_base, "budget": vars(budget),
                   "extrapolated_two_searches_s": 2 * depth * step,
                   "extrapolated_two_searches_baseline_s": 2 * depth * r.baseline_median}
        out.append(r)
    return out


# ---------------------------------------------------------------- peak memory of ofexp evaluate

def _ofexp(args: list[str], env: dict) -> tuple[str, int]:
    """Run `python -m ofexp ARGS`; (last stdout line, peak RSS in bytes of that process alone)."""
    proc = subprocess.Popen([sys.executable, "-m", "ofexp", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env, cwd=env["OFEXP_BENCH_DIR"], text=True)
    stdout = proc.stdout.read()
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"ofexp {' '.join(args)} exited {proc.returncode}")
    return stdout.strip().splitlines()[-1], usage.ru_maxrss * 1024  # Linux reports KiB


def bench_evaluate_rss(width: float) -> Result:
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "OFEXP_BENCH_DIR": tmp,
               "PYTHONPATH": str(ROOT)}
        run_id, _ = _ofexp(["train", "--model", "vgg11", "--width", str(width), "--epochs", "1",
                            "--no-log-model", "--device", "cpu"], env)
        start = time.perf_counter()
        _, rss = _ofexp(["evaluate", "--model-run", run_id, "--measures", "all", "--preset", "quick",
                         "--device", "cpu"], env)
        seconds = time.perf_counter() - start
    r = Result(f"ofexp evaluate --measures all --preset quick, vgg11 width {width}", "peak RSS", "",
               [seconds], target="peak RSS <= 2 GiB")
    r.passed = rss <= 2 * 2**30
    r.notes = {"peak_rss_gib": rss / 2**30, "wall_s": seconds}
    return r


def run(quick: bool, repeats: int) -> list[Result]:
    """Full: full-width VGG11 (searches: width 0.25, the report's budget). Quick: width 0.125, small budgets, no RSS."""
    device = bench_device()
    with float32_kernels():  # IEEE float32 on a GPU, as `ofexp evaluate` measures
        return _run(quick, repeats, device)


def _run(quick: bool, repeats: int, device: str) -> list[Result]:
    splits = load_dataset(DataConfig())
    width = 0.125 if quick else 1.0
    model = trained_vgg(width, splits, device=device)
    x, y = splits.test_x[:100].to(device), splits.test_y[:100].to(device)
    heavy = repeats if quick or device == "cuda" else 1  # one full-width pyhessian run takes minutes on a CPU
    warm = 1 if quick or device == "cuda" else 0  # an untimed first call (lazy kernels, allocator) where cheap
    results = [bench_hessian(model, x, y, heavy),
               *bench_lipschitz(model, (1, 1, 32, 32), heavy, max_iter=50 if quick else 500, warmup=warm)]
    narrow = model if quick else trained_vgg(0.25, splits, device=device)
    budget = (SearchBudget(sharpness_draws=4, ascent_steps=3, sharpness_batches=2, pac_bayes_draws=4,
                           pac_bayes_batches=2) if quick else SearchBudget())
    results += bench_search_steps(narrow, splits, budget, heavy, warm)
    for r in results:
        r.name += f" ({device})"
    if not quick and device == "cpu":
        results.append(bench_evaluate_rss(1.0))
    return results
