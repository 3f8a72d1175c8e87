"""Any architecture: trace, check, fuse: `python -m bench.bench_any_model [--quick] [--out FILE]`.

For torchvision networks ofexp did not build (`resnet50(num_classes=10)`, 25M
parameters, and as smaller rows `resnet18`, `mobilenet_v2`, `densenet121`; random
weights, nothing downloaded), this times on the CPU, in one process:

(a) trace: `trace_alignment` on a [2, 3, 64, 64] zero batch (torch.fx trace, shape
    propagation, spec derivation);
(b) check: `check_alignment_spec` (every group permuted at random, outputs compared in
    float64);
(c) fuse: `geometric_fuse(alignment="weights")` of the model with a randomly permuted
    copy of itself (the copy is the target; built outside the timer);

and reports the groups, neurons and parameters, and (d) whether the fused network's
outputs equal the original's (max |difference| / max |output| on a random
[2, 3, 64, 64] batch, float32): fusion must undo the permutation. Both parents have
non-trivial batch-norm statistics, so a misaligned BN would show there.

The baseline is one forward pass of the model on the same zero batch (no grad,
eval mode), timed in the same run before each part of each repeat: "x forward" is
a part's median time over the forward pass's median (above 1: the part costs that
many forward passes). These machines are noisy; ratios against a same-run baseline
travel, absolute seconds do not. A model that is refused (or fails) gets its one-line
message in the table and the JSON instead of timings.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import traceback
from pathlib import Path
from typing import Callable

import torch
from torch import nn
from tqdm import tqdm

from bench.common import Result, one_thread, timed
from ofexp.errors import ConfigError
from ofexp.fusion import geometric_fuse, permute_model
from ofexp.fusion.groups import group_sizes, permutation_plan
from ofexp.fusion.invariance import check_alignment_spec
from ofexp.fusion.trace import trace_alignment

INPUT_SHAPE = (2, 3, 64, 64)
PARTS = ("trace", "check", "fuse")


def _torchvision(name: str) -> Callable[[], nn.Module]:
    def build() -> nn.Module:
        from torchvision import models  # here: `--help` should not import torchvision

        if name == "mobilenet_v2":
            return models.mobilenet_v2(weights=None, num_classes=10, width_mult=1.0)
        return getattr(models, name)(weights=None, num_classes=10)
    return build


MODELS = {name: _torchvision(name) for name in ("resnet50", "resnet18", "mobilenet_v2", "densenet121")}
QUICK = ("resnet18",)


def _model(name: str, seed: int = 0) -> nn.Module:
    """torchvision `name` with random weights and non-trivial BN statistics (as tests/fusion/test_geometric.py)."""
    torch.manual_seed(seed)
    model = MODELS[name]()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.1)
    return model.eval()


def _message(exc: BaseException) -> str:
    """One line: the exception's type and first line; refusals are ofexp's ConfigErrors."""
    kind = "refused" if isinstance(exc, ConfigError) else f"error ({type(exc).__name__})"
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    return f"{kind}: {first}"


def measure(name: str, repeats: int, progress: bool = True) -> dict:
    """One row: each part's seconds per repeat beside the forward pass's, or the failure."""
    model = _model(name)
    x = torch.zeros(INPUT_SHAPE)
    probe = torch.randn(INPUT_SHAPE, generator=torch.Generator().manual_seed(1))
    row: dict = {"model": name, "input_shape": list(INPUT_SHAPE), "threads": torch.get_num_threads(),
                 "parameters": sum(p.numel() for p in model.parameters()),
                 "forward_s": [], **{f"{p}_s": [] for p in PARTS}, "error": None, "failed_part": None}

    def forward():
        with torch.no_grad():
            return model(x)

    forward()  # warm-up: first-call allocations
    state = model.state_dict()
    bar = tqdm(total=repeats * len(PARTS), desc=name, unit="part", file=sys.stderr, disable=not progress,
               leave=False)
    part = "trace"
    try:
        for _ in range(repeats):
            for part in PARTS:
                bar.set_postfix_str(part)
                row["forward_s"].append(timed(forward)[0])
                if part == "trace":
                    seconds, spec = timed(lambda: trace_alignment(model, x))
                elif part == "check":
                    seconds, _ = timed(lambda: check_alignment_spec(model, spec, x))
                else:
                    if not row["fuse_s"]:  # the permuted copy once, outside the timer
                        gen = torch.Generator().manual_seed(2)
                        sizes = group_sizes(spec, state)
                        perms = {g: torch.randperm(n, generator=gen) for g, n in sizes.items()}
                        permuted = permute_model(model, perms, spec).eval()
                    seconds, fused = timed(lambda: geometric_fuse([model, permuted], spec=spec, alignment="weights"))
                row[f"{part}_s"].append(seconds)
                bar.update()
    except Exception as exc:  # a refusal or a failure is a result of the row, not of the bench
        row["error"], row["failed_part"] = _message(exc), part
        row["traceback"] = None if isinstance(exc, ConfigError) else traceback.format_exc()
        bar.close()
        return _summarise(row)
    bar.close()
    with torch.no_grad():
        expected, got = model(probe), fused.model.eval()(probe)
        permuted_out = permuted(probe)
    scale = expected.abs().max().clamp_min(1e-30)
    row.update({
        "groups": len(sizes), "neurons": sum(sizes.values()), "largest_group": max(sizes.values()),
        "spec_tensors": len(spec.axes),
        "aligned_tensors": sum(1 for axes in spec.axes.values() if any(a is not None for a in axes)),
        "fused_max_rel_diff": float((got - expected).abs().max() / scale),
        "permuted_max_rel_diff": float((permuted_out - expected).abs().max() / scale),
        "plans_recovered": sum(torch.equal(fused.plans[g][0].float(), permutation_plan(perms[g])) for g in perms),
        "fuse_seconds_inside": fused.seconds,
        "slowest_groups": dict(sorted(((g, round(s, 4)) for g, s in fused.group_seconds.items()),
                                      key=lambda kv: -kv[1])[:3]),
    })
    return _summarise(row)


def _summarise(row: dict) -> dict:
    base = statistics.median(row["forward_s"]) if row["forward_s"] else None
    row["forward_median_s"] = base
    for p in PARTS:
        secs = row[f"{p}_s"]
        row[f"{p}_median_s"] = statistics.median(secs) if secs else None
        row[f"{p}_x_forward"] = statistics.median(secs) / base if secs and base else None
    row["load_average_1min"] = round(os.getloadavg()[0], 1)
    return row


HEADER = ("| model | parameters | groups | neurons | forward s | trace s (× fwd) | check s (× fwd) "
          "| fuse s (× fwd) | fused vs original (max rel. diff) |\n|---|---|---|---|---|---|---|---|---|")


def _line(r: dict) -> str:
    def part(p):
        if r[f"{p}_median_s"] is None:
            return "—"
        return f"{r[f'{p}_median_s']:.3f} ({r[f'{p}_x_forward']:.1f})"

    fwd = "—" if r["forward_median_s"] is None else f"{r['forward_median_s']:.4f}"
    if r["error"]:
        return (f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | | | {fwd} | {part('trace')} | {part('check')} "
                f"| {part('fuse')} | {r['failed_part']}: {r['error']} |")
    return (f"| {r['model']} | {r['parameters'] / 1e6:.1f}M | {r['groups']} | {r['neurons']:,} | {fwd} "
            f"| {part('trace')} | {part('check')} | {part('fuse')} | {r['fused_max_rel_diff']:.1e} "
            f"({r['plans_recovered']}/{r['groups']} plans = the permutation) |")


def run(quick: bool, repeats: int) -> list[Result]:
    """`bench.run` interface: each part as "ours", one forward pass of the same model as baseline
    (Result.ratio is then forward / part: below 1, the part costs more than one forward pass)."""
    results = []
    with one_thread():
        for name in QUICK if quick else tuple(MODELS):
            r = measure(name, repeats)
            print(f"[bench] {_line(r)}", file=sys.stderr, flush=True)
            for p in PARTS:
                notes = {k: r.get(k) for k in ("parameters", "groups", "neurons", "fused_max_rel_diff",
                                                "plans_recovered", "error", "load_average_1min")}
                results.append(Result(
                    name=f"any model {name}: {p}", ours={"trace": "trace_alignment", "check": "check_alignment_spec",
                                                         "fuse": "geometric_fuse (weights)"}[p],
                    baseline="one forward pass [2, 3, 64, 64]", ours_s=r[f"{p}_s"] or [float("nan")],
                    baseline_s=r["forward_s"], notes=notes))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_any_model", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="resnet18 only.")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats of each part (median reported).")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads [1].")
    parser.add_argument("--out", type=Path, default=None, help="Write the raw timings as JSON here [print only].")
    args = parser.parse_args(argv)
    if args.repeats < 1 or args.threads < 1:
        parser.error(f"--repeats and --threads must be >= 1, got {args.repeats} and {args.threads}")
    torch.set_num_threads(args.threads)
    import torchvision

    rows = []
    print(HEADER, flush=True)
    for name in QUICK if args.quick else tuple(MODELS):
        rows.append(measure(name, args.repeats))
        print(_line(rows[-1]), flush=True)
    if args.out is not None:
        record = {
            "command": "python -m bench.bench_any_model " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": platform.platform(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__, "torchvision": torchvision.__version__, "python": platform.python_version(),
            "repeats": args.repeats, "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"[bench] raw timings in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
