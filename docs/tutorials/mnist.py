# %% [markdown]
# # MNIST with the Lightning Trainer, evaluated under another integrator
#
# `HDNNClassifier` is the LightningModule around any classifier `nn.Module` (here hamode's per-pixel
# `MNISTHDNN`; a `HamiltonianCNN`, the 2-D classifier or your own module train the same way); `MNISTDataModule`
# reads the MNIST files
# (obtained offline and checksum-verified). We train TAC's per-pixel H2 net under symplectic Euler for a few
# hundred steps, then test the same weights under symplectic Euler and under forward Euler: the network is the
# discretisation, and another one is another network.

# %%
import os

import lightning as L
import torch

from hamode.models import MNISTHDNN
from lightning_modules import HDNNClassifier, MNISTDataModule
from lightning_modules.cli import quiet_lightning

quiet_lightning()  # no tips in the log
torch.manual_seed(0)
L.seed_everything(0, verbose=False)
data = MNISTDataModule(data_dir=os.environ.get("HAMODE_DATA", "data"), batch_size=100)
net = MNISTHDNN("H2", channels=4, n_layers=4, h=0.5, integrator="symplectic_euler")
model = HDNNClassifier(net=net)
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
    model.set_integrator(integrator)  # evaluation only: training keeps symplectic Euler
    tester = L.Trainer(limit_test_batches=20, enable_progress_bar=False, logger=False, accelerator="cpu")
    results[integrator] = tester.test(model, data, verbose=False)[0]["test/acc"]
for integrator, acc in results.items():
    print(f"test accuracy ({20 * data.eval_batch_size} images) under {integrator:16s}: {100 * acc:.2f} %")
