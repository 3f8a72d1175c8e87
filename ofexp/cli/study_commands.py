"""`ofexp study`: the whole multi-seed study as one command; prints the study run's ID last."""
from __future__ import annotations

import click

from ofexp.cli.commands import _parse_seeds, _train_config
from ofexp.cli.options import (data_options, experiment_option, flag, model_options, pop_flag, pop_typed_options,
                               recipe_options, typed_options)
from ofexp.cli.remote_options import remote_from_options, remote_options, run_remote
from ofexp.errors import ConfigError
from ofexp.pipeline.options import EvaluateOptions, FusionOptions
from ofexp.pipeline.report import study_outcome
from ofexp.pipeline.study import STUDY_FIXED, StudyConfig, run_study
from ofexp.pipeline.views import use_experiment


@click.command()
@model_options
@data_options
@recipe_options
@typed_options(FusionOptions)
@click.option("--seeds", default="1", show_default=True, help="A count (2 = seeds 1,2) or a list (1,2,5).")
@typed_options(EvaluateOptions, exclude=STUDY_FIXED)
@flag("cache", "Reuse FINISHED runs that did a step already; --no-cache runs every step afresh.", default=True)
@click.option("--jobs", type=click.INT, default=1, show_default=True,
              help="Seeds run at once, each in its own process, against the same tracking store.")
@click.option("--finetune-epochs", type=click.INT, default=0, show_default=True,
              help="Also fine-tune both fusions for N epochs and add the parents' prediction ensemble (0 = off).")
@remote_options
@experiment_option
def study(seeds: str, jobs: int, finetune_epochs: int, experiment_name: str | None, **kw) -> None:
    """Train, fuse and evaluate per seed, as nested runs of one study run; print its ID.

    Steps that a FINISHED run already did (same stage, params, upstream runs, ofexp
    version and commit) are reused, not redone; --no-cache turns that off. With
    --jobs N, seeds run in N processes, nested under the same study run.
    """
    remote = remote_from_options(kw)  # --backend slurm or kubernetes: the steps run on a cluster
    use_cache = pop_flag(kw, "cache")
    fusion = FusionOptions(**pop_typed_options(FusionOptions, kw))
    evaluation = EvaluateOptions(**pop_typed_options(EvaluateOptions, kw, exclude=STUDY_FIXED))
    cfg = StudyConfig(train=_train_config(kw), seeds=_parse_seeds(seeds), fusion=fusion, evaluation=evaluation,
                      use_cache=use_cache, jobs=jobs, finetune_epochs=finetune_epochs)
    if remote is not None and finetune_epochs:
        raise ConfigError("--finetune-epochs runs in-process only; drop --backend, or fine-tune with "
                          "`ofexp train --init-from` and `ofexp ensemble`")
    if remote is not None:
        study_id = run_remote(cfg, remote, experiment_name)
        if study_id is None:  # --dry-run
            return
    else:
        use_experiment(experiment_name)
        study_id = run_study(cfg)
    click.echo(study_outcome(study_id))
    click.echo(study_id)  # the last line of stdout, for scripts
