"""Fusion quality on digits: the README's table. Not a test (slow); run it as a script:

    .venv/bin/python tests/fusion/quality.py --arch vgg11 --width 0.25 [--batchnorm] [--bias] [--epochs 10] [--lr 0.01] [--weight-decay 0] [--parents 2] [--solver sinkhorn --reg 0.1] [--csv PATH]

For each study seed s (1, 2), trains parents with torch seeds 100·s+1, 100·s+2, ...
(default recipe, one torch thread, CPU), then prints the test accuracy of the
parents, their naive average and geometric fusion with each alignment, and
activation-based fusion followed by REPAIR (`ofexp fuse --repair`). Fused
batch-norm nets get their statistics recomputed on the training data, as `ofexp
fuse` does. `--cache DIR` keeps the trained parents between runs. `--csv PATH` also
writes one row per (configuration, seed, model) with its test accuracy to PATH,
merged into what PATH holds (the rows of this configuration and seed are replaced, others kept), so
several invocations build one file: docs/results/digits_fusion/quality.csv.
`--solver sinkhorn --reg R` fuses (both alignments) with Sinkhorn, as `ofexp fuse` does.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from ofexp.data import DataConfig, load_dataset
from ofexp.fusion import geometric_fuse, naive_fuse, recompute_batchnorm_stats, repair_geometric
from ofexp.models import ModelSpec, build_model, init_weights
from ofexp.pipeline.steps.fuse import activation_inputs
from ofexp.training import evaluate, fit, make_recipe, seed_everything

CPU = torch.device("cpu")
# the configuration's arguments: with seed and model, the key of a row of --csv's file
# (reg is 0 for the exact solver, which has none)
CONFIG_COLUMNS = ("arch", "width", "batchnorm", "bias", "epochs", "lr", "weight_decay", "parents", "solver", "reg")
MODELS_AFTER_PARENTS = ("naive", "geometric_weights", "geometric_activations", "activations_repair")


def _parent(spec: ModelSpec, splits, overrides: dict, seed: int, cache: Path | None) -> torch.nn.Module:
    bias = "_bias" if spec.bias else ""
    tag = "_".join(f"{k}{v}" for k, v in overrides.items() if v is not None) or "default"
    path = cache / f"{spec.arch}_{spec.width:g}_bn{int(spec.batchnorm)}{bias}_{tag}_{seed}.pt" if cache else None
    model = build_model(spec)
    if path is not None and path.exists():
        model.load_state_dict(torch.load(path, weights_only=True))
        return model.eval()
    recipe = make_recipe("default", **overrides)
    seed_everything(seed)
    model = build_model(spec)
    init_weights(model, recipe.init)
    fit(model, splits, recipe, device=CPU, seed=seed, progress=False)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), path)
    return model.eval()


def _accuracy(model: torch.nn.Module, splits, recompute: bool) -> float:
    if recompute and model.spec.batchnorm:
        recompute_batchnorm_stats(model, splits.train_x)
    return evaluate(model, splits.test_x, splits.test_y, device=CPU)["accuracy"]


def write_csv(path: Path, config: dict, rows: list[dict]) -> None:
    """Merge one configuration's rows into the file at `path`: its earlier rows of the same seeds are
    replaced, every other row is kept."""
    new = pd.DataFrame([{**config, **row} for row in rows])
    if path.is_file():
        old = pd.read_csv(path)
        same = pd.Series(True, index=old.index)
        for column in CONFIG_COLUMNS:
            same &= old[column].astype(str) == str(config[column])
        same &= old["seed"].isin(new["seed"])
        new = pd.concat([old[~same], new], ignore_index=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    new.to_csv(path, index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="mlp", choices=("mlp", "vgg11", "resnet18"))
    parser.add_argument("--width", type=float, default=0.25)
    parser.add_argument("--batchnorm", action="store_true")
    parser.add_argument("--bias", action="store_true")
    parser.add_argument("--epochs", type=int, default=None, help="default: the default recipe's (10)")
    parser.add_argument("--lr", type=float, default=None, help="default: the default recipe's (0.01)")
    parser.add_argument("--weight-decay", type=float, default=None, help="default: the default recipe's (0)")
    parser.add_argument("--seeds", default="1,2")
    parser.add_argument("--parents", type=int, default=2, help="parents per seed, torch seeds 100·s+1, ...")
    parser.add_argument("--solver", default="exact", choices=("exact", "sinkhorn"), help="geometric fusion's OT solver")
    parser.add_argument("--reg", type=float, default=0.01, help="Sinkhorn's relative regularisation (as `ofexp fuse`)")
    parser.add_argument("--cache", type=Path, default=None)
    parser.add_argument("--csv", type=Path, default=None, help="merge one row per (seed, model) into this CSV")
    args = parser.parse_args()
    torch.set_num_threads(1)
    splits = load_dataset(DataConfig())
    info = splits.info
    spec = ModelSpec(args.arch, info.num_classes, info.in_channels, info.input_size, width=args.width,
                     batchnorm=args.batchnorm, bias=args.bias)
    inputs = activation_inputs(splits, 256)
    # the recipe's values as run (None -> the default recipe's), so a row says what trained its parents
    recipe = make_recipe("default", epochs=args.epochs, lr=args.lr, weight_decay=args.weight_decay)
    config = {"arch": args.arch, "width": args.width, "batchnorm": args.batchnorm, "bias": args.bias,
              "epochs": recipe.epochs, "lr": recipe.lr, "weight_decay": recipe.weight_decay,
              "parents": args.parents, "solver": args.solver, "reg": args.reg if args.solver == "sinkhorn" else 0.0}
    records = []
    print("| seed | parents | naive | geometric, weights | geometric, activations | activations + REPAIR |")
    for s in (int(v) for v in args.seeds.split(",")):
        overrides = {"epochs": args.epochs, "lr": args.lr, "weight_decay": args.weight_decay}
        parents = [_parent(spec, splits, overrides, 100 * s + i, args.cache) for i in range(1, args.parents + 1)]
        accuracies = {f"parent_{i}": _accuracy(p, splits, False) for i, p in enumerate(parents, 1)}
        accuracies["naive"] = _accuracy(naive_fuse(parents), splits, True)
        seconds = {}
        for alignment in ("weights", "activations"):
            start = time.perf_counter()
            result = geometric_fuse(parents, alignment=alignment, inputs=inputs, solver=args.solver, reg=args.reg)
            # As `ofexp fuse`: batch-norm statistics first (in place), then REPAIR reads their outputs.
            accuracies[f"geometric_{alignment}"] = _accuracy(result.model, splits, True)
            seconds[f"geometric_{alignment}"] = time.perf_counter() - start
        repair_geometric(result, inputs)  # the activation-aligned fusion
        accuracies["activations_repair"] = _accuracy(result.model, splits, False)
        records += [{"seed": s, "model": model, "accuracy": value} for model, value in accuracies.items()]
        row = [" / ".join(f"{accuracies[f'parent_{i}']:.3f}" for i in range(1, args.parents + 1))]
        row += [f"{accuracies[m]:.3f}" + (f" ({seconds[m]:.1f} s)" if m in seconds else "")
                for m in MODELS_AFTER_PARENTS]
        print(f"| {s} | " + " | ".join(row) + " |", flush=True)
    if args.csv is not None:
        write_csv(args.csv, config, records)

if __name__ == "__main__":
    main()
