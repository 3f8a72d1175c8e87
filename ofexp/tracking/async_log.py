"""Per-epoch tracking off the training loop's critical path: one background thread, in order.

Each epoch hands over (epoch, checkpoint, metrics). A single worker thread saves the
checkpoint to a temp file, uploads it as `checkpoint/last.pt`, and only then logs the
epoch's metrics in one batch. That order is the contract `train --resume` relies on: an
epoch whose metrics are on the server always has its checkpoint there too (so a resumed
run never logs an epoch twice). One thread keeps uploads in epoch order, so the last
checkpoint on the server is always the newest one the worker reached, never an older one
overtaking it.

MLflow's own async logging (`synchronous=False`) batches metrics, params and tags only;
it neither uploads artifacts nor orders them against metrics, which is why the epoch
record goes through this worker instead. `flush()` waits for every handed-over epoch and
re-raises the first failure, so nothing is lost silently; the train step calls it before
the run ends (see `ofexp.pipeline.steps.train`).
"""
from __future__ import annotations

import tempfile
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Mapping

import mlflow
import torch

# Checkpoints waiting for upload are full CPU copies of model + optimizer state; bounding the
# queue bounds that memory. When uploads are slower than epochs, training waits here.
DEFAULT_MAX_PENDING = 2


class EpochLogger:
    """Log each epoch's checkpoint, then its metrics, to run `run_id` from one background thread.

    Usage: `submit(epoch, checkpoint, metrics)` after every epoch (returns at once unless
    `max_pending` epochs are already waiting), then `flush()` before the run ends. Use it as
    a context manager to always stop the thread. `log_metrics(metrics, step=, run_id=)` is
    looked up at call time (default: `ofexp.tracking.log_metrics`), so the one metrics
    entry point of ofexp stays the one every epoch goes through.
    """

    def __init__(self, run_id: str, checkpoint_file: str, *, max_pending: int = DEFAULT_MAX_PENDING,
                 log_metrics: Callable[..., object] | None = None) -> None:
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.run_id = run_id
        self.checkpoint_file = checkpoint_file
        self._log_metrics = log_metrics
        self._slots = threading.BoundedSemaphore(max_pending)
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="ofexp-epoch-log")
        self._futures: list[Future] = []
        self._last_digest: str | None = None  # the uploaded checkpoint's sha256 (worker thread only)

    def submit(self, epoch: int, checkpoint: Mapping[str, object] | None, metrics: Mapping[str, float] | None) -> None:
        """Queue one epoch's record; raises at once if an earlier epoch already failed to log."""
        self._raise_first_error()
        self._slots.acquire()  # back-pressure: at most max_pending checkpoints held in memory
        try:
            future = self._pool.submit(self._log_epoch, epoch, checkpoint, metrics)
        except BaseException:
            self._slots.release()
            raise
        future.add_done_callback(lambda _: self._slots.release())
        self._futures.append(future)

    def flush(self) -> None:
        """Wait until every submitted epoch is logged; re-raise the first failure."""
        for future in self._futures:
            future.exception()  # waits
        self._raise_first_error()

    def close(self) -> None:
        """Stop the worker after it finished what was submitted."""
        self._pool.shutdown(wait=True)

    @classmethod
    def for_active_run(cls, checkpoint_file: str, **kwargs) -> "EpochLogger":
        """An EpochLogger for the run active in this thread (the worker thread has none of its own)."""
        run = mlflow.active_run()
        if run is None:
            raise RuntimeError("EpochLogger.for_active_run needs an active MLflow run")
        return cls(run.info.run_id, checkpoint_file, **kwargs)

    def __enter__(self) -> "EpochLogger":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        """Flush (raising a logging failure) on success; after a failure, still log every epoch
        that finished, but let the original exception be the one that propagates."""
        try:
            if exc_type is None:
                self.flush()
            else:
                for future in self._futures:
                    future.exception()  # waits; the training error wins over a logging one
        finally:
            self.close()

    # --- worker side ------------------------------------------------------------------------

    def _raise_first_error(self) -> None:
        for future in self._futures:
            if future.done() and future.exception() is not None:
                raise future.exception()
        self._futures = [f for f in self._futures if not f.done()]

    def _log_epoch(self, epoch: int, checkpoint, metrics) -> None:
        if checkpoint is not None:
            self._upload(checkpoint)
        if metrics:
            self._metrics_logger()(dict(metrics), step=epoch, run_id=self.run_id)

    def _metrics_logger(self) -> Callable[..., object]:
        if self._log_metrics is not None:
            return self._log_metrics
        from ofexp import tracking  # at call time: the package attribute is the entry point

        return tracking.log_metrics

    def _upload(self, checkpoint: Mapping[str, object]) -> None:
        """torch.save into a temp dir, then upload under checkpoint_file's folder, replacing the last
        one, with its digest (integrity.log_artifact_with_digest: the tag names the old file and the
        new one while the upload is under way, so `train --resume` can check either)."""
        from ofexp.tracking.integrity import log_artifact_with_digest, recorded_digests

        if self._last_digest is None:  # the checkpoint an earlier process of a resumed run left
            run = mlflow.MlflowClient().get_run(self.run_id)
            self._last_digest = next(iter(recorded_digests(run, self.checkpoint_file)), "")
        target = Path(self.checkpoint_file)
        with tempfile.TemporaryDirectory(prefix="ofexp-ckpt-") as tmp:
            path = Path(tmp) / target.name
            torch.save(dict(checkpoint), path)
            self._last_digest = log_artifact_with_digest(self.run_id, path, self.checkpoint_file,
                                                         replaces=self._last_digest)
