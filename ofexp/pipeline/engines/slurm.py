"""The study on Slurm: every step (train, ensemble, fuse, fine-tune, evaluate) one Slurm job, chained by run ID.

The driver (the `ofexp study --backend slurm` process) runs the study plan's steps
(`study.plan.plan`), rendered as entry-point runs (`cluster_steps.plan_study`) as for Kubernetes, in waves: every step
whose inputs are known is submitted at once, and the next wave starts when the
wave has ended. Dependencies stay with the driver rather than Slurm's
`--dependency=afterok`, because a step's command names its inputs by run ID,
which exists only once the input step's run does; a driver that dies is
re-attached by running the same study again: finished steps are reused.

Per step, the driver creates the step's run (nested under the study run) and
submits `python -m ofexp <entry point> ...` with MLFLOW_RUN_ID set to it, so the
job logs into that run and its Slurm job ID is tagged there
(`ofexp.slurm_job_id`, `ofexp.slurm_log`). A job that fails or is cancelled
leaves its step FAILED with the job and its log named. Ctrl-C or SIGTERM on the
driver cancels every queued and running job of the study, however many stops arrive:
later ones wait for the first one's cleanup (`signals.stops_held`).
"""
from __future__ import annotations

import shlex
import sys
import time
from dataclasses import dataclass

from tqdm import tqdm

from ofexp import tracking
from ofexp.errors import ConfigError, OfexpError
from ofexp.pipeline.engines import slurm_jobs
from ofexp.pipeline.engines.cluster_steps import (CLUSTER_STEPS_PROJECT, Step, finished_step, log_step_outputs, plan_study,
                                          trust_env, waves)
from ofexp.pipeline.engines.slurm_jobs import SlurmConfig
from ofexp.pipeline.study.run import StudyConfig, study_params
from ofexp.signals import stops_held
from ofexp.tracking import cluster_runs
from ofexp.tracking.names import TAG_CACHE, TAG_SLURM_JOB, TAG_SLURM_LOG
from ofexp.tracking.projects import entry_point_command
from ofexp.tracking.runs import param_str

POLL_SECONDS = 2.0


class SlurmStepError(OfexpError):
    """A study step's Slurm job failed or was cancelled."""


@dataclass
class _Submitted:
    step: Step
    run_id: str
    job: object  # submitit's SlurmJob


def cluster_tracking_uri() -> str:
    """The tracking URI every job gets: an HTTP server, since jobs run on other nodes."""
    uri = tracking.tracking_uri()
    if not uri.startswith(("http://", "https://")):
        raise ConfigError(f"Slurm jobs cannot reach the tracking store {uri}; start a shared `mlflow server` the "
                          "nodes can reach and set MLFLOW_TRACKING_URI=http://HOST:PORT")
    return uri


def step_command(step: Step, params: dict[str, str], slurm: SlurmConfig) -> list[str]:
    """The step's `python -m ofexp ...` argv: the study-steps project's entry point, as MLflow renders it."""
    words = shlex.split(entry_point_command(str(CLUSTER_STEPS_PROJECT), step.entry_point, params))
    return [slurm.python or sys.executable, *words[1:]]  # words[0] is "python"


def dry_run_scripts(cfg: StudyConfig, slurm: SlurmConfig) -> str:
    """Every step's command and sbatch script, with RUN_ID_OF_<step> where run IDs will be."""
    steps = plan_study(cfg)
    placeholders = {step.key: f"RUN_ID_OF_{step.key}" for step in steps}
    out = [f"# {len(steps)} Slurm jobs, submitted in {len(waves(steps))} waves; dry run, nothing submitted.\n"
           "# Each job runs its step's command with MLFLOW_RUN_ID=RUN_ID_OF_<step>, the run the driver made "
           "for it.\n"]
    for step in steps:
        waits = f"waits for {', '.join(step.needs)}" if step.needs else "needs no other step"
        command = shlex.join(step_command(step, step.resolved(placeholders), slurm))
        out.append(f"# step {step.key} ({step.entry_point}): {waits}\n# command: {command}\n"
                   + slurm_jobs.render_script(slurm, f"ofexp-{step.key}") + "\n")
    return "\n".join(out)


def run_slurm_study(cfg: StudyConfig, slurm: SlurmConfig) -> str:
    """Run the study's steps as Slurm jobs, nested under one study run; return its ID."""
    steps = plan_study(cfg)
    uri = cluster_tracking_uri()
    slurm_jobs.check_slurm()
    tcfg = cfg.train
    description = (f"Study of {tcfg.model} on {tcfg.data.name} over seeds {', '.join(map(str, cfg.seeds))}, each "
                   "step a Slurm job, chained by run ID.")
    params = {**study_params(cfg), "backend": "slurm"}
    tags = {TAG_CACHE: param_str(cfg.use_cache)}
    with tracking.stage_run("study", run_name=cfg.run_name, params=params, tags=tags,
                            description=description) as run:
        study_id, experiment_id = run.info.run_id, run.info.experiment_id
        run_ids: dict[str, str] = {}
        reused: set[str] = set()
        with tqdm(total=len(steps), desc="slurm steps", unit="step", file=sys.stderr, dynamic_ncols=True) as bar:
            for wave in waves(steps):
                submitted = []
                try:
                    for step in wave:
                        with stops_held():  # a job submitted is a job recorded, so a stop cancels it
                            found = _submit_or_reuse(step, run_ids, cfg.use_cache, slurm, uri, study_id,
                                                     experiment_id)
                            if isinstance(found, str):
                                run_ids[step.key] = found
                                reused.add(step.key)
                                bar.update()
                            else:
                                submitted.append(found)
                    failures = _wait(submitted, run_ids, bar)
                except BaseException:
                    with stops_held(raise_after=False):  # a second Ctrl-C waits for every job's cancel
                        _cancel(submitted)
                    raise
                if failures:
                    raise SlurmStepError(f"{failures[0]}{_more(failures)}; rerun the same study to finish it: "
                                         "its finished steps are reused")
        log_step_outputs(cfg, steps, run_ids, experiment_id, frozenset(reused))
        return study_id


def _submit_or_reuse(step: Step, run_ids: dict[str, str], use_cache: bool, slurm: SlurmConfig, uri: str,
                     study_id: str, experiment_id: str) -> str | _Submitted:
    """The run ID of a FINISHED run that did this step already, else the step's newly submitted job."""
    params = step.resolved(run_ids)
    digest, found = finished_step(step, params, experiment_id, use_cache)
    if found:
        return found
    run_id = cluster_runs.create_step_run(experiment_id, study_id, step.run_name, step.stage, digest)
    env = {"MLFLOW_RUN_ID": run_id, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id,
           **trust_env()}  # a factory the driver trusts is trusted by the steps that rebuild it
    try:
        job = slurm_jobs.submit(slurm, f"ofexp-{step.key}", step_command(step, params, slurm), env)
    except BaseException as exc:
        cluster_runs.fail_step_run(run_id, f"not submitted: {exc}")
        raise
    cluster_runs.tag_step_run(run_id, {TAG_SLURM_JOB: job.job_id,
                                       TAG_SLURM_LOG: slurm_jobs.job_log(job)})
    return _Submitted(step, run_id, job)


def _wait(pending: list[_Submitted], run_ids: dict[str, str], bar: tqdm) -> list[str]:
    """Wait for every job of the wave, taking each from `pending` as it ends; record each step's
    run ID; return one line per failed step."""
    failures = []
    while pending:
        slurm_jobs.refresh_states()
        for sub in list(pending):
            state = slurm_jobs.job_outcome(sub.job)
            if state is None:
                continue
            pending.remove(sub)
            if state == slurm_jobs.COMPLETED and cluster_runs.step_run_status(sub.run_id) == "FINISHED":
                run_ids[sub.step.key] = sub.run_id
            else:
                reason = f"Slurm job {sub.job.job_id} ended {state} (log: {slurm_jobs.job_log(sub.job)})"
                cluster_runs.fail_step_run(sub.run_id, reason)
                failures.append(f"study step {sub.step.key} (run {sub.run_id}) failed: {reason}")
            bar.update()
        bar.set_postfix_str(f"{len(pending)} queued or running" if pending else "")
        if pending:
            time.sleep(POLL_SECONDS)
    return failures


def _cancel(pending: list[_Submitted]) -> None:
    """The driver was stopped: cancel the wave's jobs that have not ended, and mark their runs KILLED."""
    for sub in pending:
        try:
            sub.job.cancel(check=False)
            cluster_runs.fail_step_run(sub.run_id, f"the study driver was stopped; Slurm job {sub.job.job_id} "
                                       "was cancelled", status="KILLED")
        except Exception as exc:  # noqa: BLE001 -- cancel the others all the same
            print(f"warning: could not cancel Slurm job {sub.job.job_id}: {exc}", file=sys.stderr)


def _more(failures: list[str]) -> str:
    return f" (and {len(failures) - 1} more failed steps)" if len(failures) > 1 else ""
