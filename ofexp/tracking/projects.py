"""MLflow Projects: load a project's entry points, submit runs of them, find the ofexp run each made.

`ofexp study --backend kubernetes` runs each step of a study as one MLflow
Project run. ofexp logs its step into that run (see `launcher`), so the project
run's ID is what the next step is given.
"""
from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass

import mlflow
from mlflow.entities import RunStatus
from mlflow.projects._project_spec import load_project
from mlflow.utils.git_utils import get_git_commit

from ofexp.errors import ConfigError, OfexpError
from ofexp.tracking.names import TAG_FAILURE, TAG_STAGE

# Python packages that MLflow's Kubernetes backend imports when it submits a job.
KUBERNETES_CLIENT_PACKAGES = ("kubernetes", "docker")


class StepFailedError(OfexpError):
    """A study step that ran as an MLflow Project run did not finish."""


@dataclass(frozen=True)
class ProjectInfo:
    """What a dry run needs to know of a project: its name, docker base image and git commit."""

    name: str
    docker_image: str | None
    git_commit: str | None


def project_info(project_dir: str) -> ProjectInfo:
    project = load_project(project_dir)
    docker = project.docker_env or {}
    return ProjectInfo(project.name, docker.get("image"), get_git_commit(project_dir))


def entry_point_command(project_dir: str, entry_point: str, params: dict[str, str]) -> str:
    """The shell command MLflow runs for `entry_point` with `params` (MLflow's own templating and quoting)."""
    entry = load_project(project_dir).get_entry_point(entry_point)
    with tempfile.TemporaryDirectory() as storage_dir:  # only 'path' parameters use it; none here
        return entry.compute_command(params, storage_dir)


def check_kubernetes_client() -> None:
    missing = [name for name in KUBERNETES_CLIENT_PACKAGES if importlib.util.find_spec(name) is None]
    if missing:
        raise ConfigError(f"MLflow's kubernetes backend needs the Python packages {', '.join(missing)}; "
                          f"pip install {' '.join(missing)} (or use --dry-run to only render the jobs)")


def submit(project_dir: str, entry_point: str, params: dict[str, str], *, backend: str, backend_config: dict,
           run_name: str, experiment_id: str, synchronous: bool):
    """Start one MLflow Project run of `entry_point`; return MLflow's SubmittedRun.

    The launcher run is nested under the active run (the study), since MLflow
    makes a project run the child of the run active when it is created.
    """
    return mlflow.projects.run(
        project_dir, entry_point=entry_point, parameters=params, backend=backend, backend_config=backend_config,
        experiment_id=experiment_id, run_name=run_name, synchronous=synchronous,
        env_manager="local" if backend == "local" else None, build_image=backend != "local",
    )


def wait_for_step_run(submitted, step: str) -> str:
    """Wait for a submitted project run; return its ID, the ofexp step run (the step logs into it)."""
    run_id = submitted.run_id
    client = mlflow.MlflowClient()
    try:
        succeeded = submitted.wait()
    except KeyboardInterrupt:
        submitted.cancel()  # the Kubernetes Job too, not only this process's wait
        _end_launcher(client, run_id, "KILLED")
        raise
    # ofexp ends the run it logged; a Job that died before that leaves it RUNNING
    _end_launcher(client, run_id, "FINISHED" if succeeded else "FAILED")
    run = client.get_run(run_id)
    if not succeeded or run.info.status != "FINISHED" or TAG_STAGE not in run.data.tags:
        detail = run.data.tags.get(TAG_FAILURE) or ("the job failed" if not succeeded else "no ofexp step ran in it")
        raise StepFailedError(f"study step {step} (project run {run_id}) did not finish: {detail}; "
                              "see that run and the job's logs (kubectl logs job/NAME)")
    return run_id


def _end_launcher(client: mlflow.MlflowClient, run_id: str, status: str) -> None:
    if not RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
        client.set_terminated(run_id, status)
