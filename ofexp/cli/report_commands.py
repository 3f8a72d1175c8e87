"""`ofexp report` and `ofexp compare`: tables rebuilt from the tracking server alone."""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import click
import pandas as pd

from ofexp.cli.options import STR_OR_EMPTY, parse_run_ids
from ofexp.errors import ConfigError
from ofexp.pipeline.study.report import (GAP, GAP_NOTE, PREDICTION_FILE, RESULTS_FILE, correlation_legend, correlation_view,
                                   report_files, summarise, with_gap_percent)
from ofexp.pipeline.browse import compare_table, study_report
from ofexp.pipeline.study.widths import granulated_legend, granulated_view

_WIDE = {"display.width": 250, "display.max_columns": None, "display.max_rows": None, "display.max_colwidth": 60}


@click.command()
@click.argument("study_run_id", required=False)
@click.option("--study-run", "study_run_option", type=STR_OR_EMPTY, default=None, metavar="RUN_ID",
              help="The study run's ID (the same as the argument).")
@click.option("--csv", "csv_path", type=STR_OR_EMPTY, default=None, metavar="PATH",
              help="Also write results.csv (the original study's format) to PATH, and the other prediction "
                   "values, the summary and the correlations next to it as PATH-stem.prediction.csv, "
                   "PATH-stem.summary.csv and PATH-stem.correlations.csv (and, for a --widths study, "
                   "PATH-stem.granulated.csv).")
@click.option("--force", is_flag=True, help="Let --csv overwrite files that exist.")
def report(study_run_id: str | None, study_run_option: str | None, csv_path: str | None, force: bool) -> None:
    """Rebuild a study's results, summary and correlation tables from the server; print them."""
    if bool(study_run_id) == bool(study_run_option):
        raise ConfigError("report needs one study run ID: `ofexp report STUDY_RUN_ID` (or --study-run ID)")
    csv_files = _report_csv_paths(Path(csv_path).expanduser()) if csv_path else []
    check_csv_targets(csv_files, force)  # before the server is asked anything
    study = study_report((study_run_id or study_run_option).strip())
    steps, tables = study.steps, study.tables
    per_seed = with_gap_percent(tables.results[tables.results["Space"] != "correlation_space"])
    shows_gap = GAP in set(per_seed["Metric"]) | {study.accuracy_metric}
    skipped, correlations = correlation_view(tables.correlations)
    with pd.option_context(*[x for item in _WIDE.items() for x in item]):
        click.echo(f"# study {study.run_id} ({study.name}): {len(steps)} steps, "
                   f"{int(steps['reused'].sum())} reused from earlier runs\n")
        click.echo("## results (per seed)" + (f"\n({GAP_NOTE})" if shows_gap else ""))
        wide = per_seed.pivot(index="Model", columns="Metric", values="Value")
        click.echo(wide.reindex(index=per_seed["Model"].unique(), columns=per_seed["Metric"].unique()).to_string())
        click.echo("\n## summary over seeds (mean, std, count)")
        click.echo(summarise(per_seed).to_string())
        click.echo(f"\n## correlation with {study.accuracy_metric} across seeds, per model kind and pooled over "
                   "all models (model_kind 'pooled')")
        click.echo("\n".join(correlation_legend(study.accuracy_metric) + skipped))
        if len(correlations):
            click.echo(correlations.to_string(index=False))
        if tables.granulated is not None:
            _print_granulated(tables.granulated, study.accuracy_metric)
    if csv_files:
        files = report_files(tables.results, study.accuracy_metric)
        texts = [files[RESULTS_FILE], files[PREDICTION_FILE], tables.summary.to_csv(),
                 tables.correlations.to_csv(index=False, na_rep="nan")]
        if tables.granulated is not None:  # a width study: PATH-stem.granulated.csv too
            csv_files.append(csv_files[0].with_name(f"{csv_files[0].stem}.granulated.csv"))
            texts.append(tables.granulated.to_csv(index=False, na_rep="nan"))
        write_csv_files(dict(zip(csv_files, texts)), force)
        extra = ", .granulated.csv" if tables.granulated is not None else ""
        click.echo(f"wrote {csv_files[0]} and its .prediction.csv, .summary.csv, .correlations.csv{extra}", err=True)


def _print_granulated(table: pd.DataFrame, accuracy_metric: str) -> None:
    """The granulated Kendall tau section: the rows with numbers that mean something, then why others are not."""
    hidden, view = granulated_view(table)
    click.echo(f"\n## granulated Kendall tau along width (Jiang et al. 2020), with {accuracy_metric}")
    click.echo("\n".join(granulated_legend(accuracy_metric)))
    if len(view):
        click.echo(view.to_string(index=False))
    if hidden:
        click.echo("not printed (granulated_kendall.csv keeps them):\n" + "\n".join(f"  {line}" for line in hidden))


def _report_csv_paths(path: Path) -> list[Path]:
    """What `report --csv PATH` writes: PATH, then PATH-stem.{prediction,summary,correlations}.csv."""
    return [path, *(path.with_name(f"{path.stem}.{part}.csv") for part in ("prediction", "summary", "correlations"))]


def check_csv_targets(paths: list[Path], force: bool) -> None:
    """Refuse --csv files that cannot be written, or that exist (unless `force`); paths[0] is --csv's."""
    if not paths:
        return
    path = paths[0]
    if path.is_dir():
        raise ConfigError(f"--csv {path} is a folder; pass a file path like {path / 'results.csv'}")
    if not path.parent.exists():
        raise ConfigError(f"--csv {path}: folder {path.parent} does not exist; create it or pick another path")
    if not path.parent.is_dir():
        raise ConfigError(f"--csv {path}: {path.parent} is a file, not a folder; pick another path")
    for other in paths[1:]:
        if other.is_dir():
            raise ConfigError(f"--csv {path} would write {other}, which is a folder; pick another path")
    existing = [str(p) for p in paths if os.path.lexists(p)]
    if existing and not force:
        raise ConfigError(f"--csv {path}: {', '.join(existing)} already exist{'s' if len(existing) == 1 else ''}; "
                          "add --force to overwrite, or pick another path")


def write_csv_files(files: dict[Path, str], force: bool) -> None:
    """Write each text to a temporary file in its folder, then move them all into place with
    os.replace: an interrupted or failed write leaves the old files as they were, never half a file."""
    check_csv_targets(list(files), force)  # again: a file may have appeared while the tables were built
    umask = os.umask(0)
    os.umask(umask)
    temporary: list[str] = []
    path = next(iter(files))
    try:
        for path, text in files.items():
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            temporary.append(name)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as file:
                file.write(text)
            os.chmod(name, 0o666 & ~umask)  # mkstemp's 0600 -> what a plain new file gets
        for name, path in zip(temporary, files):
            os.replace(name, path)
    except OSError as exc:
        raise ConfigError(f"--csv {next(iter(files))}: cannot write {path} ({exc.strerror or exc}); "
                          "pick a folder you can write to") from None
    finally:
        for name in temporary:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name)


@click.command()
@click.argument("run_ids", nargs=-1, required=True)
@click.option("--csv", "csv_path", type=STR_OR_EMPTY, default=None, metavar="PATH", help="Also write the table to PATH.")
@click.option("--force", is_flag=True, help="Let --csv overwrite a file that exists.")
@click.option("--differences", is_flag=True, help="Only rows whose values differ between the runs.")
def compare(run_ids: tuple[str, ...], csv_path: str | None, force: bool, differences: bool) -> None:
    """Print any runs' params and metrics side by side (one column per run)."""
    ids = parse_run_ids(run_ids)
    if not ids:
        raise ConfigError("compare needs at least one run ID; pass IDs separated by spaces or commas")
    csv_file = Path(csv_path).expanduser() if csv_path else None
    check_csv_targets([csv_file] if csv_file else [], force)  # before the server is asked anything
    table = compare_table(ids)
    if differences:
        table = table[table.astype(str).nunique(axis=1) > 1]
    with pd.option_context(*[x for item in _WIDE.items() for x in item]):
        click.echo(table.fillna("").to_string())
    if csv_file:
        write_csv_files({csv_file: table.to_csv()}, force)
        click.echo(f"wrote {csv_file}", err=True)
