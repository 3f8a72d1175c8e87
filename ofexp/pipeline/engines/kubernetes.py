"""The study on a cluster: each step an MLflow Project run on MLflow's Kubernetes backend.

Each step of the study plan (`study_plan.plan`: per seed the parents' train, the ensemble,
the fusions, the fine-tunings and every model's evaluate) becomes a run of an entry point
of the project `mlflow_projects/cluster_steps` with its parameters. A step that needs other
steps' outputs names them in `inputs`: fuse and ensemble take the parents' train runs, a
fine-tuning its fused run, evaluate its model's run. The driver (the
`ofexp study --backend kubernetes` process) submits the steps in waves (every
step whose inputs are known), waits for each submitted run (the step logs into
the run MLflow made for it, see `tracking.launcher`) and passes its ID on. Every
pod talks to the same tracking server, so steps chain by run ID exactly as a
local study does, with the same run names; a step that a FINISHED run did already is
reused (`step_digest`, as for Slurm). `--dry-run` renders the Kubernetes Job of every step, with
placeholders where run IDs will be, and submits nothing.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shlex
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping

import yaml

from ofexp.errors import ConfigError
from ofexp.pipeline.engines.cluster_steps import (CLUSTER_STEPS_PROJECT, Step, finished_step, log_step_outputs, plan_study,
                                          trust_env, waves)
from ofexp.pipeline.study.run import StudyConfig, study_params
from ofexp.options import param_str

# Where `ofexp study` runs its steps. local: in this process (ofexp.pipeline.study.run); slurm: each a
# Slurm job (ofexp.pipeline.engines.slurm); kubernetes: each an MLflow Project run on MLflow's Kubernetes backend.
BACKENDS = ("local", "slurm", "kubernetes")
PROJECT_BACKENDS = ("local", "kubernetes")  # MLflow Projects' backends that RemoteConfig submits to
REQUIRED_KUBE_KEYS = ("kube-job-template-path", "repository-uri")
LABEL_STUDY, LABEL_STEP = "ofexp/study-run-id", "ofexp/step"


@dataclass(frozen=True)
class RemoteConfig:
    """Where the steps run: MLflow Projects `backend` with its `backend_config` (MLflow's keys).

    Here "local" is MLflow Projects' local backend (each step a subprocess on this
    machine); `ofexp study --backend local` does not come here, it runs the study in-process.
    """

    backend: str = "kubernetes"
    backend_config: Mapping[str, object] = field(default_factory=dict)
    project_uri: str = str(CLUSTER_STEPS_PROJECT)
    dry_run: bool = False

    def __post_init__(self) -> None:
        if self.backend not in PROJECT_BACKENDS:
            raise ConfigError(f"unknown MLflow Projects backend {self.backend!r}; use one of "
                              f"{', '.join(PROJECT_BACKENDS)}")
        if self.backend == "kubernetes":
            _check_kube_values(self.backend_config)
            missing = [key for key in REQUIRED_KUBE_KEYS if key not in self.backend_config]
            if missing:
                raise ConfigError(f"--backend-config lacks {', '.join(missing)}; give a JSON object like "
                                  '{"kube-context": "CTX", "repository-uri": "REGISTRY/ofexp-study", '
                                  '"kube-job-template-path": "mlflow_projects/cluster_steps/kubernetes_job_template.yaml"}')
            if not Path(str(self.backend_config["kube-job-template-path"])).is_file():
                raise ConfigError(f"kube-job-template-path {self.backend_config['kube-job-template-path']!r} is not a "
                                  "file; point it at a Job template such as mlflow_projects/cluster_steps/"
                                  "kubernetes_job_template.yaml (relative to the current directory)")
        if not (Path(self.project_uri) / "MLproject").is_file():
            raise ConfigError(f"no MLproject in {self.project_uri}; --backend needs the mlflow_projects/cluster_steps "
                              "project of an ofexp checkout")


def _check_kube_values(config: Mapping[str, object]) -> None:
    """MLflow's Kubernetes keys: a context and an image repository are one word each, the Job template a
    path; no control characters, which would reach the Job, the image tag or the file lookup as they are."""
    word, path = "without spaces or control characters", "without control characters (a path)"
    for key, allowed, form in (("kube-context", word, r"[^\s\x00-\x1f\x7f-\x9f]+"),
                               ("repository-uri", word, r"[^\s\x00-\x1f\x7f-\x9f]+"),
                               ("kube-job-template-path", path, r"(?!\s*$)[^\x00-\x1f\x7f-\x9f]+")):
        value = config.get(key, "-")
        if not isinstance(value, str) or not re.fullmatch(form, value):
            shown = json.dumps(value, default=repr)
            raise ConfigError(f"--backend-config: {key} must be a non-empty string {allowed}, got "
                              f"{shown if len(shown) <= 80 else shown[:77] + '...'}; fix {key} in the JSON")


def load_backend_config(text: str | None) -> dict:
    """--backend-config: a JSON object, inline or in a file (as `mlflow run --backend-config`)."""
    if not text:
        return {}
    source = text if text.lstrip().startswith("{") else None
    if source is None:
        if not os.path.isfile(text):
            raise ConfigError(f"--backend-config {text!r} is neither a JSON object nor a file; pass one of them")
        source = Path(text).read_text()
    try:
        config = json.loads(source)
    except json.JSONDecodeError as err:
        raise ConfigError(f"--backend-config is not valid JSON ({err.msg} at line {err.lineno}); fix the JSON") from None
    if not isinstance(config, dict):
        raise ConfigError("--backend-config must be a JSON object of MLflow's backend keys")
    return config


# --------------------------------------------------------------------------- rendering (dry run)


def job_definition(template: Mapping, *, project_name: str, image: str, command: str,
                   env: Mapping[str, str], job_name: str) -> dict:
    """The Job that MLflow submits for one project run, filled in as `mlflow.projects.kubernetes` does.

    MLflow sets metadata.name, the first container's name (the project name),
    image, command (each word of the entry point's command, shell-quoted) and
    appends MLFLOW_TRACKING_URI, MLFLOW_RUN_ID and MLFLOW_EXPERIMENT_ID to its
    env (KUBE_MLFLOW_TRACKING_URI, when set, replaces the tracking URI).
    """
    job = copy.deepcopy(dict(template))
    job["metadata"]["name"] = job_name
    container = job["spec"]["template"]["spec"]["containers"][0]
    container["name"] = project_name
    container["image"] = image
    container["command"] = [shlex.quote(word) for word in shlex.split(command)]
    container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in env.items())]
    return job


def step_template(remote: RemoteConfig, study_run_id: str, step: Step) -> dict:
    """The backend config's Job template, labelled with the study run and the step."""
    with open(str(remote.backend_config["kube-job-template-path"])) as f:
        template = yaml.safe_load(f)
    labels = {LABEL_STUDY: study_run_id, LABEL_STEP: step.key}
    template["metadata"].setdefault("labels", {}).update(labels)
    template["spec"]["template"].setdefault("metadata", {}).setdefault("labels", {}).update(labels)
    container = template["spec"]["template"]["spec"]["containers"][0]
    container["env"] = [*container.get("env", []), *({"name": k, "value": v} for k, v in trust_env().items())]
    return template


def pod_tracking_uri() -> str:
    """The tracking URI the pods get: KUBE_MLFLOW_TRACKING_URI (as MLflow reads it), else this process's."""
    from ofexp import tracking

    uri = os.environ.get("KUBE_MLFLOW_TRACKING_URI") or tracking.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"pods cannot reach the tracking store {uri}; set MLFLOW_TRACKING_URI to a shared "
                          "`mlflow server` (http://HOST:5000), or KUBE_MLFLOW_TRACKING_URI to its address in the cluster")
    return uri


def render_jobs(cfg: StudyConfig, remote: RemoteConfig) -> list[tuple[Step, dict]]:
    """The Kubernetes Job of every step, as MLflow would submit it; unknown run IDs are placeholders."""
    from ofexp.tracking.projects import entry_point_command, project_info

    info = project_info(remote.project_uri)
    repository = str(remote.backend_config["repository-uri"])
    # MLflow tags the image it builds "<repository-uri>:<first 7 of the git commit>" and pins its digest.
    image = f"{repository}:{info.git_commit[:7]}" if info.git_commit else repository
    uri = pod_tracking_uri()
    steps = plan_study(cfg)
    placeholders = {step.key: f"RUN_ID_OF_{step.key}" for step in steps}
    jobs = []
    for step in steps:
        command = entry_point_command(remote.project_uri, step.entry_point, step.resolved(placeholders))
        env = {"MLFLOW_RUN_ID": f"RUN_ID_OF_{step.key}", "MLFLOW_TRACKING_URI": uri,
               "MLFLOW_EXPERIMENT_ID": "STUDY_EXPERIMENT_ID"}
        job = job_definition(step_template(remote, "DRY_RUN", step), project_name=info.name, image=image,
                             command=command, env=env, job_name=f"{info.name}-{step.key}")
        jobs.append((step, job))
    return jobs


def dry_run_yaml(cfg: StudyConfig, remote: RemoteConfig) -> str:
    """Every step's Job as one multi-document YAML, each preceded by what it waits for."""
    docs = []
    for step, job in render_jobs(cfg, remote):
        waits = f"waits for {', '.join(step.needs)}" if step.needs else "needs no other step"
        docs.append(f"# step {step.key} ({step.entry_point}): {waits}\n"
                    + yaml.safe_dump(job, sort_keys=False, default_flow_style=False))
    header = (f"# {len(docs)} MLflow Project runs of {remote.project_uri} on {remote.backend}; dry run, nothing "
              "submitted.\n# RUN_ID_OF_<step> is the ofexp run that step logs: the driver waits for the step and "
              "passes its run ID on.\n# MLflow names each Job '<project>-<timestamp>' and pins the pushed image's "
              "digest when it submits.\n")
    return header + "---\n".join(docs)


# --------------------------------------------------------------------------- submission


def check_backend(remote: RemoteConfig) -> None:
    """Before any run: the pods can reach the tracking server, and MLflow's Kubernetes client is installed."""
    from ofexp.tracking.projects import check_kubernetes_client

    if remote.backend == "kubernetes":
        pod_tracking_uri()
        check_kubernetes_client()


def run_remote_study(cfg: StudyConfig, remote: RemoteConfig) -> str:
    """Run the study's steps as MLflow Project runs on `remote.backend`, nested under one study run; return its ID.

    Each step whose digest a FINISHED run of the experiment carries is reused (unless --no-cache);
    the others are submitted, wave by wave, each named as the local study names it."""
    from ofexp import tracking
    from ofexp.tracking import cluster_runs
    from ofexp.tracking.names import TAG_CACHE, TAG_STEP_DIGEST
    from ofexp.tracking.projects import StepFailedError, submit, wait_for_step_run

    steps = plan_study(cfg)
    check_backend(remote)
    tcfg = cfg.train
    params = {**study_params(cfg), "backend": remote.backend}
    description = (f"Study of {tcfg.model} on {tcfg.data.name} over seeds {', '.join(map(str, cfg.seeds))}, each "
                   f"step an MLflow Project run on {remote.backend}, chained by run ID.")
    with tracking.stage_run("study", run_name=cfg.run_name, params=params, tags={TAG_CACHE: param_str(cfg.use_cache)},
                            description=description) as run, \
            tempfile.TemporaryDirectory(prefix="ofexp-jobs-") as templates:
        experiment_id = run.info.experiment_id
        run_ids: dict[str, str] = {}
        reused: set[str] = set()
        for wave in waves(steps):
            submitted = []
            for step in wave:
                step_params = step.resolved(run_ids)
                digest, found = finished_step(step, step_params, experiment_id, cfg.use_cache)
                if found:
                    run_ids[step.key] = found
                    reused.add(step.key)
                    continue
                handle = submit(remote.project_uri, step.entry_point, step_params, backend=remote.backend,
                                backend_config=_backend_config(remote, run.info.run_id, step, templates),
                                run_name=step.run_name, experiment_id=experiment_id,
                                synchronous=remote.backend == "local")
                cluster_runs.tag_step_run(handle.run_id, {TAG_STEP_DIGEST: digest})
                submitted.append((step, handle))
            failures = []
            for step, handle in submitted:  # wait for the whole wave, so no Job is left behind unwatched
                try:
                    run_ids[step.key] = wait_for_step_run(handle, step.key)
                except StepFailedError as err:
                    failures.append(err)
            if failures:
                raise failures[0]
        log_step_outputs(cfg, steps, run_ids, experiment_id, frozenset(reused))
        return run.info.run_id


def _backend_config(remote: RemoteConfig, study_run_id: str, step: Step, folder: str) -> dict:
    """MLflow's backend config for one step: for kubernetes, a copy of the Job template carrying its labels."""
    if remote.backend != "kubernetes":
        return dict(remote.backend_config)
    path = Path(folder) / f"{step.key}.yaml"
    path.write_text(yaml.safe_dump(step_template(remote, study_run_id, step), sort_keys=False))
    return {**remote.backend_config, "kube-job-template-path": str(path)}

