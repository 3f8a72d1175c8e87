"""What commands show besides run IDs: their result on stderr, and no noise from MLflow.

stdout carries only run IDs, the last line last, so that scripts can take them; everything
meant for a person goes to stderr.
"""
from __future__ import annotations

import warnings

import click

# Warnings MLflow raises on every run of ofexp's that tell a user nothing they can act on;
# shown again with --verbose or --debug. Each is a message prefix (a regular expression).
KNOWN_MLFLOW_WARNINGS = (
    # logging a data set read from a local folder: two of MLflow's source classes claim it
    r"The specified dataset source can be interpreted in multiple ways",
)


def quiet_known_warnings() -> None:
    """Silence MLflow's known warnings (KNOWN_MLFLOW_WARNINGS) for this process."""
    for message in KNOWN_MLFLOW_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def echo_result(run_id: str) -> None:
    """The run's result in one line on stderr (pipeline.results.result_line)."""
    from ofexp.pipeline.steps.results import result_line

    click.echo(result_line(run_id), err=True)


__all__ = ["KNOWN_MLFLOW_WARNINGS", "echo_result", "quiet_known_warnings"]
