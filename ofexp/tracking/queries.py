"""Reading runs back from the tracking server with server-side filters, as plain data.

`ofexp report` and `ofexp compare` rebuild their tables from these alone: no local
files, only `MlflowClient.search_runs` (filtered on the server) and metric histories.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import mlflow
from mlflow.entities import Run
from mlflow.exceptions import MlflowException

from ofexp.errors import OfexpError, RunLookupError
from ofexp.tracking.names import TAG_STAGE
from ofexp.tracking.runs import tracking_uri

_PAGE = 1000  # runs per search request (MLflow's server caps a page at 1000 for search_runs via REST)
_IDS_PER_QUERY = 100  # run IDs per `run_id IN (...)` filter, to keep each request small


@dataclass(frozen=True)
class RunData:
    """A run's identity, params, latest metric values and tags: MLflow's Run as plain dicts."""

    run_id: str
    name: str
    status: str
    experiment_id: str
    start_time: int | None
    params: dict[str, str]
    metrics: dict[str, float]
    tags: dict[str, str]

    @property
    def stage(self) -> str | None:
        return self.tags.get(TAG_STAGE)


def _run_data(run: Run) -> RunData:
    info = run.info
    return RunData(info.run_id, info.run_name or "", info.status, info.experiment_id, info.start_time,
                   dict(run.data.params), dict(run.data.metrics), dict(run.data.tags))


def search(experiment_ids: Sequence[str], filter_string: str = "", order_by: Sequence[str] | None = None) -> list[RunData]:
    """Every run of the experiments that matches the server-side `filter_string`, all pages."""
    client = mlflow.MlflowClient()
    found, token = [], None
    try:
        while True:
            page = client.search_runs(list(experiment_ids), filter_string=filter_string, max_results=_PAGE,
                                      order_by=list(order_by or []), page_token=token)
            found += [_run_data(run) for run in page]
            token = page.token
            if not token:
                return found
    except MlflowException as exc:
        raise OfexpError(f"cannot search runs on {tracking_uri()}: {str(exc).splitlines()[0][:300]}; "
                         "check MLFLOW_TRACKING_URI and that the server is running") from exc


def all_experiment_ids() -> list[str]:
    """The IDs of every active experiment on the server, all pages."""
    client, ids, token = mlflow.MlflowClient(), [], None
    try:
        while True:
            page = client.search_experiments(max_results=_PAGE, page_token=token)
            ids += [e.experiment_id for e in page]
            token = page.token
            if not token:
                return ids
    except MlflowException as exc:
        raise OfexpError(f"cannot list experiments on {tracking_uri()}: {str(exc).splitlines()[0][:300]}") from exc


def runs_by_id(run_ids: Iterable[str], experiment_ids: Sequence[str] | None = None) -> dict[str, RunData]:
    """{run ID: RunData} for every ID, fetched with `attributes.run_id IN (...)` filters.

    Searches `experiment_ids` (default: every experiment). Raises RunLookupError naming
    the IDs that do not exist (or are deleted).
    """
    wanted = list(dict.fromkeys(r.strip() for r in run_ids if r.strip()))
    for run_id in wanted:
        if not run_id.isalnum():
            raise RunLookupError(f"{run_id!r} is not a run ID; pass the 32-character IDs that ofexp prints")
    experiments = list(experiment_ids) if experiment_ids else all_experiment_ids()
    found: dict[str, RunData] = {}
    for start in range(0, len(wanted), _IDS_PER_QUERY):
        chunk = wanted[start:start + _IDS_PER_QUERY]
        ids = ", ".join(f"'{run_id}'" for run_id in chunk)
        found.update({r.run_id: r for r in search(experiments, f"attributes.run_id IN ({ids})")})
    missing = [r for r in wanted if r not in found]
    if missing:
        raise RunLookupError(f"run {', '.join(missing)} does not exist on {tracking_uri()} (or is deleted); "
                             "check the IDs (and MLFLOW_TRACKING_URI)")
    return {r: found[r] for r in wanted}


def get_run_data(run_id: str, stage: str | None = None) -> RunData:
    """One run by ID (any experiment); with `stage`, RunLookupError unless it is of that stage."""
    run_id = run_id.strip()
    if not run_id.isalnum():
        raise RunLookupError(f"{run_id!r} is not a run ID; pass the 32-character IDs that ofexp prints")
    try:
        found = mlflow.MlflowClient().get_run(run_id)
    except MlflowException as exc:
        if exc.get_http_status_code() == 404 or "RESOURCE_DOES_NOT_EXIST" in str(exc.error_code):
            raise RunLookupError(f"run {run_id} does not exist on {tracking_uri()}; check the ID "
                                 "(and MLFLOW_TRACKING_URI)") from None
        raise OfexpError(f"cannot read run {run_id} on {tracking_uri()}: {str(exc).splitlines()[0][:300]}") from exc
    if found.info.lifecycle_stage == "deleted":
        raise RunLookupError(f"run {run_id} is deleted; restore it (mlflow runs restore) or pass another run")
    run = _run_data(found)
    if stage is not None and run.stage != stage:
        raise RunLookupError(f"run {run.run_id} is a {run.stage or 'non-ofexp'} run, not a {stage} run; "
                             f"pass the ID that `ofexp {stage}` printed last")
    return run


def metric_history(run_id: str, key: str) -> list[tuple[int, float]]:
    """(step, value) of every logged value of metric `key`, in step order."""
    try:
        history = mlflow.MlflowClient().get_metric_history(run_id, key)
    except MlflowException as exc:
        raise OfexpError(f"cannot read metric {key} of run {run_id}: {str(exc).splitlines()[0][:300]}") from exc
    return sorted((m.step, m.value) for m in history)
