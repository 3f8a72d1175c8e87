"""The three study engines give the same study (issue #24): one small digits study, fine-tuning and
the ensemble on, run by the local engine, by Slurm (a real one-node cluster, .ci/install-slurm.sh) and
by the Kubernetes engine's driver on MLflow Projects' local backend (each step a subprocess running
the project's entry point, as a pod would), all against one real `mlflow server`.

Compared with the local study, step by step (steps.csv's seed, kind and stage): the run's name, its
status, that it is nested under its study run, the steps whose runs it took (parents, init-from, the
measured model), its params with those run IDs read as the steps they name; and the study's
results.csv, value for value (training on the CPU with one thread is deterministic for a seed). A
rerun of a cluster study reuses every step. An engine that skips a kind, names a run otherwise or
chains a step to another input fails here.
"""
from __future__ import annotations

import json
import os
import sys
import uuid
from pathlib import Path

import pandas as pd
import pytest
import yaml
from mlflow.tracking import MlflowClient

from conftest import run_cli, using_tracking_uri
from ofexp.tracking.names import TAG_INIT_FROM, TAG_MODEL_RUN, TAG_PARENT_RUN, TAG_PARENTS

pytestmark = pytest.mark.slow

# 1 seed, fine-tuning and the ensemble on: 10 steps, one of each entry point's (train, ensemble, fuse,
# finetune, evaluate). One fusion method keeps it small: geometric is naive's step with other options.
TINY = ["--model", "mlp", "--width", "0.25", "--epochs", "1", "--finetune-epochs", "1", "--method", "naive",
        "--no-log-model"]
KINDS = {"parent_1", "parent_2", "ensemble", "naive_fused", "naive_finetuned"}
INPUT_TAGS = (TAG_PARENTS, TAG_INIT_FROM, TAG_MODEL_RUN)  # the lineage tags that name other steps' runs
RUN_ID_PARAMS = ("parents", "init_from", "model_run")  # the params that do


def _study_cli(server, tmp_path: Path, *extra: str, experiment: str | None = None) -> str:
    experiment = experiment or f"engines-{uuid.uuid4().hex[:8]}"
    done = run_cli(["study", *TINY, "--seeds", "1", "--experiment-name", experiment, *extra],
                   tracking_uri=server.uri, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.last_line


@pytest.fixture(scope="module")
def local_study(mlflow_server, tmp_path_factory) -> str:
    return _study_cli(mlflow_server, tmp_path_factory.mktemp("local"))


def _artifact(client: MlflowClient, run_id: str, name: str, folder: Path) -> pd.DataFrame:
    return pd.read_csv(client.download_artifacts(run_id, name, str(folder / uuid.uuid4().hex)))


def _study_view(client: MlflowClient, study_id: str, folder: Path) -> tuple[dict, pd.DataFrame]:
    """Each step, by (seed, kind, stage), as an engine-independent record; and results.csv."""
    steps = _artifact(client, study_id, "steps.csv", folder)
    step_of = {r.run_id: (r.seed, r.kind) for r in steps.itertuples() if r.stage != "evaluate"}

    def named(ids: str) -> list:
        return [step_of[run_id] for run_id in ids.split(",")]

    view = {}
    for r in steps.itertuples():
        run = client.get_run(r.run_id)
        tags, params = run.data.tags, run.data.params
        view[(r.seed, r.kind, r.stage)] = {
            "name": run.info.run_name, "status": run.info.status, "in study": tags[TAG_PARENT_RUN] == study_id,
            "inputs": {tag: named(tags[tag]) for tag in INPUT_TAGS if tag in tags},
            # a project run logs the parameters it was given too; ofexp's own value, where it differs, is
            # logged as resolved.<name> (tracking.launcher): compare what ofexp logged
            "params": {k: named(v) if k in RUN_ID_PARAMS else params.get(f"resolved.{k}", v)
                       for k, v in params.items() if not k.startswith("resolved.")},
        }
    return view, _artifact(client, study_id, "results.csv", folder)


def _slurm_study(server, tmp_path: Path, experiment: str) -> str:
    config = tmp_path / "slurm.json"
    config.write_text(json.dumps({"time": 20, "cpus_per_task": 1, "log_dir": str(tmp_path / "slurm-logs")}))
    return _study_cli(server, tmp_path, "--backend", "slurm", "--backend-config", str(config), experiment=experiment)


def _kubernetes_study(server, tmp_path: Path, experiment: str) -> tuple[str, dict]:
    """The Kubernetes engine's driver, on MLflow Projects' local backend: the project's entry points run
    as subprocesses here. The project is copied without its docker_env, the only part the local
    backend would treat otherwise (it would run docker)."""
    from ofexp import tracking
    from ofexp.cli import main
    from ofexp.pipeline.engines import kubernetes
    from ofexp.pipeline.engines.cluster_steps import CLUSTER_STEPS_PROJECT, plan_study
    from ofexp.pipeline.engines.kubernetes import RemoteConfig

    spec = yaml.safe_load((CLUSTER_STEPS_PROJECT / "MLproject").read_text())
    spec.pop("docker_env")
    project = tmp_path / "project"
    project.mkdir(exist_ok=True)
    (project / "MLproject").write_text(yaml.safe_dump(spec))
    made = {}

    def run_on_local_backend(cfg, _remote):  # `ofexp study --backend kubernetes`, with the local backend
        made["id"] = kubernetes.run_remote_study(cfg, RemoteConfig(backend="local", project_uri=str(project)))
        made["requested"] = {(s.seed, s.kind, s.stage): {*s.params, *s.inputs} for s in plan_study(cfg)}
        return made["id"]

    env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "OMP_NUM_THREADS": "1"}
    backend = json.dumps({"repository-uri": "unused", "kube-job-template-path": str(
        CLUSTER_STEPS_PROJECT / "kubernetes_job_template.yaml")})
    with pytest.MonkeyPatch.context() as patch, using_tracking_uri(server.uri):
        for key, value in env.items():
            patch.setenv(key, value)
        # the CLI's own StudyConfig, handed to the driver with MLflow Projects' local backend
        patch.setattr("ofexp.cli.backend_options.run_remote_study", run_on_local_backend)
        patch.setattr("ofexp.cli.backend_options.check_backend", lambda _remote: None)  # no cluster client here
        patch.chdir(tmp_path)
        tracking.configure_tracking(experiment)
        try:
            main(["study", *TINY, "--seeds", "1", "--experiment-name", experiment, "--backend", "kubernetes",
                  "--backend-config", backend])
        except SystemExit as exc:
            assert not exc.code, f"ofexp study --backend kubernetes exited {exc.code}"
    return made["id"], made["requested"]


def _assert_same_study(client: MlflowClient, study_id: str, local_id: str, folder: Path,
                       requested: dict | None = None) -> None:
    requested = requested or {}
    (view, results), (local_view, local_results) = (_study_view(client, s, folder) for s in (study_id, local_id))
    assert {kind for _, kind, _ in view} == KINDS, "every kind the study makes"
    assert sorted(view) == sorted(local_view), "the same steps (seed, kind, stage)"
    for step, record in local_view.items():
        theirs, params = view[step], view[step].pop("params")
        local_params = record.pop("params")
        differ = {k: (params.get(k), v) for k, v in local_params.items() if params.get(k) != v}
        assert not differ, f"{step}: params (engine, local) {differ}"
        # what more a step run holds is only the parameters MLflow Projects logged as given
        assert set(params) - set(local_params) <= requested.get(step, set()), step
        assert theirs == record, step
    assert list(results.columns) == list(local_results.columns)
    key = ["Model", "Space", "Metric"]
    pd.testing.assert_frame_equal(results.sort_values(key).reset_index(drop=True),
                                  local_results.sort_values(key).reset_index(drop=True), check_exact=True)


def _assert_rerun_reuses_every_step(client: MlflowClient, rerun_id: str, first_id: str, folder: Path) -> None:
    steps, first = (_artifact(client, s, "steps.csv", folder) for s in (rerun_id, first_id))
    assert steps["reused"].all() and list(steps["run_id"]) == list(first["run_id"])


def test_slurm_runs_the_same_study_as_the_local_engine(slurm_cluster, mlflow_server, local_study, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    experiment = f"engines-slurm-{uuid.uuid4().hex[:8]}"
    study_id = _slurm_study(mlflow_server, tmp_path, experiment)
    _assert_same_study(client, study_id, local_study, tmp_path)
    steps = _artifact(client, study_id, "steps.csv", tmp_path)
    jobs = {client.get_run(r).data.tags.get("ofexp.slurm_job_id") for r in steps["run_id"]}
    assert None not in jobs and len(jobs) == len(steps), "one Slurm job per step"
    rerun = _slurm_study(mlflow_server, tmp_path, experiment)
    _assert_rerun_reuses_every_step(client, rerun, study_id, tmp_path)


def test_the_kubernetes_engine_runs_the_same_study_as_the_local_engine(mlflow_server, local_study, tmp_path):
    client = MlflowClient(mlflow_server.uri)
    experiment = f"engines-k8s-{uuid.uuid4().hex[:8]}"
    study_id, requested = _kubernetes_study(mlflow_server, tmp_path, experiment)
    _assert_same_study(client, study_id, local_study, tmp_path, requested)
    steps = _artifact(client, study_id, "steps.csv", tmp_path)
    entry_points = {client.get_run(r).data.tags.get("mlflow.project.entryPoint") for r in steps["run_id"]}
    assert entry_points == {"train", "ensemble", "fuse", "finetune", "evaluate"}, "each step a project run"
    assert len(client.search_runs([client.get_run(study_id).info.experiment_id])) == 1 + len(steps), \
        "the study and one run per step, nothing else"
    rerun, _ = _kubernetes_study(mlflow_server, tmp_path, experiment)
    _assert_rerun_reuses_every_step(client, rerun, study_id, tmp_path)
