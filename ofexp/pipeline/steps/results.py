"""The one line a command ends with on stderr: what its run measured, read back from the run.

`train`, `fuse`, `ensemble` and `evaluate` print it before the run ID (stdout, last line), so a
user sees the result without opening the UI: test accuracy, and for a fusion or an ensemble its
ratio to the mean accuracy of its inputs, the number `ofexp study` tabulates.
"""
from __future__ import annotations

from ofexp import tracking
from ofexp.metrics import TEST_ACCURACY_KEY, TEST_LOSS_KEY
from ofexp.tracking.names import TAG_MODEL_RUN, TAG_PARENTS, TAG_WARNINGS


def _inputs_mean_accuracy(run: tracking.RunData) -> float | None:
    """Mean test accuracy of a fuse or ensemble run's inputs: from its parent runs, or (parents
    given by model URI, or an ensemble's members) from the accuracies the run logged itself."""
    logged = [v for k, v in sorted(run.metrics.items())
              if (k.startswith("parent_") and k.endswith("/accuracy")) or k.startswith(f"{TEST_ACCURACY_KEY}/member_")]
    if logged:
        return sum(logged) / len(logged)
    parents = [p for p in run.tags.get(TAG_PARENTS, "").split(",") if p and "/" not in p and ":" not in p]
    if not parents:
        return None
    accuracies = [r.metrics.get(TEST_ACCURACY_KEY) for r in tracking.runs_by_id(parents).values()]
    return None if None in accuracies else sum(accuracies) / len(accuracies)


def result_line(run_id: str) -> str:
    """'<stage> run <ID>: test accuracy 0.9123 …' for a finished run of any ofexp stage."""
    run = tracking.get_run_data(run_id)
    stage = run.stage or "ofexp"
    accuracy = run.metrics.get(TEST_ACCURACY_KEY)
    head = f"{stage} run {run_id}"
    if stage == "evaluate":
        warned = [w for w in run.tags.get(TAG_WARNINGS, "").split(",") if w]
        measured = f"{len(run.metrics)} metrics"
        return (f"{head} (model run {run.tags.get(TAG_MODEL_RUN, '?')}): "
                + (f"accuracy {accuracy:.4f}, " if accuracy is not None else "") + measured
                + (f"; warnings for {', '.join(warned)} (see the ofexp.warning.* tags)" if warned else ""))
    if accuracy is None:
        return f"{head}: no test accuracy logged"
    line = f"{head}: test accuracy {accuracy:.4f}"
    if TEST_LOSS_KEY in run.metrics:
        line += f", test loss {run.metrics[TEST_LOSS_KEY]:.4f}"
    if stage in ("fuse", "ensemble"):
        mean = _inputs_mean_accuracy(run)
        if mean:
            line += f"; {accuracy / mean:.3f}x the {'parents' if stage == 'fuse' else 'members'}' mean accuracy {mean:.4f}"
    return line


__all__ = ["result_line"]
