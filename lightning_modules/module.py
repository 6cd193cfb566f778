"""HDNNClassifier: the training system around hamode's models (Lightning style: model apart from system)."""

from __future__ import annotations

import math
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torchmetrics.classification import Accuracy

from hamode import list_architectures, list_integrators
from hamode.models import MNISTHDNN, Toy2DClassifier
from hamode.net import GradientMode

__all__ = ["TASKS", "HDNNClassifier"]

TASKS = ("mnist", "toy2d")
OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("exponential", "onecycle", "cosine", "none")


class HDNNClassifier(L.LightningModule):
    """Trains an H-DNN classifier; every hyper-parameter is plain data saved in the checkpoint,
    so ``load_from_checkpoint`` rebuilds the same discretisation.

    Args:
        task: ``mnist`` (hamode.models.MNISTHDNN: conv embedding, an H-DNN on every pixel, linear head) or
            ``toy2d`` (hamode.models.Toy2DClassifier: 2-D points, zero-padded state, linear head).
        architecture: the Hamiltonian field, one of {ARCHITECTURES}.
        dim: state size (toy2d) or channels C of every pixel (mnist).
        width: hidden size m of K (None: the architecture's default).
        n_layers: layers N (mnist: 0 is the conv + linear baseline without an H-DNN).
        t_end: final time T of the flow (give t_end or h, not both).
        h: layer step, T = n_layers * h (give t_end or h, not both).
        integrator: training discretisation, one of {INTEGRATORS}, or ``torchdiffeq:<method>`` (an adaptive
            or fixed-grid torchdiffeq solve, e.g. torchdiffeq:dopri5), or None for the architecture's default.
        substeps: integrator steps per layer (>= 1).
        gradient: ``backprop`` (through the steps), ``reversible`` (O(1) memory: states rebuilt by the
            inverse step; invertible rules only) or ``adjoint`` (torchdiffeq's adjoint solve).
        activation: the activation σ of the field.
        weights: ``piecewise`` (one weight set per layer, the papers), ``constant`` (one set: a
            time-invariant ODE) or ``linear`` (interpolated between N + 1 nodes).
        init: ``default`` (N(0, 1/fan_in) matrices) or ``normal`` (N(0, 1), the papers' 2-D recipe).
        solver_options: options of the torchdiffeq solve, e.g. {{rtol: 1e-4, atol: 1e-5}}.
        alpha: weight of the smoothness regulariser (L4DC eq. 12), >= 0.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9).
        lr: learning rate (> 0).
        weight_decay: weight decay on the non-H-DNN layers (conv, classifier head).
        hdnn_weight_decay: weight decay on the H-DNN weights (they also get the smoothness regulariser).
        lr_schedule: ``exponential`` (x lr_gamma per epoch, the papers), ``onecycle`` (per step),
            ``cosine`` (per epoch) or ``none``.
        lr_gamma: decay factor per epoch of the exponential schedule, in (0, 1].
        eval_integrator: evaluate (validate/test/predict) under this integrator instead of the training one
            (same names as integrator; None: the training one).
        eval_substeps: evaluate with this many substeps per layer (None: the training value).
        head: toy2d only: ``logit`` (one logit, logistic loss) or ``softmax`` (two classes).
    """

    def __init__(
        self,
        task: Literal["mnist", "toy2d"] = "mnist",
        architecture: str = "H2",
        dim: int = 8,
        width: int | None = None,
        n_layers: int = 4,
        t_end: float | None = None,
        h: float | None = 0.5,
        integrator: str | None = None,
        substeps: int = 1,
        gradient: GradientMode = "backprop",
        activation: Literal["tanh", "relu", "sigmoid"] = "tanh",
        weights: Literal["piecewise", "constant", "linear"] = "piecewise",
        init: Literal["default", "normal"] = "default",
        solver_options: dict[str, Any] | None = None,
        alpha: float = 1e-3,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 0.04,
        weight_decay: float = 2e-4,
        hdnn_weight_decay: float = 0.0,
        lr_schedule: Literal["exponential", "onecycle", "cosine", "none"] = "exponential",
        lr_gamma: float = 0.8,
        eval_integrator: str | None = None,
        eval_substeps: int | None = None,
        head: Literal["logit", "softmax"] = "logit",
    ) -> None:
        super().__init__()
        if task not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}; got {task!r}")
        if optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}; got {optimizer!r}")
        if lr_schedule not in SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(SCHEDULES)}; got {lr_schedule!r}")
        for name, value in (
            ("lr", lr),
            ("alpha", alpha),
            ("weight_decay", weight_decay),
            ("hdnn_weight_decay", hdnn_weight_decay),
        ):
            if (
                isinstance(value, bool)
                or not isinstance(value, (int, float))
                or value < 0
                or (name == "lr" and not value)
            ):
                raise ValueError(f"{name} must be a number {'> 0' if name == 'lr' else '>= 0'}, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value!r}")
        if isinstance(lr_gamma, bool) or not isinstance(lr_gamma, (int, float)) or not 0 < lr_gamma <= 1:
            raise ValueError(f"lr_gamma must be a number in (0, 1] (the per-epoch decay factor), got {lr_gamma!r}")
        self.save_hyperparameters()
        net_args = dict(
            architecture=architecture,
            n_layers=n_layers,
            t_end=t_end,
            h=h,
            integrator=integrator,
            substeps=substeps,
            gradient=gradient,
            activation=activation,
            width=width,
            weights=weights,
            init=init,
            solver_options=solver_options,
        )
        if task == "mnist":
            self.model = MNISTHDNN(channels=dim, **net_args)
            self.n_classes = 10
        else:
            self.model = Toy2DClassifier(dim=dim, head=head, **net_args)
            self.n_classes = 2
        self._train_discretisation = self._discretisation()
        if eval_integrator is not None or eval_substeps is not None:
            self._check_eval(eval_integrator, eval_substeps)
        metric = {"task": "multiclass", "num_classes": self.n_classes}
        self.train_acc, self.val_acc, self.test_acc = Accuracy(**metric), Accuracy(**metric), Accuracy(**metric)

    # ------------------------------------------------------------ discretisation
    @property
    def net(self):
        """The model's :class:`hamode.HamiltonianNet` (None for the 0-layer MNIST baseline)."""
        return self.model.net

    def _discretisation(self) -> tuple[str, int] | None:
        return None if self.net is None else (self.net.integrator_name, self.net.substeps)

    def _check_eval(self, integrator, substeps) -> None:
        if self.net is None:
            return
        saved = self._discretisation()
        try:
            self.net.set_integrator(integrator if integrator is not None else saved[0], substeps)
        finally:
            self.net.set_integrator(*saved)

    def set_integrator(self, integrator: str, substeps: int | None = None) -> None:
        """Evaluate (validate/test/predict) under another discretisation from now on; training keeps its own."""
        self._check_eval(integrator, substeps)
        self.hparams.eval_integrator = integrator
        if substeps is not None:
            self.hparams.eval_substeps = substeps

    def _use_eval_discretisation(self) -> None:
        if self.net is not None and (self.hparams.eval_integrator or self.hparams.eval_substeps):
            self.net.set_integrator(
                self.hparams.eval_integrator or self._train_discretisation[0],
                self.hparams.eval_substeps or self._train_discretisation[1],
            )

    def _use_train_discretisation(self) -> None:
        if self.net is not None:
            self.net.set_integrator(*self._train_discretisation)

    def on_validation_start(self) -> None:
        self._use_eval_discretisation()

    def on_validation_end(self) -> None:
        self._use_train_discretisation()

    def on_test_start(self) -> None:
        self._use_eval_discretisation()

    def on_predict_start(self) -> None:
        self._use_eval_discretisation()

    # ------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        task = getattr(dm, "task", None)
        if task is not None and task != self.hparams.task:
            raise ValueError(
                f"model task {self.hparams.task!r} does not match the data module "
                f"{type(dm).__name__} (task {task!r}): set --model.task={task}"
            )

    # ------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        return self.model(x)

    def _loss(self, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if logits.dim() == 1:  # logistic head
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype)), (logits > 0).long()
        return F.cross_entropy(logits, y), logits.argmax(-1)

    def _log_solver_stats(self, stage: str) -> None:
        if self.net is not None and self.net.continuous and self.net.stats:
            for key, value in self.net.stats.items():
                self.log(f"{stage}/solver_{key}", float(value), on_step=stage == "train", on_epoch=True)

    @staticmethod
    def _check_inputs(x: Tensor, stage: str, batch_idx: int) -> None:
        """Refuse non-finite inputs (one reduction per batch): the flow would carry NaN/Inf silently."""
        if not torch.isfinite(x).all():
            bad = int((~torch.isfinite(x)).sum())
            raise ValueError(
                f"{stage} batch {batch_idx} has {bad} non-finite input values (NaN or Inf): check the data "
                "(normalisation, corrupt files) before it reaches the H-DNN"
            )

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        self._check_inputs(x, "train", batch_idx)
        loss, pred = self._loss(self(x), y)
        reg = self.model.regularization(self.hparams.alpha)
        total = loss + reg
        self.train_acc(pred, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/regularizer", reg)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self._log_solver_stats("train")
        return total

    def _eval_step(self, batch, stage: str, metric) -> None:
        x, y = batch
        loss, pred = self._loss(self(x), y)
        metric(pred, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)
        self._log_solver_stats(stage)

    def validation_step(self, batch, batch_idx: int) -> None:
        self._check_inputs(batch[0], "validation", batch_idx)
        self._eval_step(batch, "val", self.val_acc)

    def test_step(self, batch, batch_idx: int) -> None:
        self._check_inputs(batch[0], "test", batch_idx)
        self._eval_step(batch, "test", self.test_acc)

    def predict_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        """``{"class": (B,), "probs": (B, n_classes)}`` for a batch of inputs."""
        self._check_inputs(batch[0], "predict", batch_idx)
        logits = self(batch[0])
        if logits.dim() == 1:  # logistic head: P(class 1) = sigmoid(logit)
            p1 = torch.sigmoid(logits)
            probs = torch.stack([1 - p1, p1], dim=-1)
        else:
            probs = logits.softmax(-1)
        return {"class": probs.argmax(-1), "probs": probs}

    # ------------------------------------------------------------ optimisation
    def configure_optimizers(self):
        hp = self.hparams
        hdnn = list(self.net.parameters()) if self.net is not None else []
        ids = {id(p) for p in hdnn}
        rest = [p for p in self.model.parameters() if id(p) not in ids]
        groups = [{"params": rest, "weight_decay": hp.weight_decay}]
        if hdnn:
            groups.append({"params": hdnn, "weight_decay": hp.hdnn_weight_decay})
        if hp.optimizer == "adam":
            opt = torch.optim.Adam(groups, lr=hp.lr)
        elif hp.optimizer == "adamw":
            opt = torch.optim.AdamW(groups, lr=hp.lr)
        else:
            opt = torch.optim.SGD(groups, lr=hp.lr, momentum=0.9)
        if hp.lr_schedule == "none":
            return opt
        if hp.lr_schedule == "exponential":
            sched = {"scheduler": torch.optim.lr_scheduler.ExponentialLR(opt, hp.lr_gamma), "interval": "epoch"}
        elif hp.lr_schedule == "cosine":
            sched = {
                "scheduler": torch.optim.lr_scheduler.CosineAnnealingLR(opt, self.trainer.max_epochs),
                "interval": "epoch",
            }
        else:
            total = self.trainer.estimated_stepping_batches
            sched = {
                "scheduler": torch.optim.lr_scheduler.OneCycleLR(
                    opt, max_lr=hp.lr, total_steps=int(total), pct_start=0.15
                ),
                "interval": "step",
            }
        return {"optimizer": opt, "lr_scheduler": sched}


# The names in the help text come from the registries, so they cannot go stale.
HDNNClassifier.__doc__ = HDNNClassifier.__doc__.format(
    ARCHITECTURES=", ".join(list_architectures()), INTEGRATORS=", ".join(list_integrators())
)
