"""The ``hamode`` command: LightningCLI over HDNNClassifier and the data modules.

hamode fit --config configs/mnist_h2.yaml
hamode test --config configs/mnist_h2.yaml --ckpt_path outputs/mnist_h2/checkpoints/best.ckpt
hamode fit --config configs/swiss_roll_h1.yaml --model.integrator=rk4 --trainer.max_epochs=5
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningCLI

from .callbacks import NonFiniteGuard
from .module import HDNNClassifier

TRAINED_DISCRETISATION = ("architecture", "n_layers", "t_end", "h", "integrator", "substeps", "gradient")
"""Hyper-parameters that define the trained network's discretisation: a checkpoint fixes them."""
EVALUATION_DISCRETISATION = ("eval_integrator", "eval_substeps")
"""Hyper-parameters of evaluation only: the command line's values win over a checkpoint's."""


class HamodeCLI(LightningCLI):
    """LightningCLI with a checkpoint callback (best by validation accuracy + last) and the NaN guard always on.

    With ``--ckpt_path FILE``, Lightning lays the checkpoint's hyper-parameters over the command line. hamode
    keeps what was asked instead of silently dropping it: ``--model.eval_integrator`` / ``--model.eval_substeps``
    given on the command line are honoured (and checked at start), and a config whose training discretisation
    (architecture, n_layers, t_end, h, integrator, substeps, gradient) differs from the checkpoint's is refused
    with both shown, unless ``--allow_discretisation_change=true``.
    """

    def _parse_ckpt_path(self) -> None:
        subcommand = self.config.get("subcommand")
        ckpt_path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not (ckpt_path and Path(ckpt_path).is_file()):
            return super()._parse_ckpt_path()
        asked = self.config[subcommand]["model"].clone()
        super()._parse_ckpt_path()
        saved = self.config[subcommand]["model"]
        changed = [(k, asked.get(k), saved.get(k)) for k in TRAINED_DISCRETISATION if asked.get(k) != saved.get(k)]
        if changed and not self.config[subcommand].get("allow_discretisation_change"):
            lines = "\n".join(f"  {k}: asked {a!r}, checkpoint {b!r}" for k, a, b in changed)
            hint = (
                "resuming would silently train another network"
                if subcommand == "fit"
                else "to evaluate under another integrator use --model.eval_integrator / --model.eval_substeps"
            )
            raise SystemExit(
                f"hamode {subcommand}: the config's discretisation differs from the checkpoint {ckpt_path}:\n{lines}\n"
                f"({hint}; --allow_discretisation_change=true takes the checkpoint's values)"
            )
        for key in EVALUATION_DISCRETISATION:
            if asked.get(key) is not None:
                saved[key] = asked[key]

    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument(
            "--allow_discretisation_change",
            type=bool,
            default=False,
            help="with --ckpt_path: take the checkpoint's discretisation where the config asks for another one",
        )
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
            where = ""
            if self.model.net is not None:
                name, substeps = self.model.net.integrator_name, self.model.net.substeps
                where = f" ({name}, {substeps} substep{'' if substeps == 1 else 's'})"
            print(f"test accuracy: {100 * float(metrics['test/acc']):.2f} %{where}")


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
