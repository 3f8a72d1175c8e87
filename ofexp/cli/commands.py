"""The ofexp commands: parse options into step configs and print run IDs.

Progress and logs go to stderr; stdout carries only run IDs, last line last.
"""
from __future__ import annotations

import os
import sys
from dataclasses import replace

import click

from ofexp.cli.options import (STR_OR_EMPTY, allow_unfinished_option, device_option, experiment_option,
                               log_model_option, parse_run_ids, pop_flag, pop_train_config, pop_typed_options,
                               register_option, train_options, typed_options)
from ofexp.cli.model_input_options import model_input_options, pop_model_input
from ofexp.cli.output import echo_result
from ofexp.errors import ConfigError
from ofexp.pipeline.steps.evaluate import EvalConfig, run_evaluate
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse
from ofexp.pipeline.steps.train import TrainConfig, run_train
from ofexp.pipeline.steps.options import EvaluateOptions, FusionOptions
from ofexp.pipeline.browse import (STAGES, check_ui_port, close_stale_runs, running_runs_table, serve_ui,
                                  ui_address, use_experiment)

@click.command()
@train_options()
@click.option("--run-name", type=STR_OR_EMPTY, default=None, help="MLflow run name [default: 'train MODEL DATASET seedS'].")
@experiment_option
@register_option
@click.option("--resume", "resume_run", type=STR_OR_EMPTY, default=None, metavar="RUN_ID",
              help="Continue this killed or failed train run, in the same MLflow run, from its last "
                   "checkpoint; its settings come from the run (only --epochs may extend it).")
@click.option("--init-from", "init_from", type=STR_OR_EMPTY, default=None, metavar="RUN_ID",
              help="Fine-tune: start from this train or fuse run's weights; spec and data come from the run. "
                   "Recipe 'finetune': --recipe's with 3 epochs, a tenth of its lr, no warm-up.")
def train(**kw) -> None:
    """Train one network as an MLflow run; print its run ID."""
    resume_run, init_from = kw.pop("resume_run"), kw.pop("init_from")
    if resume_run and init_from:
        raise ConfigError("--resume and --init-from exclude each other; resume a run, or start a fine-tuning run")
    if resume_run:
        _echo_run(_resume_train(resume_run.strip(), kw))
        return
    if init_from:
        _echo_run(_finetune_train(init_from.strip(), kw))
        return
    experiment_id = use_experiment(kw.pop("experiment_name"))
    run_name, register_as = kw.pop("run_name"), kw.pop("register_as")
    cfg = replace(pop_train_config(kw), run_name=run_name, register_as=register_as)
    _echo_stale_notice(cfg, experiment_id)
    _echo_run(run_train(cfg))


def _echo_run(run_id: str) -> None:
    """The run's result on stderr, then its ID as the last line of stdout."""
    echo_result(run_id)
    click.echo(run_id)


@click.command()
@click.option("--parents", required=True,
              help="Comma-separated train run IDs (ID1,ID2), or MLflow model URIs of any PyTorch classifiers: "
                   "runs:/<run ID>/<path>, models:/<name>/<version>, models:/<name>@<alias>, models:/<model ID>.")
@model_input_options
@typed_options(FusionOptions)
@device_option("the fused network is tested (the fusion itself runs on the CPU)")
@allow_unfinished_option("parent runs that are", "the fuse runs are")
@log_model_option
@register_option
@experiment_option
def fuse(parents: str, device: str, allow_unfinished: bool, experiment_name: str | None, register_as: str | None,
         **kw) -> None:
    """Fuse parent train runs by run ID, or PyTorch models by URI; print '<method> <run_id>' per fuse run."""
    cfg = FuseConfig(parents=parse_run_ids(parents), device=device, allow_unfinished=allow_unfinished,
                     register_as=register_as, log_model=pop_flag(kw, "log_model"), model_input=pop_model_input(kw),
                     **pop_typed_options(FusionOptions, kw))
    use_experiment(experiment_name)
    made = run_fuse(cfg)
    for run_id in made.values():
        echo_result(run_id)
    for method, run_id in made.items():
        click.echo(f"{method} {run_id}")


@click.command()
@click.option("--model-run", required=True,
              help="ID of the train, fuse or ensemble run to measure, or an MLflow model URI of any PyTorch "
                   "classifier (runs:/…, models:/…; name its input with --dataset and the options after it).")
@model_input_options
@typed_options(EvaluateOptions)
@click.option("--label", type=STR_OR_EMPTY, default=None, help="Model name in results.csv [default: the run's name].")
@device_option("the measures run")
@allow_unfinished_option("a model run that is", "the evaluate run is")
@experiment_option
def evaluate(model_run: str, label: str | None, device: str, allow_unfinished: bool, experiment_name: str | None,
             **kw) -> None:
    """Measure a train or fuse run's model in a new evaluate run; print its run ID.

    Measures that fail or whose σ search does not converge get an
    'ofexp.warning.<measure>' tag; the others are still computed.
    """
    cfg = EvalConfig(model_run=model_run.strip(), device=device, label=label, allow_unfinished=allow_unfinished,
                     model_input=pop_model_input(kw), **pop_typed_options(EvaluateOptions, kw))
    use_experiment(experiment_name)
    _echo_run(run_evaluate(cfg))


# `ofexp study` lives in ofexp/cli/study_commands.py.


@click.command()
@click.option("--port", type=click.IntRange(1, 65535), default=5000, show_default=True)
@click.pass_context
def ui(ctx: click.Context, port: int) -> None:
    """Start the MLflow UI on the store ofexp uses and print the URL to open.

    The URL is printed once the UI answers; Ctrl-C stops it. It opens in model-training
    mode, with accuracy, loss and the ratio to the parents as columns of the runs table.
    `ofexp --verbose ui` shows the server's own log lines.
    """
    address = ui_address(port)
    if address.on_server:
        click.echo(f"ofexp logs to a tracking server; open {address.page}")
        return
    check_ui_port(port)
    click.echo(f"starting the MLflow UI for {address.store} on port {port} ...", err=True)
    verbose = any(ctx.find_root().params.get(flag) for flag in ("verbose", "debug"))
    try:
        serve_ui(address, port, verbose, on_ready=lambda: click.echo(
            f"MLflow UI for {address.store}: open {address.page}  (Ctrl-C stops it)", err=True))
    except KeyboardInterrupt as stop:  # Ctrl-C, or ofexp's Terminated for SIGTERM and SIGHUP
        click.echo("MLflow UI stopped", err=True)
        code = getattr(stop, "exit_code", 130)
        if (ctx.find_root().obj or {}).get("console_script"):
            # The server has ended and nothing else is open: skip the interpreter's teardown of
            # torch and MLflow, which took 4-6 s on 2 busy cores, so the command ends within 2 s.
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
        sys.exit(code)


def _echo_stale_notice(cfg: TrainConfig, experiment_id: str) -> None:
    from ofexp.pipeline.steps.train import stale_notice

    notice = stale_notice(cfg, experiment_id)
    if notice:
        click.echo(notice, err=True)


def _given_options(kw: dict) -> dict:
    """The options the user actually gave (on the command line or by environment), by name."""
    from click.core import ParameterSource

    ctx = click.get_current_context()
    given = {}
    for name, value in kw.items():
        if ctx.get_parameter_source(name) in (ParameterSource.COMMANDLINE, ParameterSource.ENVIRONMENT):
            given[name.removesuffix("_value")] = value
    return given


def _finetune_train(run_id: str, kw: dict) -> str:
    """`train --init-from`: a fine-tuning run; the given spec/data options are checked against the source."""
    from ofexp.pipeline.steps.finetune import finetune_config_from_options, run_finetune

    given = _given_options(kw)
    cfg = finetune_config_from_options(run_id, given)
    use_experiment(given.get("experiment_name"))
    return run_finetune(cfg)


def _resume_train(run_id: str, kw: dict) -> str:
    """`train --resume`: pass on only the options the user actually gave, to be checked against the run."""
    from ofexp.pipeline.steps.train import resume_train

    given = _given_options(kw)
    experiment_name = given.pop("experiment_name", None)
    log_model = given.pop("log_model", None)
    return resume_train(run_id, given, experiment_name=experiment_name, log_model=log_model)


@click.command()
@click.option("--stale", is_flag=True, help="Only killed runs: quiet for --older-than seconds, and not alive on this host.")
@click.option("--older-than", type=click.FLOAT, default=600.0, show_default=True,
              help="With --stale: seconds since the run's last epoch (or its start, for other stages).")
@click.option("--stage", type=click.Choice(STAGES), default=None, help="Only runs of this stage [default: all].")
@click.option("--close", is_flag=True, help="With --stale: end the listed runs as KILLED (train runs can still be resumed).")
@experiment_option
def runs(stale: bool, older_than: float, stage: str | None, close: bool, experiment_name: str | None) -> None:
    """List RUNNING runs of every stage (--stale: the killed ones), with what picks each up again."""
    import pandas as pd

    if older_than < 0:
        raise ConfigError(f"--older-than must be ≥ 0 seconds, got {older_than}")
    if close and not stale:
        raise ConfigError("--close ends only stale runs; add --stale (and --older-than) to choose them")
    found = running_runs_table(experiment_name, stage, stale, older_than)
    what = f"{'stale ' if stale else ''}RUNNING {stage + ' ' if stage else ''}runs"
    if found.empty:
        click.echo(f"no {what}", err=True)
        return
    with pd.option_context("display.width", 250, "display.max_colwidth", 100):
        click.echo(found.to_string(index=False))
    if close:
        close_stale_runs(list(found["run_id"]), "closed by `ofexp runs --stale --close`: its process was gone")
        click.echo(f"closed {len(found)} {what} as KILLED", err=True)
