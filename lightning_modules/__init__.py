"""The training system: LightningModule, DataModules, callbacks and the ``hamode`` CLI."""

from .callbacks import NonFiniteGuard, NonFiniteLossError, SensitivityMonitor
from .data import InMemoryLoader, MNISTDataModule, Toy2DDataModule
from .module import HDNNClassifier

__all__ = [
    "HDNNClassifier",
    "InMemoryLoader",
    "MNISTDataModule",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "SensitivityMonitor",
    "Toy2DDataModule",
]
