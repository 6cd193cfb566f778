"""The ``hamode`` command: LightningCLI over HDNNClassifier and the data modules.

hamode fit --config configs/mnist_h2.yaml
hamode test --config configs/mnist_h2.yaml --ckpt_path outputs/mnist_h2/checkpoints/best.ckpt
hamode fit --config configs/swiss_roll_h1.yaml --model.integrator=rk4 --trainer.max_epochs=5
"""

from __future__ import annotations

import sys

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .callbacks import NonFiniteGuard
from .module import HDNNClassifier


class HamodeCLI(LightningCLI):
    """LightningCLI with a checkpoint callback (best by validation accuracy + last) and the NaN guard always on."""

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val/acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best",
                "checkpoint.enable_version_counter": False,
            }
        )
        parser.add_lightning_class_args(NonFiniteGuard, "nan_guard")

    def after_test(self) -> None:
        metrics = self.trainer.callback_metrics
        if "test/acc" in metrics and self.trainer.is_global_zero:
            print(f"test accuracy: {100 * float(metrics['test/acc']):.2f} %")


def cli(args: list[str] | None = None, run: bool = True) -> HamodeCLI:
    """Build (and with ``run=True`` run) the CLI; returns it (tests use ``run=False``)."""
    return HamodeCLI(
        HDNNClassifier,
        L.LightningDataModule,
        subclass_mode_data=True,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={
            "logger": {"class_path": "lightning.pytorch.loggers.CSVLogger", "init_args": {"save_dir": "outputs"}}
        },
        args=args,
        run=run,
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of the ``hamode`` console script."""
    cli(args)


if __name__ == "__main__":  # python -m lightning_modules.cli
    main(sys.argv[1:])
