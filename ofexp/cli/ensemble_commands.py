"""`ofexp ensemble`: the prediction ensemble of train or fuse runs, as an evaluable run."""
from __future__ import annotations

import click

from ofexp.cli.options import (STR_OR_EMPTY, allow_unfinished_option, device_option, experiment_option,
                               log_model_option, parse_run_ids, pop_flag, register_option)
from ofexp.cli.output import echo_result
from ofexp.pipeline.browse import use_experiment


@click.command()
@click.option("--parents", required=True, help="Comma-separated train or fuse run IDs, e.g. ID1,ID2.")
@click.option("--run-name", type=STR_OR_EMPTY, default=None, help="MLflow run name [default: 'ensemble of K ARCH DATASET'].")
@device_option("the ensemble is tested")
@allow_unfinished_option("parent runs that are", "the run is")
@log_model_option
@register_option
@experiment_option
def ensemble(parents: str, run_name: str | None, device: str, allow_unfinished: bool,
             register_as: str | None, experiment_name: str | None, **kw) -> None:
    """Log the ensemble of runs (mean of their softmax outputs) as a run; print its ID.

    `ofexp evaluate --model-run ID` measures it in input and prediction space;
    parameter-space measures are skipped with an 'ofexp.warning.<measure>' tag.
    """
    from ofexp.pipeline.steps.ensemble import EnsembleConfig, run_ensemble

    cfg = EnsembleConfig(parents=parse_run_ids(parents), device=device, run_name=run_name, allow_unfinished=allow_unfinished,
                         log_model=pop_flag(kw, "log_model"), register_as=register_as)
    use_experiment(experiment_name)
    run_id = run_ensemble(cfg)
    echo_result(run_id)
    click.echo(run_id)
