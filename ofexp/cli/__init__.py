"""The `ofexp` command line: parses input, runs a step, reports errors as one line.

Expected errors (bad options, unknown runs, missing data, diverged training...)
print `error: <what is wrong; how to fix it>` on stderr and exit non-zero,
without a traceback; `ofexp --debug ...` shows the traceback.
"""
from __future__ import annotations

import importlib
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


# Every command, by name: where it lives ("module:attribute") and its one-line help for
# `ofexp --help`. A command's module (and torch, MLflow, pandas...) is imported only when
# that command runs or shows its own --help, so `ofexp --version` and `ofexp --help` start
# in a fraction of a second, and a cluster step imports what its own command needs.
# Adding a command is one line here; tests/cli/test_startup.py checks each help line
# against the command's docstring.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("ofexp.cli.commands:train", "Train one network as an MLflow run; print its run ID."),
    "fuse": ("ofexp.cli.commands:fuse", "Fuse parent train runs by run ID, or PyTorch models by URI; "
             "print '<method> <run_id>' per fuse run."),
    "evaluate": ("ofexp.cli.commands:evaluate", "Measure a train or fuse run's model in a new evaluate run; "
                 "print its run ID."),
    "study": ("ofexp.cli.study_commands:study", "Train, fuse and evaluate per seed, as nested runs of one "
              "study run; print its ID."),
    "ui": ("ofexp.cli.commands:ui", "Start the MLflow UI on the store ofexp uses and print the URL to open."),
    "runs": ("ofexp.cli.commands:runs", "List RUNNING runs of every stage (--stale: the killed ones), with what "
             "picks each up again."),
    "ensemble": ("ofexp.cli.ensemble_commands:ensemble", "Log the ensemble of runs (mean of their softmax "
                 "outputs) as a run; print its ID."),
    "report": ("ofexp.cli.report_commands:report", "Rebuild a study's results, summary and correlation tables "
               "from the server; print them."),
    "compare": ("ofexp.cli.report_commands:compare", "Print any runs' params and metrics side by side (one "
                "column per run)."),
    "export": ("ofexp.cli.transfer_commands:export_command", "Write a study, its steps and their lineage to a "
               "new FOLDER (docs/commands.md: export and import)."),
    "import": ("ofexp.cli.transfer_commands:import_command", "Create the runs of an `ofexp export` FOLDER in the "
               "tracking store; print the new study run's ID."),
}


class LazyGroup(click.Group):
    """A click group whose commands are imported on first use, from `lazy`: name -> (where, help)."""

    def __init__(self, *args, lazy: dict[str, tuple[str, str]], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = lazy

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*self.commands, *self.lazy})

    def get_command(self, ctx: click.Context | None, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in self.lazy:
            module_name, attribute = self.lazy[cmd_name][0].split(":")
            command = getattr(importlib.import_module(module_name), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def resolve_command(self, ctx: click.Context, args: list[str]):
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            refuse_repeated_options(command, rest)
        return name, command, rest

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # The help of a command not imported yet comes from the table, shortened as click shortens
        # a loaded command's: the listing reads the same either way, and imports nothing.
        shown = {name: self.commands.get(name) or click.Command(name, help=self.lazy[name][1])
                 for name in self.list_commands(ctx)}
        shown = {name: command for name, command in shown.items() if not command.hidden}
        if not shown:
            return
        limit = formatter.width - 6 - max(map(len, shown))
        with formatter.section("Commands"):
            formatter.write_dl([(name, command.get_short_help_str(limit)) for name, command in shown.items()])


def refuse_repeated_options(command: click.Command, args: list[str]) -> None:
    """UsageError when an option that takes one value (or a flag pair) is given more than once:
    click would silently keep the last one, e.g. `--method naive --method geometric`."""
    seen: dict[str, list[str]] = {}
    for token in args:
        if token == "--":
            break
        if token.startswith("--"):
            opt = _underscores_as_dashes(token.split("=", 1)[0])
            seen.setdefault(opt, []).append(token)
    for param in command.params:
        if not isinstance(param, click.Option) or param.multiple or param.count:
            continue
        given = [opt for opt in param.opts + param.secondary_opts for _ in seen.get(opt, [])]
        if len(given) > 1:
            both = isinstance(param.type, click.Choice) and "both" in param.type.choices
            names = " and ".join(dict.fromkeys(given))
            raise click.UsageError(f"{names} given {len(given)} times: only the last would count; give "
                                   f"{param.opts[0]} once" + (f" ({param.opts[0]} both runs each)" if both else ""))


@click.group(cls=LazyGroup, lazy=COMMANDS,
             context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100,
                               "token_normalize_func": _underscores_as_dashes})
@click.version_option(__version__, prog_name="ofexp")
@click.option("--debug", is_flag=True, help="Show tracebacks of errors (and MLflow's INFO lines).")
@click.option("--verbose", "-v", is_flag=True,
              help="Show MLflow's INFO lines (database set-up, new experiments) and its known warnings.")
def cli(debug: bool, verbose: bool) -> None:
    """Model-fusion experiments as MLflow runs: train -> fuse -> evaluate."""
    logging.basicConfig(level=logging.INFO if debug else logging.WARNING, stream=sys.stderr)
    # MLflow sets its own logger to INFO: quiet by default, ofexp's own progress is what matters
    logging.getLogger("mlflow").setLevel(logging.INFO if debug or verbose else logging.WARNING)
    # MLflow's SQL store logs each failed commit with its traceback before raising it; ofexp reports
    # the error itself in one line (a full disk names the store), so the traceback only shows with --debug
    store_log = logging.getLogger("mlflow.store.db.utils")
    store_log.filters = [f for f in store_log.filters if not isinstance(f, _NoFailedCommits)]
    if not debug:
        store_log.addFilter(_NoFailedCommits())  # --verbose still shows its INFO lines (database set-up)
    if not (debug or verbose):
        from ofexp.cli.output import quiet_known_warnings

        quiet_known_warnings()


class _NoFailedCommits(logging.Filter):
    """Drops MLflow's SQL store errors (a failed commit and its traceback): ofexp reports the error."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno < logging.ERROR


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
        # obj: a command may end its own process only when it runs as the console script
        cli.main(args=args, prog_name="ofexp", standalone_mode=False, obj={"console_script": argv is None})
    except click.exceptions.Exit as exc:  # --help, --version
        sys.exit(exc.exit_code)
    except click.exceptions.NoArgsIsHelpError as exc:  # a bare `ofexp`: the help, as it reads with --help
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        _fail(exc.format_message(), exc.exit_code or EXIT_USAGE)
    except (click.exceptions.Abort, KeyboardInterrupt) as exc:
        # click turns KeyboardInterrupt, and so Terminated, into Abort
        stopped = exc if isinstance(exc, Terminated) else exc.__context__
        if isinstance(stopped, EOFError):  # click takes any EOFError for Ctrl-D: here it is a file cut short
            if debug:
                raise stopped from None
            _fail(describe_error(stopped), EXIT_ERROR)
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
    from ofexp.pipeline.browse import describe_store_error

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
