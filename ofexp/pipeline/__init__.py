"""Steps that compose data, models, fusion and metrics into tracked MLflow runs.

`steps/` (train, fuse, evaluate...), `study/` (the study, its plan and its report) and
`engines/` (Slurm, Kubernetes). Import what you use from its module, e.g.
`from ofexp.pipeline.steps.train import TrainConfig, run_train`: this package imports none of
them, so a step process pays only for its own step's modules, not for every step's and the
study's (matplotlib, scipy.stats; tests/cli/test_startup.py checks a train step's imports).
"""
