"""`ofexp report` and `ofexp compare`: tables rebuilt from the tracking server alone."""
from __future__ import annotations

from pathlib import Path

import click
import pandas as pd

from ofexp.cli.options import OPT_STR
from ofexp.errors import ConfigError, RunLookupError
from ofexp.pipeline.report import build_tables, results_csv, steps_from_tags
from ofexp.tracking import queries

_WIDE = {"display.width": 250, "display.max_columns": None, "display.max_rows": None, "display.max_colwidth": 60}


@click.command()
@click.argument("study_run_id", required=False)
@click.option("--study-run", "study_run_option", type=OPT_STR, default=None, metavar="RUN_ID",
              help="The study run's ID (the same as the argument).")
@click.option("--csv", "csv_path", type=OPT_STR, default=None, metavar="PATH",
              help="Also write results.csv (report format) to PATH, and the summary and correlations "
                   "next to it as PATH-stem.summary.csv and PATH-stem.correlations.csv.")
def report(study_run_id: str | None, study_run_option: str | None, csv_path: str | None) -> None:
    """Rebuild a study's results, summary and correlation tables from the server; print them."""
    if bool(study_run_id) == bool(study_run_option):
        raise ConfigError("report needs one study run ID: `ofexp report STUDY_RUN_ID` (or --study-run ID)")
    study = queries.get_run_data((study_run_id or study_run_option).strip(), stage="study")
    ids = [v for k, v in study.tags.items() if k.startswith("ofexp.step.")]
    if not ids:
        raise RunLookupError(f"study run {study.run_id} has no step index (ofexp.step.* tags): it is unfinished "
                             "or made by an older ofexp; run the study again (finished steps are reused)")
    runs = queries.runs_by_id(ids, [study.experiment_id])
    steps = steps_from_tags(study.tags, study.run_id, runs)
    tables = build_tables(steps, runs, study.params.get("accuracy_metric", "accuracy"))
    per_seed = tables.results[tables.results["Space"] != "correlation_space"]
    with pd.option_context(*[x for item in _WIDE.items() for x in item]):
        click.echo(f"# study {study.run_id} ({study.name}): {len(steps)} steps, "
                   f"{int(steps['reused'].sum())} reused from earlier runs\n")
        click.echo("## results (per seed)")
        wide = per_seed.pivot(index="Model", columns="Metric", values="Value")
        click.echo(wide.reindex(index=per_seed["Model"].unique(), columns=per_seed["Metric"].unique()).to_string())
        click.echo("\n## summary over seeds (mean, std, count)")
        click.echo(tables.summary.to_string())
        click.echo(f"\n## correlation with {study.params.get('accuracy_metric', 'accuracy')} per model kind")
        click.echo(tables.correlations.to_string(index=False, na_rep="nan"))
    if csv_path:
        _write_csvs(Path(csv_path), tables)


def _write_csvs(path: Path, tables) -> None:
    if path.is_dir():
        raise ConfigError(f"--csv {path} is a folder; pass a file path like {path / 'results.csv'}")
    if not path.parent.exists():
        raise ConfigError(f"--csv {path}: folder {path.parent} does not exist; create it or pick another path")
    path.write_text(results_csv(tables.results))
    tables.summary.to_csv(path.with_name(f"{path.stem}.summary.csv"))
    tables.correlations.to_csv(path.with_name(f"{path.stem}.correlations.csv"), index=False, na_rep="nan")
    click.echo(f"wrote {path} and its .summary.csv, .correlations.csv", err=True)


def compare_table(runs: list[queries.RunData]) -> pd.DataFrame:
    """Rows: run name, stage, status, then `param.<key>` and `metric.<key>` (sorted); one column per run."""
    columns = {}
    for run in runs:
        column = {"name": run.name, "stage": run.stage or "", "status": run.status}
        column.update({f"param.{k}": v for k, v in sorted(run.params.items())})
        column.update({f"metric.{k}": v for k, v in sorted(run.metrics.items())})
        columns[run.run_id] = column
    table = pd.DataFrame(columns)
    head = ["name", "stage", "status"]
    rest = sorted(i for i in table.index if i not in head)
    return table.reindex(head + rest)


@click.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--csv", "csv_path", type=OPT_STR, default=None, metavar="PATH", help="Also write the table to PATH.")
@click.option("--differences", is_flag=True, help="Only rows whose values differ between the runs.")
def compare(run_ids: tuple[str, ...], csv_path: str | None, differences: bool) -> None:
    """Print any runs' params and metrics side by side (one column per run)."""
    ids = [part.strip() for arg in run_ids for part in arg.split(",") if part.strip()]
    if not ids:
        raise ConfigError("compare needs at least one run ID; pass IDs separated by spaces or commas")
    table = compare_table(list(queries.runs_by_id(ids).values()))
    if differences:
        table = table[table.astype(str).nunique(axis=1) > 1]
    with pd.option_context(*[x for item in _WIDE.items() for x in item]):
        click.echo(table.fillna("").to_string())
    if csv_path:
        table.to_csv(csv_path)
        click.echo(f"wrote {csv_path}", err=True)
