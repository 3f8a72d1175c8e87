"""What every benchmark module shares: interleaved timing and one result record.

A benchmark module `bench/bench_<area>.py` defines

    def run(quick: bool, repeats: int) -> list[Result]

and is listed in `bench.run.MODULES`. Each Result times one ofexp code path
("ours") beside its baseline, both measured in this process, alternating, so that
machine noise hits both sides alike. `ratio` is baseline / ours: above 1 means
ofexp is faster.
"""
from __future__ import annotations

import gc
import statistics
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator


@dataclass
class Result:
    name: str  # what is measured, e.g. "fusion vgg11 width 1"
    ours: str  # the ofexp side, e.g. "geometric_fuse"
    baseline: str  # the side it is compared with, e.g. "per-layer ot.emd loop"
    ours_s: list[float]  # wall seconds of each repeat
    baseline_s: list[float] = field(default_factory=list)
    target: str = ""  # the target, in words: "ratio >= 10", "ours <= 0.25 s"
    passed: bool | None = None  # whether the target was met; None when there is none
    notes: dict = field(default_factory=dict)  # agreement of values, peak memory, ...

    @property
    def ours_median(self) -> float:
        return statistics.median(self.ours_s)

    @property
    def baseline_median(self) -> float | None:
        return statistics.median(self.baseline_s) if self.baseline_s else None

    @property
    def ratio(self) -> float | None:
        base = self.baseline_median
        return base / self.ours_median if base is not None and self.ours_median > 0 else None

    def to_dict(self) -> dict:
        return {**asdict(self), "ours_median_s": self.ours_median, "baseline_median_s": self.baseline_median,
                "ratio": self.ratio}


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    """Wall seconds of one call of `fn`, and what it returned."""
    gc.collect()
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def time_pair(ours: Callable[[], object], baseline: Callable[[], object] | None, repeats: int,
              warmup: int = 1) -> tuple[list[float], list[float], object, object]:
    """Time `ours` and `baseline` alternately `repeats` times, after `warmup` untimed calls of each.

    Returns (ours seconds, baseline seconds, ours' last value, baseline's last value).
    """
    ours_value = base_value = None
    for _ in range(warmup):
        ours_value = ours()
        if baseline is not None:
            base_value = baseline()
    ours_s, base_s = [], []
    for _ in range(repeats):
        seconds, ours_value = timed(ours)
        ours_s.append(seconds)
        if baseline is not None:
            seconds, base_value = timed(baseline)
            base_s.append(seconds)
    return ours_s, base_s, ours_value, base_value


_device = "auto"  # set once by `python -m bench --device`


def set_device(name: str) -> None:
    """Where the benchmarks that can use a GPU run: "cpu", "cuda" or "auto" (cuda when there is one)."""
    global _device
    _device = name


def bench_device() -> str:
    import torch

    if _device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return _device


def sync(device: str) -> None:
    """Wait for queued GPU work, so that a timer around a call measures the call."""
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


@contextmanager
def one_thread() -> Iterator[None]:
    """torch on one intra-op thread for the block, then the previous setting.

    On this shared 2-core machine a second thread competes with other jobs, and
    timings swung 3-5x (fusion) and up to 20x (training, lipschitz) with it.
    """
    import torch  # here, so that `python -m bench --help` does not import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@contextmanager
def temporary_tracking(prefix: str) -> Iterator[str]:
    """MLflow logging into a fresh SQLite store in a temp dir for the block (yields the dir),
    then the process's previous tracking URI, experiment and environment back."""
    import mlflow

    from ofexp.tracking.uri_scope import using_tracking_uri

    with tempfile.TemporaryDirectory(prefix=prefix) as tmp, using_tracking_uri(f"sqlite:///{tmp}/mlflow.db"):
        mlflow.set_experiment(prefix.strip("-"))
        yield tmp
