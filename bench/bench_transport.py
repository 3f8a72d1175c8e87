"""OT solve time against width: `python -m bench.bench_transport [--max-width 4096] [--out FILE]`.

At each width n, on costs like fusion's weight costs (pairwise distances of
unit-normalised random rows, d = 64), this times in one process, alternating:

- `linear_sum_assignment` on [n, n]: what `solve_transport` runs for square costs;
  the baseline of every ratio at that n, and the optimum the others are checked against;
- `ot.emd` on [n, n] with POT's default numItermax (1e5): whether POT calls its plan
  optimal (result code 1) or stopped at the cap (3), the mass its plan moves, and
  its cost relative to the optimum;
- `solve_transport` on [n, n/2]: the rectangular exact path (assignment on
  replicated columns), beside `ot.emd` with a cap of 1e7 on the same cost, whose
  optimal cost it must equal;
- `solve_transport` on [n, n/2 + 1]: widths that do not divide, the `ot.emd` path
  with its result-code check.

`ratio` is the solver's median time / `linear_sum_assignment`'s at the same n
(above 1: slower). Set OMP_NUM_THREADS=1 for one-thread figures.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import warnings
from pathlib import Path
from typing import Callable

import numpy as np
import ot
from scipy.optimize import linear_sum_assignment

from bench.common import Result, timed
from ofexp.fusion.transport import solve_transport

WIDTHS = (256, 512, 1024, 2048, 4096)
POT_DEFAULT_MAX_ITER = 100_000  # ot.emd's own default
OLD_MAX_ITER = 10_000_000  # the cap solve_transport passed to ot.emd before the result-code check


def weight_like_cost(n: int, m: int, seed: int, d: int = 64) -> np.ndarray:
    """Euclidean distances [n, m] between unit-normalised Gaussian rows in R^d."""
    rng = np.random.default_rng(seed)
    x, y = rng.standard_normal((n, d)), rng.standard_normal((m, d))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    y /= np.linalg.norm(y, axis=1, keepdims=True)
    return np.sqrt(np.clip(2.0 - 2.0 * x @ y.T, 0.0, None))  # [n, m]


def _lsa(cost: np.ndarray) -> np.ndarray:
    rows, cols = linear_sum_assignment(cost)
    plan = np.zeros_like(cost)  # [n, n]
    plan[rows, cols] = 1.0 / len(cost)
    return plan


def _emd(cost: np.ndarray, cap: int) -> tuple[np.ndarray, dict]:
    n, m = cost.shape
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the result code is recorded instead
        return ot.emd(np.full(n, 1 / n), np.full(m, 1 / m), cost, numItermax=cap, log=True)


def _cases(n: int) -> list[tuple[str, np.ndarray, Callable[[], tuple]]]:
    """(solver, cost, call returning (plan, POT result code or None)) at width n, baseline first."""
    square = weight_like_cost(n, n, seed=n)  # [n, n]
    half = weight_like_cost(n, n // 2, seed=n + 1)  # [n, n/2]
    odd = weight_like_cost(n, n // 2 + 1, seed=n + 2)  # [n, n/2 + 1]

    def emd_call(cost, cap):
        def call():
            plan, log = _emd(cost, cap)
            return plan, log["result_code"]
        return call

    return [
        ("linear_sum_assignment", square, lambda: (_lsa(square), None)),
        ("ot.emd, numItermax 1e5 (POT default)", square, emd_call(square, POT_DEFAULT_MAX_ITER)),
        ("solve_transport exact (assignment)", half, lambda: (solve_transport(half), None)),
        ("ot.emd, numItermax 1e7", half, emd_call(half, OLD_MAX_ITER)),
        ("solve_transport exact (ot.emd path)", odd, lambda: (solve_transport(odd), None)),
    ]


def measure(n: int, repeats: int) -> list[dict]:
    """One row per solver at width n; the solvers alternate within each repeat."""
    cases = _cases(n)
    seconds: list[list[float]] = [[] for _ in cases]
    values: list[tuple[np.ndarray, int | None]] = [None] * len(cases)
    for _ in range(repeats):
        for i, (_, _, call) in enumerate(cases):
            s, values[i] = timed(call)
            seconds[i].append(s)
    # shape -> optimal cost, from the assignments (the first and third cases); the [n, n/2 + 1]
    # solve has no independent optimum here: solve_transport returns POT's optimal plan or raises.
    optimum = {cases[i][1].shape: float((values[i][0] * cases[i][1]).sum()) for i in (0, 2)}
    base = statistics.median(seconds[0])
    rows = []
    for (solver, cost, _), (plan, code), secs in zip(cases, values, seconds):
        best = optimum.get(cost.shape)
        rows.append({
            "n": n, "shape": list(cost.shape), "solver": solver, "seconds": secs,
            "median_s": statistics.median(secs), "ratio_to_lsa": statistics.median(secs) / base,
            "result_code": code, "optimal": code in (None, 1),
            "mass_moved": float(plan.sum()),
            "cost_rel_optimum": None if best is None else float((plan * cost).sum()) / best,
        })
    return rows


HEADER = ("| n | shape | solver | median s | ratio to lsa | POT result | mass moved | cost / optimum |\n"
          "|---|---|---|---|---|---|---|---|")


def _line(r: dict) -> str:
    code = {None: "", 1: "1 (optimal)", 3: "3 (cap reached)"}.get(r["result_code"], str(r["result_code"]))
    rel = "" if r["cost_rel_optimum"] is None else f"{r['cost_rel_optimum']:.6f}"
    return (f"| {r['n']} | {r['shape'][0]}x{r['shape'][1]} | {r['solver']} | {r['median_s']:.4f} | "
            f"{r['ratio_to_lsa']:.2f} | {code} | {r['mass_moved']:.4f} | {rel} |")


def run(quick: bool, repeats: int) -> list[Result]:
    """`bench.run` interface: each solver as "ours", linear_sum_assignment at the same n as baseline."""
    results = []
    for n in (256, 512) if quick else WIDTHS:
        rows = measure(n, repeats)
        for r in rows[1:]:
            results.append(Result(name=f"OT solve n={n} {r['shape'][0]}x{r['shape'][1]}", ours=r["solver"],
                                  baseline="linear_sum_assignment [n, n]", ours_s=r["seconds"],
                                  baseline_s=rows[0]["seconds"],
                                  notes={k: r[k] for k in ("result_code", "mass_moved", "cost_rel_optimum")}))
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.bench_transport", description=__doc__.splitlines()[0])
    parser.add_argument("--max-width", type=int, default=4096, help="Largest n timed (of 256, 512, ..., 4096).")
    parser.add_argument("--repeats", type=int, default=3, help="Timed repeats per solver (median reported).")
    parser.add_argument("--out", type=Path, default=None, help="Write the raw timings as JSON here [print only].")
    args = parser.parse_args(argv)
    widths = [n for n in WIDTHS if n <= args.max_width]
    if not widths or args.repeats < 1:
        parser.error(f"--max-width must be >= {WIDTHS[0]} and --repeats >= 1, "
                     f"got {args.max_width} and {args.repeats}")
    rows = []
    print(HEADER, flush=True)
    for n in widths:
        rows += measure(n, args.repeats)
        print("\n".join(_line(r) for r in rows if r["n"] == n), flush=True)
    if args.out is not None:
        record = {
            "command": "python -m bench.bench_transport " + " ".join(argv if argv is not None else sys.argv[1:]),
            "machine": platform.platform(), "cpu_count": os.cpu_count(),
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS"), "load_average_1min": round(os.getloadavg()[0], 1),
            "pot": ot.__version__, "repeats": args.repeats, "rows": rows,
        }
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(record, indent=1) + "\n")
        print(f"[bench] raw timings in {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
