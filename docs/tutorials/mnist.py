# %% [markdown]
# # MNIST with the Lightning Trainer, evaluated under another integrator
#
# `HDNNClassifier` is the LightningModule around hamode's models; `MNISTDataModule` reads the MNIST files
# (obtained offline and checksum-verified). We train TAC's per-pixel H2 net under symplectic Euler for a few
# hundred steps, then test the same weights under symplectic Euler and under forward Euler: the network is the
# discretisation, and another one is another network.

# %%
import os

import lightning as L
import torch

from lightning_modules import HDNNClassifier, MNISTDataModule
from lightning_modules.cli import quiet_lightning

quiet_lightning()  # no tips in the log
torch.manual_seed(0)
L.seed_everything(0, verbose=False)
data = MNISTDataModule(data_dir=os.environ.get("HAMODE_DATA", "data"), batch_size=100)
model = HDNNClassifier(task="mnist", architecture="H2", dim=4, n_layers=4, h=0.5, integrator="symplectic_euler")
trainer = L.Trainer(
    max_steps=300,
    limit_val_batches=10,
    enable_progress_bar=False,
    enable_model_summary=False,
    logger=False,
    enable_checkpointing=False,
    accelerator="cpu",
)
trainer.fit(model, data)
print("trained", trainer.global_step, "steps")

# %%
results = {}
for integrator in ("symplectic_euler", "euler"):
    evaluator = HDNNClassifier(**{**model.hparams, "eval_integrator": integrator})
    evaluator.load_state_dict(model.state_dict())
    tester = L.Trainer(limit_test_batches=20, enable_progress_bar=False, logger=False, accelerator="cpu")
    results[integrator] = tester.test(evaluator, data, verbose=False)[0]["test/acc"]
for integrator, acc in results.items():
    print(f"test accuracy (2000 images) under {integrator:16s}: {100 * acc:.2f} %")
