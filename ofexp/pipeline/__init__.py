"""Steps that compose data, models, fusion and metrics into tracked MLflow runs."""
from ofexp.pipeline.steps.evaluate import EvalConfig, reference_weights, run_evaluate
from ofexp.pipeline.steps.fuse import FuseConfig, run_fuse
from ofexp.pipeline.study.run import MODEL_KINDS, StudyConfig, parent_seed, run_study
from ofexp.pipeline.steps.train import TrainConfig, run_train

__all__ = [
    "EvalConfig", "FuseConfig", "MODEL_KINDS", "StudyConfig", "TrainConfig", "parent_seed",
    "reference_weights", "run_evaluate", "run_fuse", "run_study", "run_train",
]
