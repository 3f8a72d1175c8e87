"""The `ofexp` command line: parses input, runs a step, reports errors as one line.

Expected errors (bad options, unknown runs, missing data, diverged training...)
print `error: <what is wrong; how to fix it>` on stderr and exit non-zero,
without a traceback; `ofexp --debug ...` shows the traceback.
"""
from __future__ import annotations

import logging
import os
import sys
from typing import Callable

import click

from ofexp import __version__
from ofexp.errors import Terminated
from ofexp.signals import exit_after_stop, stop_on_termination_signals

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


def _underscores_as_dashes(token: str) -> str:
    # `mlflow run -P batch_size=32` passes an undeclared parameter as `--batch_size 32`:
    # option names (and choices) read the same with '_' or '-'
    return token.replace("_", "-")


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                               "token_normalize_func": _underscores_as_dashes})
@click.version_option(__version__, prog_name="ofexp")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors (and MLflow's INFO lines).")
@click.option("--verbose", "-v", is_flag=True, help="Show MLflow's INFO lines (database set-up, new experiments).")
def cli(debug: bool, verbose: bool) -> None:
    """Model-fusion experiments as MLflow runs: train -> fuse -> evaluate."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, stream=sys.stderr)
    # MLflow sets its own logger to INFO: quiet by default, ofexp's own progress is what matters
    logging.getLogger("mlflow").setLevel(logging.INFO if debug or verbose else logging.WARNING)


def _register() -> None:
    from ofexp.cli.commands import evaluate, fuse, runs, train, ui
    from ofexp.cli.report_commands import compare, report
    from ofexp.cli.study_commands import study
    from ofexp.cli.ensemble_commands import ensemble
    from ofexp.cli.transfer_commands import export_command, import_command

    for command in (train, fuse, evaluate, study, ui, runs, ensemble, report, compare, export_command, import_command):
        cli.add_command(command)


_register()


def main(argv: list[str] | None = None) -> None:
    """Console entry point: run the CLI and turn errors into one line and an exit code."""
    # stderr is for ofexp's own progress; MLflow's per-download bars would drown it.
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    # MLflow retries a failing request for ~4 min by default (7 tries, backoff 2); ofexp
    # retries for ~2 min (7 tries, backoff 1: 1+2+...+64 s), enough to ride out a server
    # restart mid-run, then says which run it left (README, "Reliability"). Overridable.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "7")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR", "1")
    args = list(sys.argv[1:] if argv is None else argv)
    # Only the console script ends its process after a stop; a caller passing argv gets SystemExit.
    exit_stopped = exit_after_stop if argv is None else sys.exit
    debug = "--debug" in args
    restore_signals = stop_on_termination_signals()
    try:
        cli.main(args=args, prog_name="ofexp", standalone_mode=False)
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns KeyboardInterrupt, and so Terminated, into Abort
        stopped = exc if isinstance(exc, Terminated) else exc.__context__
        if isinstance(stopped, Terminated):
            _fail(f"{stopped}; the runs it had open are marked KILLED", stopped.exit_code, exit=exit_stopped)
        _fail("interrupted", EXIT_INTERRUPTED, exit=exit_stopped)
    except Exception as exc:  # noqa: BLE001 - the one place that reports every error
        if debug:
            raise
        _fail(describe_error(exc), EXIT_ERROR)
    finally:
        restore_signals()


def describe_error(exc: BaseException) -> str:
    """One line for an exception: ofexp's own messages as they are, others prefixed by their type."""
    from ofexp.errors import OfexpError
    from ofexp.pipeline.views import describe_store_error

    text = " ".join(str(exc).split())
    if isinstance(exc, OfexpError):
        return text
    store = describe_store_error(exc)
    if store:
        return store
    return f"unexpected {type(exc).__name__}: {text[:400]} (re-run with --debug for the traceback)"


def _fail(message: str, code: int, exit: Callable[[int], None] = sys.exit) -> None:
    click.echo(f"error: {' '.join(message.split())}", err=True)
    exit(code)
