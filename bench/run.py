"""Run every benchmark and print medians and ratios: `python -m bench [--quick] [--only AREA]`.

Each benchmark times ofexp beside its baseline in this same process, repeated
(5 times by default), because these machines are too noisy for absolute
timings. The table goes to stdout and every repeat to a JSON file.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import time
from pathlib import Path

import pandas as pd

from bench.common import Result, bench_device, set_device

# Modules bench/bench_<area>.py; each defines run(quick, repeats) -> list[Result].
MODULES = ("fusion", "any_model", "transport", "measures", "training", "tracking", "report", "fashion_mnist",
           "quickstart", "slurm", "slurm_step", "startup", "ui")


def _available() -> list[str]:
    here = Path(__file__).parent
    return [m for m in MODULES if (here / f"bench_{m}.py").exists()]


def table(results: list[Result]) -> pd.DataFrame:
    return pd.DataFrame([{
        "benchmark": r.name, "ofexp": r.ours, "baseline": r.baseline,
        "ofexp_s": round(r.ours_median, 4),
        "baseline_s": None if r.baseline_median is None else round(r.baseline_median, 4),
        "ratio": None if r.ratio is None else round(r.ratio, 2),
        "target": r.target, "met": {True: "yes", False: "NO", None: ""}[r.passed],
    } for r in results])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="Small sizes: seconds to about 2 min per area on 2 CPU cores "
                        "(fashion_mnist several minutes); pick areas with --only.")
    parser.add_argument("--repeats", type=int, default=5, help="Timed repeats per side (median reported).")
    parser.add_argument("--only", action="append", choices=MODULES, help="Run only this area (repeatable).")
    parser.add_argument("--json", type=Path, default=None, help="Where to write the results [bench/results/<time>.json].")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="Where training and the measures run [auto: cuda when there is one].")
    args = parser.parse_args(argv)
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1, got {args.repeats}")

    import torch

    # MLflow's per-artifact download bars would drown the bench's own lines on stderr
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA GPU here; use --device cpu")
    set_device(args.device)

    results: list[Result] = []
    for area in args.only or _available():
        module = importlib.import_module(f"bench.bench_{area}")
        print(f"[bench] {area} ...", file=sys.stderr, flush=True)
        results += module.run(quick=args.quick, repeats=args.repeats)

    frame = table(results)
    with pd.option_context("display.width", 200, "display.max_columns", None, "display.max_colwidth", 40):
        print(frame.to_string(index=False))
    path = args.json or Path(__file__).parent / "results" / time.strftime("%Y%m%d-%H%M%S.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "quick": args.quick, "repeats": args.repeats, "python": platform.python_version(),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "machine": platform.machine(),
        "device": bench_device(), "gpu": torch.cuda.get_device_name() if bench_device() == "cuda" else None,
        "results": [r.to_dict() for r in results],
    }, indent=2))
    print(f"[bench] wrote {path}", file=sys.stderr)
    if any(r.passed is False for r in results):
        print("[bench] some targets were not met (see 'met')", file=sys.stderr)


if __name__ == "__main__":
    main()
