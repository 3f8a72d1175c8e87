"""Fashion-MNIST at real scale: `python -m bench --only fashion_mnist [--quick]`.

1. **An epoch** of VGG11 width 0.25: ofexp's `train_one_epoch` over images decoded
   once into tensors, against the plain torchvision loop that the original study's
   code used (`FashionMNIST` with `Resize(32)`, `ToTensor`, `Normalize`, through a
   `DataLoader`), which decodes every image in every epoch. Same network, optimiser,
   batch size, number of images and thread count. Full: 54,000 images; quick: 6,000.
2. **The peak RSS of a train run**: `ofexp train --dataset fashion_mnist --model vgg11
   --width 0.25 --epochs 1` in a process of its own (target: ≤ 1.5 GiB).
3. **How each stage grows with the training set**, through the pipeline's own
   functions (each an MLflow run in a temporary SQLite store): digits (1,437 training
   images) as the baseline, then Fashion-MNIST subsets of 6,000 and (full) all 54,000.
   Train and fine-tune are one epoch; fuse is geometric with its default budget and
   with `--curve-samples` set to the whole test set; evaluate is one run per measure
   (one per σ search) with the `quick` search budget: a σ search draws a fixed number
   of training minibatches whatever the data size, and with the `report` budget one
   search took 8 minutes on digits alone (2 shared cores), which would make this
   benchmark take hours. The table of seconds goes to stderr as markdown.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace

import torch

from bench.common import Result, one_thread, temporary_tracking, time_pair, timed
from ofexp.data import DataConfig, DataSplits, load_dataset
from ofexp.data import fashion_mnist as fm
from ofexp.pipeline.steps.evaluate import EvalConfig, run_evaluate
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse
from ofexp.pipeline.steps.train import TrainConfig, run_train
from ofexp.pipeline.steps.ensemble import EnsembleConfig, run_ensemble
from ofexp.pipeline.steps.finetune import FinetuneConfig, finetune_recipe, run_finetune
from ofexp.training import build_optimizer, build_scheduler, make_recipe, train_one_epoch

BATCH = 64
RSS_TARGET_GIB = 1.5
# one run per σ search: the search's other two measures come from the same run
MEASURES = ("accuracy", "generalisation_gap", "lipschitz", "hessian_top_eigenvalue", "hessian_trace",
            "sharpness_flatness", "sharpness_mag_flat", "pac_bayes_flatness", "pac_bayes_mag_flat")


def _installed() -> bool:
    return all(os.path.isfile(os.path.join(fm.PACKAGE_DIR, n)) for n in fm.GZ_NAMES)


def run(quick: bool, repeats: int) -> list[Result]:
    if not _installed():
        print(f"[bench] fashion_mnist: skipped, apt-get install {fm.PACKAGE} first", file=sys.stderr)
        return []
    splits = load_dataset(DataConfig(name="fashion_mnist"))
    images = 6000 if quick else splits.info.num_train
    with one_thread():  # as every CPU benchmark here: a second thread made timings swing 3-20x
        return [_epoch(splits, images, 1 if quick else min(repeats, 2)), _train_run_rss(),
                *_scaling(splits, quick)]


# --- 1. an epoch against torchvision's per-image loop ------------------------------------------

def _vgg(splits: DataSplits) -> tuple[torch.nn.Module, torch.optim.Optimizer, object]:
    from ofexp.models import ModelSpec, build_model, init_weights

    torch.manual_seed(0)
    info = splits.info
    model = build_model(ModelSpec("vgg11", info.num_classes, info.in_channels, info.input_size, width=0.25))
    recipe = make_recipe("default", epochs=1)
    init_weights(model, recipe.init)
    optimizer = build_optimizer(model, recipe)
    return model, optimizer, build_scheduler(optimizer, recipe, -(-splits.info.num_train // BATCH))


def _torchvision_loader(root: str, splits: DataSplits, images: int):
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    transform = transforms.Compose([transforms.Resize(splits.info.input_size), transforms.ToTensor(),
                                    transforms.Normalize(splits.info.mean, splits.info.std)])
    dataset = torch.utils.data.Subset(FashionMNIST(root, train=True, transform=transform), range(images))
    return torch.utils.data.DataLoader(dataset, batch_size=BATCH, shuffle=True)


def _epoch(splits: DataSplits, images: int, repeats: int) -> Result:
    from torchvision.datasets.utils import extract_archive

    model, optimizer, scheduler = _vgg(splits)
    x, y = splits.train_x[:images], splits.train_y[:images]
    generator = torch.Generator().manual_seed(0)

    def ours() -> float:
        return train_one_epoch(model, optimizer, scheduler, x, y, batch_size=BATCH, generator=generator,
                               grad_clip=1.0, device="cpu")["loss"]

    with tempfile.TemporaryDirectory(prefix="ofexp-bench-fmnist-") as root:
        raw = os.path.join(root, "FashionMNIST", "raw")
        os.makedirs(raw)
        for name in fm.GZ_NAMES:
            extract_archive(os.path.join(fm.PACKAGE_DIR, name), raw)
        loader = _torchvision_loader(root, splits, images)

        def baseline() -> float:
            model.train()
            total = 0.0
            for xb, yb in loader:  # decodes and resizes every image, every epoch
                loss = torch.nn.functional.cross_entropy(model(xb), yb)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
                optimizer.step()
                scheduler.step()
                total += loss.item() * len(yb)
            return total / images

        ours_s, base_s, _, _ = time_pair(ours, baseline, repeats, warmup=0)
    return Result(f"fashion_mnist: VGG11 w0.25 epoch, {images} images", "train_one_epoch (decoded once)",
                  "torchvision FashionMNIST + DataLoader loop", ours_s, base_s, target="report",
                  notes={"images": images, "torch_threads": torch.get_num_threads(), "batch_size": BATCH})


# --- 2. a train run's peak memory -----------------------------------------------------------

_MEASURE_CHILD = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.stderr[-300:].replace("\\n", " "))
"""


def _train_run_rss() -> Result:
    """Peak RSS (ru_maxrss of the child) of one `ofexp train` run on all of Fashion-MNIST."""
    command = [sys.executable, "-m", "ofexp", "train", "--dataset", "fashion_mnist", "--model", "vgg11",
               "--width", "0.25", "--epochs", "1", "--device", "cpu"]
    with tempfile.TemporaryDirectory(prefix="ofexp-bench-rss-") as tmp:
        env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{tmp}/mlflow.db", "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _MEASURE_CHILD, *command], cwd=tmp, env=env,
                             capture_output=True, text=True, check=True).stdout.split(" ", 2)
        seconds = time.perf_counter() - start
    if out[0] != "0":
        raise RuntimeError(f"the measured train run failed: {out[2]}")
    peak_gib = int(out[1]) / 2**20  # ru_maxrss is in KiB on Linux
    result = Result("fashion_mnist: peak RSS of a VGG11 w0.25 train run", "ofexp train --epochs 1", "",
                    [seconds], target=f"peak RSS <= {RSS_TARGET_GIB} GiB",
                    notes={"peak_rss_gib": round(peak_gib, 3), "command": " ".join(command[1:])})
    result.passed = peak_gib <= RSS_TARGET_GIB
    return result


# --- 3. how each stage grows ------------------------------------------------------------------

def _subset(splits: DataSplits, n: int) -> DataSplits:
    info = replace(splits.info, num_train=n)
    return replace(splits, train_x=splits.train_x[:n], train_y=splits.train_y[:n], info=info)


def _stage_seconds(splits: DataSplits, data: DataConfig, preset: str) -> dict[str, float]:
    """Seconds of each pipeline stage on `splits` (one epoch of training), as MLflow runs."""
    base = TrainConfig(model="vgg11", width=0.25, data=data, recipe=make_recipe("default", epochs=1), seed=1,
                       device="cpu", log_model=False, progress=False)
    seconds, parent_1 = timed(lambda: run_train(base, splits))
    out = {"train (1 epoch)": seconds}
    parent_2 = run_train(replace(base, seed=2), splits)
    parents = (parent_1, parent_2)
    # no MLflow model on any stage (as for training): the stages' own work, as in the reference table
    fuse = FuseConfig(parents=parents, methods=("geometric",), device="cpu", log_model=False)
    out["fuse geometric"], fused = timed(lambda: run_fuse(fuse, splits)["geometric"])
    whole = replace(fuse, curve_samples=len(splits.test_x))
    out["fuse geometric, curves on the whole test set"], _ = timed(lambda: run_fuse(whole, splits))
    out["ensemble"], _ = timed(lambda: run_ensemble(EnsembleConfig(parents, device="cpu", log_model=False), splits))
    tune = FinetuneConfig(source=fused, recipe=finetune_recipe(base.recipe, epochs=1), device="cpu",
                          log_model=False, progress=False)
    out["fine-tune (1 epoch)"], _ = timed(lambda: run_finetune(tune, splits))
    for measure in MEASURES:
        ecfg = EvalConfig(model_run=parent_1, measures=measure, device="cpu", preset=preset, progress=False)
        out[f"evaluate {measure}"], _ = timed(lambda: run_evaluate(ecfg, splits))
    return out


def _scaling(fashion: DataSplits, quick: bool) -> list[Result]:
    preset = "quick"  # see the module docstring
    sizes = {"digits": (load_dataset(DataConfig()), DataConfig())}
    for n in (6000,) if quick else (6000, fashion.info.num_train):
        sizes[f"fashion_mnist {n}"] = (_subset(fashion, n), DataConfig(name="fashion_mnist"))
    seconds = {}
    with temporary_tracking("ofexp-bench-scaling-"):
        for label, (splits, data) in sizes.items():
            print(f"[bench] fashion_mnist scaling: {label} ({splits.info.num_train} training images)",
                  file=sys.stderr, flush=True)
            seconds[label] = _stage_seconds(splits, data, preset)
    labels = list(sizes)
    print(_markdown(seconds, {k: v[0].info.num_train for k, v in sizes.items()}), file=sys.stderr)
    return [Result(f"fashion_mnist scaling: {stage}", f"{labels[-1]} images",
                   f"digits {sizes['digits'][0].info.num_train} images",
                   [seconds[labels[-1]][stage]], [seconds["digits"][stage]], target="report",
                   notes={"seconds": {label: round(seconds[label][stage], 3) for label in labels},
                          "preset": preset, "ratio": "t(digits) / t(largest)"})
            for stage in seconds["digits"]]


def _markdown(seconds: dict[str, dict[str, float]], images: dict[str, int]) -> str:
    labels = list(seconds)
    head = "| stage | " + " | ".join(f"{images[k]:,} images (s)" for k in labels) + " | growth, largest / digits |"
    rows = [head, "|---" * (len(labels) + 2) + "|"]
    for stage in seconds[labels[0]]:
        values = [seconds[k][stage] for k in labels]
        rows.append(f"| {stage} | " + " | ".join(f"{v:.2f}" for v in values) + f" | {values[-1] / values[0]:.1f}× |")
    return "\n".join(rows)
