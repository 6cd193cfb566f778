"""The training system: LightningModule, DataModules, callbacks and the ``hamode`` CLI."""

from .callbacks import LastCheckpoint, NonFiniteGuard, NonFiniteLossError, PredictionWriter, SensitivityMonitor
from .data import InMemoryLoader, MNISTDataModule, Toy2DDataModule
from .module import HDNNClassifier, upgrade_model_config

__all__ = [
    "HDNNClassifier",
    "InMemoryLoader",
    "LastCheckpoint",
    "MNISTDataModule",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PredictionWriter",
    "SensitivityMonitor",
    "Toy2DDataModule",
    "upgrade_model_config",
]
