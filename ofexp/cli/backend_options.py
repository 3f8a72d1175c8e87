"""`ofexp study --backend slurm|kubernetes --backend-config JSON [--dry-run]`: the study's steps on a cluster.

`--backend local` (the default) runs the study in this process; `slurm` hands it
to `ofexp.pipeline.engines.slurm` (each step a Slurm job); `kubernetes` to
`ofexp.pipeline.engines.kubernetes` (each step an MLflow Project run there).
"""
from __future__ import annotations

from typing import Callable

import click

from ofexp.errors import ConfigError
from ofexp.pipeline.engines.kubernetes import (BACKENDS, RemoteConfig, check_backend, dry_run_yaml, load_backend_config,
                                   run_remote_study)
from ofexp.pipeline.engines.slurm_jobs import SlurmConfig
from ofexp.pipeline.study.run import StudyConfig


def backend_options(f: Callable) -> Callable:
    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
                     help="Where the steps run: in this process, each as a Slurm job, or each as an MLflow "
                          "Project run on Kubernetes."),
        click.option("--backend-config", default=None, metavar="JSON",
                     help="A JSON object or file. slurm: partition, account, time, cpus_per_task, mem, gpus, "
                          "sbatch, setup, log_dir, python; kubernetes (MLflow's keys): kube-context, "
                          "repository-uri, kube-job-template-path."),
        click.option("--dry-run", is_flag=True,
                     help="With a cluster backend: print every step's job (sbatch script or Kubernetes Job), "
                          "submit nothing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def cluster_config_from_options(kw: dict) -> RemoteConfig | SlurmConfig | None:
    """Pop the backend options from a command's kwargs; None means: run the study here."""
    backend, config_text, dry_run = kw.pop("backend"), kw.pop("backend_config"), kw.pop("dry_run")
    if backend == "local":
        if config_text or dry_run:
            raise ConfigError("--backend-config and --dry-run apply to a cluster backend; "
                              "add --backend slurm or kubernetes, or leave them out")
        return None
    if backend == "slurm":
        return SlurmConfig.from_mapping(load_backend_config(config_text), dry_run=dry_run)
    return RemoteConfig(backend=backend, backend_config=load_backend_config(config_text), dry_run=dry_run)


def run_on_cluster(cfg: StudyConfig, remote: RemoteConfig | SlurmConfig, experiment_name: str | None,
               size: str = "") -> str | None:
    """Print the rendered jobs and return None (--dry-run), or run the study on the cluster and return its ID.
    `size`, the line announcing the study's size, goes to stderr once the checks have passed."""
    from ofexp.pipeline.engines.slurm import cluster_tracking_uri, dry_run_scripts, run_slurm_study
    from ofexp.pipeline.browse import use_experiment

    slurm = isinstance(remote, SlurmConfig)
    if remote.dry_run:
        text = (dry_run_scripts if slurm else dry_run_yaml)(cfg, remote)
        if size:
            click.echo(size, err=True)
        click.echo(text, nl=False)
        return None
    # a missing client or an unreachable store is reported before any run exists
    if slurm:
        cluster_tracking_uri()
    else:
        check_backend(remote)
    use_experiment(experiment_name)
    if size:
        click.echo(size, err=True)
    return (run_slurm_study if slurm else run_remote_study)(cfg, remote)
