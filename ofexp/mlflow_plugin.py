"""MLflow plugin: `mlflow run` on an ofexp project, with no experiment flag, logs to `ofexp`.

Registered in pyproject.toml under MLflow's entry-point group
`mlflow.default_experiment_provider`. MLflow asks its default-experiment providers for
an experiment when `mlflow run` is given neither `--experiment-name` nor
`--experiment-id`, and it does so *before* it creates the run. That is the one moment
at which ofexp can also refuse a flagless `mlflow run` on a machine without conda:
MLflow's local backend creates the run first and looks for conda afterwards, so the
run would stay RUNNING (docs/study.md, "MLflow projects").

MLflow loads this module while `import mlflow` is still in progress, so it imports
nothing of MLflow (or of `ofexp.tracking`, whose package imports MLflow) at module level.
"""
from __future__ import annotations

import os
import shutil
import sys

EXPERIMENT_NAME = "ofexp"
PROJECT_PREFIX = "ofexp"  # MLproject names: ofexp, ofexp-digits-quickstart, ...


def _mlflow_run_params() -> dict | None:
    """The parsed options of this process when it is `mlflow run ...`, else None."""
    argv = sys.argv
    if len(argv) < 2 or argv[1] != "run" or os.path.basename(argv[0]) not in ("mlflow", "__main__.py"):
        return None
    from mlflow.cli import run as run_command

    ctx = run_command.make_context("run", list(argv[2:]), resilient_parsing=True)
    return ctx.params


def _ofexp_project(uri: str | None):
    """The MLproject at `uri` when it is a local ofexp project, else None."""
    if not uri or not os.path.isfile(os.path.join(uri, "MLproject")):
        return None
    from mlflow.projects._project_spec import load_project

    try:
        project = load_project(uri)
    except Exception:  # a broken MLproject is MLflow's to report, a moment later
        return None
    return project if (project.name or "").startswith(PROJECT_PREFIX) else None


def _conda_missing(params: dict, project) -> bool:
    """True when MLflow would look for conda (no --env-manager, a conda project) and find none."""
    from mlflow.projects import env_type
    from mlflow.utils.conda import get_conda_bin_executable

    if params.get("env_manager") or project.docker_env or project.env_type != env_type.CONDA:
        return False
    return shutil.which(get_conda_bin_executable("conda")) is None


class OfexpProjectExperiment:
    """MLflow's DefaultExperimentProvider interface (in_context, get_experiment_id)."""

    def __init__(self):
        self._params = None
        self._project = None

    def in_context(self) -> bool:
        params = _mlflow_run_params()
        project = _ofexp_project(params.get("uri")) if params else None
        if project is None or params.get("backend", "local") != "local":
            return False
        self._params, self._project = params, project
        return True

    def get_experiment_id(self) -> str:
        if _conda_missing(self._params, self._project):
            # SystemExit passes MLflow's `except Exception` around this call: no run exists yet.
            sys.stderr.write(
                "error: mlflow run builds conda.yaml with conda, which is not installed: add "
                "--env-manager local to run in the environment where ofexp is installed, "
                "or install conda\n")
            raise SystemExit(2)
        from mlflow.tracking import MlflowClient

        client = MlflowClient()
        experiment = client.get_experiment_by_name(EXPERIMENT_NAME)
        return experiment.experiment_id if experiment else client.create_experiment(EXPERIMENT_NAME)
