"""The MLflow side of a study whose steps run as cluster jobs (`ofexp study --backend slurm|kubernetes`).

The driver creates each step's run before it submits the job, nested under the
study run, and hands its ID to the job in MLFLOW_RUN_ID: the job's ofexp step
logs into it (see `launcher`), so the run ID is known before the job starts and
the job ID can be tagged on it. A step is identified by its command: its stage,
its parameters with the input run IDs filled in, and the ofexp version and commit:
`cache.step_identity` (`cluster_steps.step_digest`), the same identity the local study matches
on. It is the run's tag `ofexp.step_digest` (Slurm and Kubernetes step runs alike), and
a rerun of the study reuses the newest FINISHED run with the same digest.
"""
from __future__ import annotations

from typing import Mapping

import mlflow
from mlflow.entities import RunTag
from mlflow.exceptions import MlflowException

from ofexp.errors import ArtifactError, OfexpError
from ofexp.tracking.artifacts import DEFAULT_WEIGHTS, check_weights_intact
from ofexp.tracking.names import TAG_FAILURE, TAG_PARENT_RUN, TAG_RUN_NAME, TAG_STAGE, TAG_STEP_DIGEST
from ofexp.tracking.runs import base_tags, tracking_uri


def find_finished_step(experiment_id: str, digest: str) -> str | None:
    """The newest FINISHED run of the step with this digest whose weights are intact, or None."""
    query = f"tags.`{TAG_STEP_DIGEST}` = '{digest}' and attributes.status = 'FINISHED'"
    try:
        found = mlflow.MlflowClient().search_runs([experiment_id], filter_string=query, max_results=5,
                                                  order_by=["attributes.start_time DESC"])
    except MlflowException as exc:
        raise OfexpError(f"cannot search {tracking_uri()} for finished study steps: "
                         f"{str(exc).splitlines()[0][:300]}; check the server, or pass --no-cache") from exc
    for run in found:
        try:
            if run.data.tags.get(TAG_STAGE) in DEFAULT_WEIGHTS:
                check_weights_intact(run)
        except ArtifactError:
            continue  # changed since: redo the step
        return run.info.run_id
    return None


def create_step_run(experiment_id: str, parent_run_id: str, run_name: str, stage: str, digest: str) -> str:
    """A RUNNING run for a step about to be submitted, nested under the study run; returns its ID.

    The job's ofexp step logs into it and keeps its name (`runs.stage_run`)."""
    tags = {**base_tags(stage), TAG_PARENT_RUN: parent_run_id, TAG_RUN_NAME: run_name, TAG_STEP_DIGEST: digest}
    return mlflow.MlflowClient().create_run(experiment_id, tags=tags, run_name=run_name).info.run_id


def tag_step_run(run_id: str, tags: Mapping[str, str]) -> None:
    """Set a step run's tags (its Slurm job ID and log) in one request."""
    mlflow.MlflowClient().log_batch(run_id, tags=[RunTag(key, str(value)) for key, value in tags.items()])


def step_run_status(run_id: str) -> str:
    return mlflow.MlflowClient().get_run(run_id).info.status


def fail_step_run(run_id: str, reason: str, status: str = "FAILED") -> None:
    """Mark a step's run `status` (FAILED, or KILLED when the study was stopped) with its reason."""
    client = mlflow.MlflowClient()
    client.set_tag(run_id, TAG_FAILURE, reason[:1000])
    if client.get_run(run_id).info.status != status:
        client.set_terminated(run_id, status)
