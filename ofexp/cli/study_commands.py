"""`ofexp study`: the whole multi-seed study as one command; prints the study run's ID last."""
from __future__ import annotations

import click

from ofexp import tracking
from ofexp.cli.commands import _fuse_options, _parse_seeds, _train_config, fusion_options
from ofexp.cli.options import data_options, experiment_option, flag, model_options, pop_flag, recipe_options
from ofexp.cli.remote_options import remote_from_options, remote_options, run_remote
from ofexp.errors import ConfigError
from ofexp.metrics import PREDICTION_METRICS
from ofexp.metrics.context import PRESETS
from ofexp.pipeline.report import study_outcome
from ofexp.pipeline.study import StudyConfig, run_study


@click.command()
@model_options
@data_options
@recipe_options
@fusion_options
@click.option("--seeds", default="1", show_default=True, help="A count (2 = seeds 1,2) or a list (1,2,5).")
@click.option("--measures", default="prediction", show_default=True,
              help="Comma-separated measure names, spaces (input, parameter, prediction) or 'all'.")
@click.option("--accuracy-metric", type=click.Choice(PREDICTION_METRICS), default="accuracy",
              show_default=True, help="Prediction metric that every measure is correlated with (always measured).")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="report", show_default=True,
              help="σ-search budget: the report's (docs/measures.md), or a tiny one for tests and demos (not for results).")
@flag("cache", "Reuse FINISHED runs that did a step already; --no-cache runs every step afresh.", default=True)
@click.option("--jobs", type=click.INT, default=1, show_default=True,
              help="Seeds run at once, each in its own process, against the same tracking store.")
@click.option("--finetune-epochs", type=click.INT, default=0, show_default=True,
              help="Also fine-tune both fusions for N epochs and add the parents' prediction ensemble (0 = off).")
@remote_options
@experiment_option
def study(seeds: str, measures: str, accuracy_metric: str, preset: str, jobs: int, finetune_epochs: int,
          experiment_name: str | None, **kw) -> None:
    """Train, fuse and evaluate per seed, as nested runs of one study run; print its ID.

    Steps that a FINISHED run already did (same stage, params, upstream runs, ofexp
    version and commit) are reused, not redone; --no-cache turns that off. With
    --jobs N, seeds run in N processes, nested under the same study run.
    """
    remote = remote_from_options(kw)  # --backend slurm or kubernetes: the steps run on a cluster
    use_cache = pop_flag(kw, "cache")
    fuse_options = _fuse_options(kw)
    cfg = StudyConfig(train=_train_config(kw), seeds=_parse_seeds(seeds), measures=measures,
                      fuse_options=fuse_options, preset=preset, accuracy_metric=accuracy_metric,
                      use_cache=use_cache, jobs=jobs, finetune_epochs=finetune_epochs)
    if remote is not None and finetune_epochs:
        raise ConfigError("--finetune-epochs runs in-process only; drop --backend, or fine-tune with "
                          "`ofexp train --init-from` and `ofexp ensemble`")
    if remote is not None:
        return run_remote(cfg, remote, experiment_name)
    tracking.configure_tracking(experiment_name)
    study_id = run_study(cfg)
    click.echo(study_outcome(study_id))
    click.echo(study_id)  # the last line of stdout, for scripts
