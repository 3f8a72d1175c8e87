"""`ofexp study`: the whole multi-seed study as one command; prints the study run's ID last."""
from __future__ import annotations

from dataclasses import replace

import click
from click.core import ParameterSource

from ofexp.cli.options import (experiment_option, flag, parse_seeds, pop_flag, pop_train_config, pop_typed_options,
                               train_options, typed_options)
from ofexp.cli.backend_options import cluster_config_from_options, backend_options, run_on_cluster
from ofexp.errors import ConfigError
from ofexp.pipeline.steps.options import EvaluateOptions, FusionOptions, parse_list, shown_seeds
from ofexp.pipeline.study.report import study_outcome
from ofexp.pipeline.study.run import MAX_UNCONFIRMED_STEPS, EVALUATE_OPTIONS_THE_STUDY_SETS, StudyConfig, planned_step_count, run_study
from ofexp.pipeline.browse import use_experiment


@click.command()
@train_options(exclude=("seed",))  # each parent's seed comes from --seeds
@typed_options(FusionOptions)
@click.option("--seeds", default="1", show_default=True, help="A count (2 = seeds 1,2) or a list (1,2,5).")
@click.option("--widths", default=None, metavar="W1,W2,...",
              help="Run every seed at each of these widths (e.g. 0.25,0.5,1; instead of --width) and add the "
                   "granulated Kendall tau along width to the report.")
@typed_options(EvaluateOptions, exclude=EVALUATE_OPTIONS_THE_STUDY_SETS)
@flag("cache", "Reuse FINISHED runs that did a step already; --no-cache runs every step afresh.", default=True)
@click.option("--jobs", type=click.INT, default=1, show_default=True,
              help="Seeds run at once, each in its own process, against the same tracking store.")
@click.option("--finetune-epochs", type=click.INT, default=0, show_default=True,
              help="Also fine-tune both fusions for N epochs and add the parents' prediction ensemble (0 = off).")
@click.option("--yes", is_flag=True,
              help=f"Start a study of more than {MAX_UNCONFIRMED_STEPS:,} steps (the size is printed first).")
@backend_options
@experiment_option
def study(seeds: str, widths: str | None, jobs: int, finetune_epochs: int, yes: bool, experiment_name: str | None,
          **kw) -> None:
    """Train, fuse and evaluate per seed, as nested runs of one study run; print its ID.

    Steps that a FINISHED run already did (same stage, params, upstream runs, ofexp
    version and commit) are reused, not redone; --no-cache turns that off. With
    --jobs N, seeds run in N processes, nested under the same study run.
    """
    width_list = _parse_widths(widths)
    remote = cluster_config_from_options(kw)  # --backend slurm or kubernetes: the steps run on a cluster
    use_cache = pop_flag(kw, "cache")
    fusion = FusionOptions(**pop_typed_options(FusionOptions, kw))
    evaluation = EvaluateOptions(**pop_typed_options(EvaluateOptions, kw, exclude=EVALUATE_OPTIONS_THE_STUDY_SETS))
    cfg = StudyConfig(train=pop_train_config(kw, exclude=("seed",)), seeds=parse_seeds(seeds), fusion=fusion,
                      evaluation=evaluation, use_cache=use_cache, jobs=jobs, finetune_epochs=finetune_epochs,
                      widths=width_list)
    size = _checked_size(cfg, yes)
    cfg = replace(cfg, seeds=tuple(cfg.seeds))  # a count's seeds are listed once its size is accepted
    if remote is not None:
        study_id = run_on_cluster(cfg, remote, experiment_name, size)
        if study_id is None:  # --dry-run
            return
    else:
        use_experiment(experiment_name)
        click.echo(size, err=True)
        study_id = run_study(cfg)
    click.echo(study_outcome(study_id))
    click.echo(study_id)  # the last line of stdout, for scripts


def _parse_widths(text: str | None) -> tuple[float, ...]:
    """--widths as numbers; refused with --width given too (even --width 1: the two say different things)."""
    if text is None:
        return ()
    if click.get_current_context().get_parameter_source("width") is not ParameterSource.DEFAULT:
        raise ConfigError("--width and --widths both set the width; pass only one (--widths runs each)")
    return parse_list(text.strip(), "--widths", float, "a number", "pass comma-separated widths like 0.25,0.5,1")


def _checked_size(cfg: StudyConfig, yes: bool) -> str:
    """The line that announces the study's size; past MAX_UNCONFIRMED_STEPS steps, a refusal without --yes."""
    steps, seeds = planned_step_count(cfg), len(cfg.seeds)
    size = f"{steps:,} steps ({seeds:,} seed{'s' if seeds > 1 else ''} × {steps // seeds} steps)"
    if steps > MAX_UNCONFIRMED_STEPS and not yes:
        raise ConfigError(f"--seeds {shown_seeds(cfg.seeds)} makes a study of {size}, more than "
                          f"{MAX_UNCONFIRMED_STEPS:,}; add --yes to start it, or pass fewer seeds")
    return f"study: {size}"
