"""`ofexp study --backend kubernetes --backend-config JSON [--dry-run]`: the study's steps on a cluster.

`--backend local` (the default) runs the study in this process; any other
backend hands the study to `ofexp.pipeline.remote`, which runs each step as an
MLflow Project run there.
"""
from __future__ import annotations

from typing import Callable

import click

from ofexp.errors import ConfigError
from ofexp.pipeline.remote import (BACKENDS, RemoteConfig, check_backend, dry_run_yaml, load_backend_config,
                                   run_remote_study)
from ofexp.pipeline.study import StudyConfig


def remote_options(f: Callable) -> Callable:
    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default="local", show_default=True,
                     help="Where the steps run: in this process, or each as an MLflow Project run on Kubernetes."),
        click.option("--backend-config", default=None, metavar="JSON",
                     help="MLflow's backend config, a JSON object or file: kube-context, repository-uri, "
                          "kube-job-template-path."),
        click.option("--dry-run", is_flag=True,
                     help="With --backend kubernetes: print every step's Kubernetes Job (YAML), submit nothing."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def remote_from_options(kw: dict) -> RemoteConfig | None:
    """Pop the backend options from a command's kwargs; None means: run the study here."""
    backend, config_text, dry_run = kw.pop("backend"), kw.pop("backend_config"), kw.pop("dry_run")
    if backend == "local":
        if config_text or dry_run:
            raise ConfigError("--backend-config and --dry-run apply to a cluster backend; "
                              "add --backend kubernetes or leave them out")
        return None
    return RemoteConfig(backend=backend, backend_config=load_backend_config(config_text), dry_run=dry_run)


def run_remote(cfg: StudyConfig, remote: RemoteConfig, experiment_name: str | None) -> None:
    """Print the rendered Jobs (--dry-run), or run the study remotely and print its run ID."""
    from ofexp import tracking

    if remote.dry_run:
        click.echo(dry_run_yaml(cfg, remote), nl=False)
        return
    check_backend(remote)  # a missing client or an unreachable store is reported before any run exists
    tracking.configure_tracking(experiment_name)
    click.echo(run_remote_study(cfg, remote))
