"""A step: one MLflow run that trains, fine-tunes, fuses, ensembles or evaluates."""
