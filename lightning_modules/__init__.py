"""The training system: LightningModule, DataModules, callbacks and the ``hamode`` CLI."""

from .callbacks import (
    LastCheckpoint,
    NonFiniteGuard,
    NonFiniteLossError,
    PredictionWriter,
    SensitivityMonitor,
    TrainingInterrupted,
)
from .checkpoints import CheckpointError, RunLockedError
from .data import InMemoryLoader, MNISTDataModule, Toy2DDataModule
from .module import HDNNClassifier, upgrade_model_config

__all__ = [
    "CheckpointError",
    "HDNNClassifier",
    "InMemoryLoader",
    "LastCheckpoint",
    "MNISTDataModule",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PredictionWriter",
    "RunLockedError",
    "SensitivityMonitor",
    "Toy2DDataModule",
    "TrainingInterrupted",
    "upgrade_model_config",
]
