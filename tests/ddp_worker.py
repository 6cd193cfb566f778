"""Run by test_lightning.py::test_ddp_two_processes: 2-D training with strategy='ddp' on 2 CPU processes."""

import sys
from pathlib import Path

import lightning as L
import torch

from hamode.models import Toy2DClassifier
from lightning_modules import HDNNClassifier, Toy2DDataModule


def main(out: Path) -> None:
    L.seed_everything(0)
    net = Toy2DClassifier("H2", dim=4, n_layers=4, h=0.5)
    model = HDNNClassifier(net=net, lr=0.02, lr_schedule="none")
    dm = Toy2DDataModule("double_moons", n_samples=1200, batch_size=50, val_fraction=0.1)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer.fit(model, dm)
    state = model.state_dict()
    torch.save(
        {
            "rank": trainer.global_rank,
            "world": trainer.world_size,
            "batches": trainer.num_training_batches,
            "state": state,
            "before": before,
            "val_acc": float(trainer.callback_metrics["val/acc"]),
        },
        out / f"rank{trainer.global_rank}.pt",
    )


if __name__ == "__main__":
    main(Path(sys.argv[1]))
