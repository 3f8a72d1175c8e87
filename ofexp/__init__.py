"""ofexp: model-fusion experiments (train -> fuse -> evaluate) tracked as MLflow runs."""

__version__ = "0.1.0"
