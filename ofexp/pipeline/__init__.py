"""Steps that compose data, models, fusion and metrics into tracked MLflow runs."""
from ofexp.pipeline.evaluate import EvalConfig, reference_weights, run_evaluate
from ofexp.pipeline.fuse import FuseConfig, run_fuse
from ofexp.pipeline.study import MODEL_KINDS, StudyConfig, parent_seed, run_study
from ofexp.pipeline.train import TrainConfig, run_train

__all__ = [
    "EvalConfig", "FuseConfig", "MODEL_KINDS", "StudyConfig", "TrainConfig", "parent_seed",
    "reference_weights", "run_evaluate", "run_fuse", "run_study", "run_train",
]
