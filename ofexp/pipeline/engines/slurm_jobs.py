"""Slurm jobs through submitit: the backend config, submission, job states, cancellation, scripts.

Nothing here talks to MLflow. Each study step is one Slurm job that runs one
`python -m ofexp ...` command (`ofexp.cluster_job.run_step_command`), submitted by submitit, the
maintained Python interface to Slurm: ofexp writes no sbatch template of its
own. Why submitit and not the MLflow Projects plugin `mlflow-slurm`: see
docs/cluster.md.
"""
from __future__ import annotations

import json
import re
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
# control characters and line separators: a newline would start a line of its own in the job script
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_NAME = re.compile(r"[A-Za-z0-9_.:+@%-]+")  # a Slurm partition or account name
_MEM = re.compile(r"[0-9]+[KMGTkmgt]?")  # sbatch --mem: a size, in megabytes unless K, M, G or T follows
_NAME_HELP = "a Slurm name (letters, digits, _ . : + @ % -)"
_PATH_HELP = "a path (a non-empty string without control characters)"
_SBATCH = re.compile(r"--[a-z][a-z0-9_-]*(=.*)?", re.S)  # one long sbatch option
_NUMBERS = {"time": (1, 525_600, "minutes per job, at most a year"), "cpus_per_task": (1, 65_534, "CPUs"),
            "gpus": (0, 1024, "GPUs per node")}


@dataclass(frozen=True)
class SlurmConfig:
    """Where and how every step's job runs: `--backend-config FILE` for `--backend slurm`.

    Every value is checked by type and form when the config is made, before anything is
    written or submitted: only `setup` holds shell lines; no other value can add a line to
    a job script (no control characters), and names, sizes and numbers must look like them.
    """

    partition: str | None = None  # one name, or several comma-separated
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
        for name, (low, high, what) in _NUMBERS.items():
            value = getattr(self, name)
            _expect(name, value, f"a whole number from {low} to {high} ({what})",
                    isinstance(value, int) and not isinstance(value, bool) and low <= value <= high)
        _expect("partition", self.partition, f"{_NAME_HELP}, or several comma-separated, or null",
                self.partition is None or _is_names(self.partition, several=True))
        _expect("account", self.account, f"{_NAME_HELP}, or null", self.account is None or _is_names(self.account))
        _expect("mem", self.mem, "a size like \"4G\" (digits, then K, M, G or T; megabytes without), or null",
                self.mem is None or (isinstance(self.mem, str) and _MEM.fullmatch(self.mem) is not None))
        _expect("log_dir", self.log_dir, _PATH_HELP, _is_path(self.log_dir))
        _expect("python", self.python, f"{_PATH_HELP}, or null", self.python is None or _is_path(self.python))
        for name in ("sbatch", "setup"):
            lines = getattr(self, name)
            _expect(name, lines, "a list of strings",
                    isinstance(lines, tuple) and all(isinstance(x, str) for x in lines))
            for line in lines:  # setup's lines are shell by design, but one item is one line
                _expect(name, line, "a list of one-line strings (give each line as its own item)",
                        _is_line(line, tab=True))
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
            if isinstance(values.get(name), list):
                values[name] = tuple(values[name])
        mem = values.get("mem")
        if isinstance(mem, int) and not isinstance(mem, bool) and mem >= 0:
            values["mem"] = str(mem)  # sbatch reads a bare number as megabytes
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


def _is_line(value: object, tab: bool = False) -> bool:
    """A string with no control character (a tab allowed where `tab`): it cannot add a line to a script."""
    return isinstance(value, str) and not _CONTROL.search(value.replace("\t", "") if tab else value)


def _is_names(value: object, several: bool = False) -> bool:
    """A Slurm name, or (`several`) comma-separated names."""
    if not isinstance(value, str):
        return False
    return all(_NAME.fullmatch(part) for part in (value.split(",") if several else [value]))


def _is_path(value: object) -> bool:
    """A path's text: not empty, no control characters (written into the script, quoted)."""
    return _is_line(value) and value.strip() != ""


def _expect(name: str, value: object, allowed: str, ok: bool) -> None:
    """ConfigError naming the key, the value it got (as JSON, cut short) and what is allowed, unless `ok`."""
    if not ok:
        shown = json.dumps(list(value) if isinstance(value, tuple) else value, default=repr)
        shown = shown if len(shown) <= 80 else shown[:77] + "..."
        raise ConfigError(f"--backend-config: {name} must be {allowed}, got {shown}; fix {name} in the JSON")


def sbatch_options(lines: Sequence[str]) -> dict[str, object]:
    """Extra sbatch options ("--qos=normal", "#SBATCH --exclusive") as submitit's additional_parameters."""
    options: dict[str, object] = {}
    for line in lines:
        text = line.strip().removeprefix("#SBATCH").strip()
        if not _SBATCH.fullmatch(text) or not _is_line(text):
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
    executor = _Executor(folder=Path(cfg.log_dir).resolve() / "%j", python=_shell_python(cfg))
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
    return _make_sbatch_string(command=f"{_shell_python(cfg)} -u -m submitit.core._submit {shlex.quote(str(folder))}",
                               folder=folder, **cfg.parameters(job_name))


def _shell_python(cfg: SlurmConfig) -> str:
    """The job's interpreter as a shell word: a path, quoted (the step's argv starts with the same path)."""
    return shlex.quote(cfg.python or sys.executable)
