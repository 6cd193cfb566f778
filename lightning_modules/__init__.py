"""The training system: LightningModule, DataModules, callbacks and the ``hamode`` CLI."""

try:
    import lightning  # noqa: F401  (the training extra)
except ModuleNotFoundError as _missing:
    raise ModuleNotFoundError(
        f"the training system and the `hamode` command need hamode's training extra ({_missing.name} is not "
        "installed): pip install 'hamode[train]' (from a clone: pip install -e '.[train]'); "
        "the library alone (import hamode) needs only torch and torchdiffeq",
        name=_missing.name,
    ) from None

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
