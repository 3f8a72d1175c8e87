"""`ofexp export` and `ofexp import`: a study moved to a folder, and from a folder into any tracking store."""
from __future__ import annotations

from pathlib import Path

import click

from ofexp.cli.options import STR_OR_EMPTY
from ofexp.errors import ConfigError

_URI_HELP = "The tracking store to {} [default: MLFLOW_TRACKING_URI, else ./mlflow.db]."


def _use_store(uri: str | None) -> None:
    if uri:
        import mlflow

        mlflow.set_tracking_uri(uri)


@click.command(name="export")
@click.argument("study_run_id")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--with-weights", is_flag=True,
              help="Also write tensor files (weights, checkpoints, alignment plans: *.pt) and MLflow logged models.")
@click.option("--tracking-uri", type=STR_OR_EMPTY, default=None, metavar="URI", help=_URI_HELP.format("read"))
def export_command(study_run_id: str, folder: Path, with_weights: bool, tracking_uri: str | None) -> None:
    """Write a study, its steps and their lineage to a new FOLDER (docs/commands.md: export and import)."""
    from ofexp.pipeline.study.transfer import ExportConfig, check_export_folder, export_study

    folder = folder.expanduser()
    check_export_folder(folder)  # before the store is asked anything
    _use_store(tracking_uri)
    summary = export_study(ExportConfig(study_run_id.strip(), folder, with_weights))
    left_out = f", {summary.left_out} tensor files left out (--with-weights writes them)" if summary.left_out else ""
    models = f", {summary.models} logged models" if summary.models else ""
    click.echo(f"exported {summary.runs} runs, {summary.artifacts} artifact files{models}{left_out}", err=True)
    if summary.missing:
        click.echo(f"warning: lineage tags name {len(summary.missing)} run(s) this store no longer has "
                   f"({', '.join(summary.missing[:3])}); their IDs stay as they are", err=True)
    click.echo(str(folder))


@click.command(name="import")
@click.argument("folder", type=click.Path(path_type=Path))
@click.option("--tracking-uri", type=STR_OR_EMPTY, default=None, metavar="URI", help=_URI_HELP.format("write to"))
def import_command(folder: Path, tracking_uri: str | None) -> None:
    """Create the runs of an `ofexp export` FOLDER in the tracking store; print the new study run's ID."""
    from ofexp.pipeline.study.transfer import import_study
    from ofexp.tracking.runs import tracking_uri as current_uri

    folder = folder.expanduser()
    if not folder.exists():
        raise ConfigError(f"{folder} does not exist; pass the folder `ofexp export` wrote")
    _use_store(tracking_uri)
    study_run_id, count = import_study(folder)
    click.echo(f"imported {count} runs from {folder} into {current_uri()}; "
               f"`ofexp report {study_run_id}` shows the study", err=True)
    click.echo(study_run_id)
