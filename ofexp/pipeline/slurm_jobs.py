"""Slurm jobs through submitit: the backend config, submission, job states, cancellation, scripts.

Nothing here talks to MLflow. Each study step is one Slurm job that runs one
`python -m ofexp ...` command (`ofexp.cluster_job.run_step_command`), submitted by submitit, the
maintained Python interface to Slurm: ofexp writes no sbatch template of its
own. Why submitit and not the MLflow Projects plugin `mlflow-slurm`: see
docs/cluster.md.
"""
from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field, fields
from functools import lru_cache
from pathlib import Path
from typing import Mapping, Sequence

import submitit
from submitit.slurm.slurm import SlurmInfoWatcher, SlurmJob, _make_sbatch_string

from ofexp.cluster_job import run_step_command
from ofexp.errors import ConfigError

COMPLETED = "COMPLETED"
# Slurm's states of a job that has not ended (or that Slurm has not recorded as ended yet)
_GOING = {"READY", "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "RESIZING",
          "PREEMPTED", "UNKNOWN"}
_KEYS_HELP = ("partition, account, time (minutes), cpus_per_task, mem (e.g. \"4G\"), gpus, "
              "sbatch (extra sbatch options), setup (shell lines each job runs first), log_dir, python")


@dataclass(frozen=True)
class SlurmConfig:
    """Where and how every step's job runs: `--backend-config FILE` for `--backend slurm`."""

    partition: str | None = None
    account: str | None = None
    time: int = 60  # minutes, per job
    cpus_per_task: int = 1
    mem: str | None = None  # sbatch --mem, e.g. "4G"
    gpus: int = 0  # --gres=gpu:N
    sbatch: tuple[str, ...] = ()  # extra sbatch options, e.g. ("--qos=normal", "--constraint=a100")
    setup: tuple[str, ...] = ()  # shell lines before the step, e.g. "source /shared/ofexp/.venv/bin/activate"
    log_dir: str = "slurm-logs"  # on a file system the nodes share: submitit's pickles and the job logs
    python: str | None = None  # the interpreter the job runs; default: this one (sys.executable)
    dry_run: bool = field(default=False, compare=False)

    def __post_init__(self) -> None:
        for name in ("time", "cpus_per_task"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"--backend-config: {name} must be a whole number of at least 1, got {value!r}")
        if not isinstance(self.gpus, int) or isinstance(self.gpus, bool) or self.gpus < 0:
            raise ConfigError(f"--backend-config: gpus must be a whole number of at least 0, got {self.gpus!r}")
        for name in ("sbatch", "setup"):
            value = getattr(self, name)
            if not all(isinstance(line, str) for line in value):
                raise ConfigError(f"--backend-config: {name} must be a list of strings, got {list(value)!r}")
        sbatch_options(self.sbatch)  # refuse malformed lines now, not at the first submission

    @classmethod
    def from_mapping(cls, config: Mapping[str, object], dry_run: bool = False) -> SlurmConfig:
        """The config from --backend-config's JSON object, refusing unknown keys by name."""
        known = {f.name for f in fields(cls)} - {"dry_run"}
        unknown = sorted(set(config) - known)
        if unknown:
            raise ConfigError(f"--backend-config: unknown key {unknown[0]!r} for --backend slurm; use {_KEYS_HELP}")
        values = dict(config)
        for name in ("sbatch", "setup"):
            if isinstance(values.get(name), str):
                values[name] = [values[name]]
            if name in values:
                values[name] = tuple(values[name])
        return cls(**values, dry_run=dry_run)

    def parameters(self, job_name: str) -> dict[str, object]:
        """submitit's SlurmExecutor parameters for one step's job."""
        params: dict[str, object] = {"job_name": job_name, "time": self.time, "cpus_per_task": self.cpus_per_task,
                                     "stderr_to_stdout": True, "setup": list(self.setup),
                                     "additional_parameters": sbatch_options(self.sbatch)}
        for name in ("partition", "account", "mem"):
            if getattr(self, name):
                params[name] = getattr(self, name)
        if self.gpus:
            params["gres"] = f"gpu:{self.gpus}"
        return params


def sbatch_options(lines: Sequence[str]) -> dict[str, object]:
    """Extra sbatch options ("--qos=normal", "#SBATCH --exclusive") as submitit's additional_parameters."""
    options: dict[str, object] = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip()
        if not text.startswith("--") or " " in text.split("=", 1)[0]:
            raise ConfigError(f"--backend-config: sbatch line {line!r} is not a long sbatch option; "
                              "write it as \"--name=value\" or \"--flag\"")
        name, _, value = text[2:].partition("=")
        options[name.replace("-", "_")] = value if value else True
    return options


class _CompletionLogWatcher(SlurmInfoWatcher):
    """submitit reads job states with `sacct`. A cluster that keeps no accounting database
    refuses that ("accounting storage is disabled") but answers `sacct -c` from its job-completion
    log, in the same format: ended jobs appear there, running ones do not (so read as still going)."""

    def _make_command(self):
        command = super()._make_command()
        if command and not accounting_enabled():
            command.insert(1, "-c")
        return command


class _Job(SlurmJob):
    watcher = _CompletionLogWatcher(delay_s=20)


class _Executor(submitit.SlurmExecutor):
    job_class = _Job


@lru_cache(maxsize=1)
def accounting_enabled() -> bool:
    """Whether this cluster keeps job accounting (`sacct` works), from `scontrol show config`."""
    try:
        out = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return True
    return "accounting_storage/none" not in out


def check_slurm() -> None:
    """ConfigError unless this machine can submit jobs (sbatch on PATH, the controller answers)."""
    if shutil.which("sbatch") is None:
        raise ConfigError("--backend slurm needs Slurm's sbatch on PATH; run the study from a login node of the "
                          "cluster (or use --dry-run to only print the job scripts)")
    try:
        ping = subprocess.run(["scontrol", "ping"], capture_output=True, text=True, timeout=30)
    except subprocess.TimeoutExpired:
        ping = None
    if ping is None or "UP" not in ping.stdout:
        raise ConfigError("the Slurm controller does not answer (`scontrol ping`); start slurmctld or check "
                          "slurm.conf on this machine")


def submit(cfg: SlurmConfig, job_name: str, argv: Sequence[str], env: Mapping[str, str]) -> SlurmJob:
    """Submit one step's command as a Slurm job; returns submitit's job (job_id, paths, state, cancel)."""
    executor = _Executor(folder=Path(cfg.log_dir).resolve() / "%j", python=cfg.python)
    executor.update_parameters(**cfg.parameters(job_name))
    try:
        return executor.submit(run_step_command, list(argv), dict(env))
    except Exception as exc:  # noqa: BLE001 -- submitit raises bare errors for sbatch's refusals
        text = " ".join(str(exc).split())[:400]
        raise ConfigError(f"sbatch refused the job {job_name}: {text}; check --backend-config "
                          "(partition, account, time, mem, gpus) against the cluster") from None


def refresh_states() -> None:
    """Ask Slurm once for the state of every job not known to have ended (one sacct call)."""
    _Job.watcher.update()


def job_outcome(job: SlurmJob) -> str | None:
    """None while the job goes on; else COMPLETED (its step's command succeeded) or how it ended
    (FAILED, CANCELLED, TIMEOUT, OUT_OF_MEMORY, ...). Reads the states `refresh_states` fetched.

    A job's result file says at once that its command succeeded. A failed command also
    leaves one, but a job cancelled or out of time may too (the step exits on SIGTERM), so
    a failure waits for Slurm's own word on how the job ended.
    """
    succeeded = None
    if job.paths.result_pickle.exists():
        try:
            succeeded = job.exception() is None
        except submitit.core.utils.UncompletedJobError:
            pass
    if succeeded:
        return COMPLETED
    state = (job.watcher.get_state(job.job_id, mode="cache") or "UNKNOWN").split()[0].upper()
    if state in _GOING:
        return None
    return "FAILED" if state == COMPLETED else state


def job_log(job: SlurmJob) -> str:
    return str(job.paths.stdout).replace("%j", str(job.job_id))


def render_script(cfg: SlurmConfig, job_name: str) -> str:
    """The sbatch script submitit writes for one step's job (its own renderer; `%j` is the job ID)."""
    folder = Path(cfg.log_dir).resolve() / "%j"
    python = cfg.python or shlex.quote(sys.executable)
    return _make_sbatch_string(command=f"{python} -u -m submitit.core._submit {shlex.quote(str(folder))}",
                               folder=folder, **cfg.parameters(job_name))
