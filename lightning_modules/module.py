"""HDNNClassifier: the training system around any classifier ``nn.Module`` (Lightning style: model apart from
system). The model is injected (``--model.net``, a ``class_path``/``init_args`` block in the configs): the per-pixel
H-DNN, the Hamiltonian CNN, the 2-D classifier and a user's own ``nn.Module`` are trained by the same system."""

from __future__ import annotations

import contextlib
import copy
import inspect
import math
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any, Literal

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import Accuracy

from hamode import HamiltonianNet, list_integrators
from hamode.models import NetArguments, hamiltonian_nets

from .checkpoints import CheckpointError, build_net, check_class_paths, read_checkpoint

__all__ = ["LEGACY_MODEL_KEYS", "OPTIMIZER_HPARAMS", "HDNNClassifier", "upgrade_model_config"]

OPTIMIZERS = ("adam", "adamw", "sgd")
SCHEDULES = ("exponential", "onecycle", "cosine", "none")
OPTIMIZER_HPARAMS = ("optimizer", "lr", "weight_decay", "hdnn_weight_decay", "lr_schedule", "lr_gamma")
"""The hyper-parameters that shape the optimizer and its schedule. On a resume their values in the model (the
command line's) are applied to the restored optimizer state; ``optimizer`` and ``lr_schedule`` cannot change."""
FIXED_ON_RESUME = ("optimizer", "lr_schedule")
LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
"""The learning rates a param group may hold (the schedules keep their base values there too)."""
LEGACY_MODEL_KEYS = ("task", "dim", "head", *NetArguments.__dataclass_fields__)
"""The net arguments ``HDNNClassifier`` took before the model was injected (hamode <= 0.2)."""
_LEGACY_DEFAULTS = {"task": "mnist", "architecture": "H2", "dim": 8, "n_layers": 4, "h": 0.5}


def upgrade_model_config(model: dict[str, Any]) -> dict[str, Any]:
    """The ``model:`` block of a hamode <= 0.2 config (``task: mnist|toy2d`` and the net's arguments on the
    training module) rewritten for the injected model: the net's arguments move into
    ``net: {class_path: hamode.models.MNISTHDNN | hamode.models.Toy2DClassifier, init_args: {...}}``."""
    old = {**_LEGACY_DEFAULTS, **{k: v for k, v in model.items() if k in LEGACY_MODEL_KEYS}}
    task = old.pop("task")
    if task not in ("mnist", "toy2d"):
        raise ValueError(f"task must be 'mnist' or 'toy2d' in a hamode <= 0.2 config, got {task!r}")
    head = old.pop("head", None)
    if task == "mnist":
        init = {"channels": old.pop("dim"), **old}
        class_path = "hamode.models.MNISTHDNN"
    else:
        init = {**old, **({"head": head} if head is not None else {})}
        class_path = "hamode.models.Toy2DClassifier"
    rest = {k: v for k, v in model.items() if k not in LEGACY_MODEL_KEYS}
    return {"net": {"class_path": class_path, "init_args": init}, **rest}


class HDNNClassifier(L.LightningModule):
    """Trains a classifier ``net`` (any ``nn.Module`` from inputs to logits) and evaluates it under the
    discretisation asked; every hyper-parameter is plain data saved in the checkpoint, so ``load_from_checkpoint``
    of a checkpoint written by ``hamode fit`` rebuilds the same model (the net's ``class_path`` and
    ``init_args`` included), and so does one of a hamode model built in Python (they record their arguments,
    [`RecordsInitArgs`][hamode.models.RecordsInitArgs]); for a user's own module: ``load_from_checkpoint(path,
    net=the_model)``.

    The discretisation hooks (``eval_integrator``, ``eval_substeps``,
    [`set_integrator()`][lightning_modules.HDNNClassifier.set_integrator]) act on every
    [`HamiltonianNet`][hamode.HamiltonianNet] inside the net (the stages of a CNN, the flow of a per-pixel net, a
    user's own).

    Args:
        net: the model: ``hamode.models.MNISTHDNN`` (L4DC's per-pixel H-DNN), ``hamode.models.HamiltonianCNN``,
            ``hamode.models.ResidualCNN``, ``hamode.models.Toy2DClassifier`` or any ``nn.Module`` returning logits
            (``(B, n_classes)``, or ``(B,)`` for one logistic logit). Its ``regularization(alpha)`` method is used
            if it has one, else the smoothness regulariser of its Hamiltonian nets is summed.
        n_classes: classes of the accuracy metrics (None: the net's ``n_classes`` attribute, else the data
            module's).
        alpha: weight of the smoothness regulariser (L4DC eq. 12), >= 0.
        optimizer: ``adam``, ``adamw`` or ``sgd`` (momentum 0.9).
        lr: learning rate (> 0).
        weight_decay: weight decay on the parameters outside the Hamiltonian nets (convolutions, heads).
        hdnn_weight_decay: weight decay on the Hamiltonian nets' weights (they also get the smoothness regulariser).
        lr_schedule: ``exponential`` (x lr_gamma per epoch, the papers), ``onecycle`` (per step),
            ``cosine`` (per epoch) or ``none``.
        lr_gamma: decay factor per epoch of the exponential schedule, in (0, 1].
        eval_integrator: evaluate (validate/test/predict) under this integrator instead of the training one
            (one of {INTEGRATORS}, or torchdiffeq:<method>; None: the training one).
        eval_substeps: evaluate with this many substeps per layer (None: the training value).
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        n_classes: int | None = None,
        alpha: float = 1e-3,
        optimizer: Literal["adam", "adamw", "sgd"] = "adam",
        lr: float = 0.04,
        weight_decay: float = 2e-4,
        hdnn_weight_decay: float = 0.0,
        lr_schedule: Literal["exponential", "onecycle", "cosine", "none"] = "exponential",
        lr_gamma: float = 0.8,
        eval_integrator: str | None = None,
        eval_substeps: int | None = None,
    ) -> None:
        super().__init__()
        if not isinstance(net, nn.Module):
            raise ValueError(
                f"net must be an nn.Module (the classifier to train), got {net!r}: in a config give "
                "model.net: {class_path: hamode.models.MNISTHDNN, init_args: {...}} (or HamiltonianCNN, "
                "Toy2DClassifier, your own module); in Python HDNNClassifier(net=...); to load a checkpoint of a "
                "model built in Python: HDNNClassifier.load_from_checkpoint(path, net=<the same model>). A checkpoint "
                "written by hamode <= 0.2 (hyper-parameters task, architecture, dim, ...) cannot be loaded any more."
            )
        if n_classes is not None and (isinstance(n_classes, bool) or not isinstance(n_classes, int) or n_classes < 2):
            raise ValueError(f"n_classes must be an int >= 2 or None, got {n_classes!r}")
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
        with warnings.catch_warnings():  # a module given in Python is not hyper-parameter data: dropped below
            warnings.filterwarnings("ignore", message=r"Attribute 'net' is an instance of `nn.Module`.*")
            self.save_hyperparameters()
        self.net = net
        if isinstance(self.hparams.get("net"), nn.Module):  # built in Python, not from a config
            config = getattr(net, "init_config", None)
            if config is not None:  # hamode's models record their arguments: the checkpoint can rebuild the net
                # plain data: load_from_checkpoint builds the net from it, nothing more
                self.hparams["net"] = self._as_it_runs(copy.deepcopy(config))
            else:  # a user's module: load_from_checkpoint(path, net=...) rebuilds it
                del self.hparams["net"]
        self._train_discretisation = self._discretisations()
        if eval_integrator is not None or eval_substeps is not None:
            self._check_eval(eval_integrator, eval_substeps)
        self.n_classes = n_classes if n_classes is not None else getattr(net, "n_classes", None)
        if self.n_classes is not None:
            self._make_metrics()

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike,
        map_location: Any = None,
        hparams_file: str | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        *,
        trusted: Sequence[type | str] = (),
        **kwargs: Any,
    ) -> HDNNClassifier:
        """The training system saved in ``checkpoint_path``, rebuilt from the checkpoint read as data.

        The net is rebuilt from the checkpoint's ``net`` block (``class_path``, ``init_args``) only when its class
        is one of hamode's models or is named in ``trusted``; its arguments must be plain data. Nothing else in the
        checkpoint is instantiated or imported: a checkpoint naming any other class is refused
        ([`CheckpointError`][lightning_modules.CheckpointError]) before anything runs. For a user's own module
        pass ``net=<the model>`` (its weights are then loaded from the checkpoint).

        Args:
            checkpoint_path: the ``.ckpt`` file.
            map_location: where the tensors go (``torch.load``'s argument; None: the CPU).
            hparams_file: not supported (the checkpoint's own hyper-parameters are used); must be None.
            strict: whether the state dict must match the model's keys exactly (None: True).
            weights_only: must be None or True: checkpoints are read as data, never unpickled as objects.
            trusted: further classes (or their import paths) the checkpoint's ``net`` may name.
            **kwargs: hyper-parameters that replace the checkpoint's (``net=``, ``eval_integrator=``, ...).
        """
        if hparams_file is not None:
            raise ValueError("hparams_file is not supported: hamode uses the checkpoint's own hyper-parameters")
        if weights_only is False:
            raise ValueError(
                "weights_only=False is refused: hamode reads checkpoints as data only (an unpickled object can run "
                "code); a checkpoint written by hamode loads with weights_only=True"
            )
        source = str(checkpoint_path)
        checkpoint = read_checkpoint(checkpoint_path, map_location if map_location is not None else "cpu")
        hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if k != "_instantiator"}
        if "task" in hparams and "net" not in hparams:
            raise CheckpointError(
                f"checkpoint {source} was written by hamode <= 0.2 (task={hparams['task']!r}); its weights belong to "
                "the old module layout and cannot be loaded by this version"
            )
        how = ": pass trusted=[TheClass] (or net=<the model>) to load it"
        check_class_paths(source, {k: v for k, v in hparams.items() if k != "net"}, trusted, how)
        net = kwargs.pop("net", None)
        if net is None:
            net = build_net(hparams.get("net"), source, trusted)
        names = set(inspect.signature(cls.__init__).parameters) - {"self", "net"}
        model = cls(net=net, **{**{k: v for k, v in hparams.items() if k in names}, **kwargs})
        model.on_load_checkpoint(checkpoint)
        model.load_state_dict(checkpoint["state_dict"], strict=True if strict is None else strict)
        return model

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.trainer.training:
            self._check_unchanged("saving a checkpoint")
        # Lightning's CLI names a function to build the model with; hamode's loader builds it from data and never
        # calls a function a checkpoint names, so the checkpoint does not carry one
        checkpoint.get("hyper_parameters", {}).pop("_instantiator", None)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        saved = checkpoint.get("hyper_parameters", {})
        # the optimizer and schedule hyper-parameters its optimizer state was made with (applied in on_train_start)
        self._restored_optimizer_hparams = {k: saved[k] for k in OPTIMIZER_HPARAMS if k in saved}

    def on_train_start(self) -> None:
        self._check_unchanged("fit")
        restored = getattr(self, "_restored_optimizer_hparams", None)
        if restored:
            self._apply_to_restored_optimizer(restored)
        self._restored_optimizer_hparams = None

    def _apply_to_restored_optimizer(self, restored: dict[str, Any]) -> None:
        """A resumed fit restores the optimizer and scheduler states of the checkpoint, hyper-parameters
        included; this puts the model's own (the command line's) back into them: the learning rates are scaled by
        new lr / checkpoint lr (the schedule continues from where it was, on the new base), the weight decays and
        the exponential decay factor are set. The optimizer and the schedule kind cannot change on a resume."""
        hp = self.hparams
        for key in FIXED_ON_RESUME:
            if key in restored and restored[key] != hp[key]:
                raise ValueError(
                    f"resuming a run trained with {key}={restored[key]!r} under {key}={hp[key]!r}: the restored "
                    f"optimizer state cannot be carried over to another {key}; keep {key}={restored[key]!r} "
                    "or start a new run"
                )
        ratio = hp.lr / restored["lr"] if "lr" in restored and restored["lr"] != hp.lr else None
        decays = (hp.weight_decay, hp.hdnn_weight_decay)
        for optimizer in self.trainer.optimizers:
            for group, decay in zip(optimizer.param_groups, decays):
                group["weight_decay"] = decay
                if ratio is not None:
                    for key in LR_KEYS:
                        if key in group:
                            group[key] *= ratio
        for config in self.trainer.lr_scheduler_configs:
            scheduler = config.scheduler
            if ratio is not None:
                for attr in ("base_lrs", "_last_lr"):
                    if hasattr(scheduler, attr):
                        setattr(scheduler, attr, [lr * ratio for lr in getattr(scheduler, attr)])
            if isinstance(scheduler, torch.optim.lr_scheduler.ExponentialLR):
                scheduler.gamma = hp.lr_gamma

    def _make_metrics(self) -> None:
        metric = {"task": "multiclass", "num_classes": self.n_classes}
        self.train_acc, self.val_acc, self.test_acc = Accuracy(**metric), Accuracy(**metric), Accuracy(**metric)

    # ------------------------------------------------------------ discretisation
    @property
    def hamiltonian_nets(self) -> list[HamiltonianNet]:
        """The [`HamiltonianNet`][hamode.HamiltonianNet] modules inside the net, in module order (empty for a plain
        net)."""
        return hamiltonian_nets(self.net)

    def _discretisations(self) -> list[tuple[str, int]]:
        return [(n.integrator_name, n.substeps) for n in self.hamiltonian_nets]

    def _as_it_runs(self, config: dict[str, Any]) -> dict[str, Any]:
        """A model's recorded arguments with the discretisation its Hamiltonian nets run now (changed on the nets
        after the model was built): the checkpoint rebuilds the model that is trained, not the one first built."""
        args = config.get("init_args", {})
        nets = self.hamiltonian_nets
        if "integrator" not in args or not nets:
            return config
        current = set(self._discretisations())
        built = {(args["integrator"] or n.field.default_integrator, args.get("substeps", 1)) for n in nets}
        if current == built:
            return config
        if len(current) > 1:
            raise ValueError(
                f"the Hamiltonian nets of the {type(self.net).__name__} run different discretisations "
                f"({sorted(current)}), which its recorded arguments cannot express: set one for all with the "
                "model's set_integrator(...) before handing it to HDNNClassifier"
            )
        args["integrator"], args["substeps"] = current.pop()
        return config

    def _check_unchanged(self, moment: str) -> None:
        """The nets run the discretisation they were handed over with; one changed behind the system's back
        (``clf.net.set_integrator(...)`` after construction) is refused rather than silently undone."""
        now = self._discretisations()
        if now != self._train_discretisation:
            raise RuntimeError(
                f"{moment}: the net's discretisation changed after it was handed to HDNNClassifier "
                f"(was {self._train_discretisation}, now {now}); the system trains and records the one it was "
                "given. To evaluate under another rule use HDNNClassifier.set_integrator(...) or eval_integrator; "
                "to train under another rule build a new HDNNClassifier around the changed net."
            )

    def discretisation(self) -> tuple[str, int] | None:
        """``(integrator, substeps)`` the first Hamiltonian net runs with now (None without one)."""
        found = self._discretisations()
        return found[0] if found else None

    def _set_all(self, integrator: str | None, substeps: int | None) -> None:
        for net, (name, k) in zip(self.hamiltonian_nets, self._train_discretisation):
            net.set_integrator(integrator if integrator is not None else name, substeps if substeps is not None else k)

    def _check_eval(self, integrator, substeps) -> None:
        if not self.hamiltonian_nets:
            raise ValueError(
                f"eval_integrator={integrator!r} / eval_substeps={substeps!r} asked, but the net "
                f"{type(self.net).__name__} holds no hamode.HamiltonianNet to discretise: leave them unset"
            )
        try:
            self._set_all(integrator, substeps)
        finally:
            self._use_train_discretisation()

    def set_integrator(self, integrator: str, substeps: int | None = None) -> None:
        """Evaluate (validate/test/predict) under another discretisation from now on; training keeps its own."""
        self._check_eval(integrator, substeps)
        self.hparams.eval_integrator = integrator
        if substeps is not None:
            self.hparams.eval_substeps = substeps

    @contextlib.contextmanager
    def evaluating(self) -> Iterator[tuple[str, int] | None]:
        """Run the nets under the evaluation discretisation (``eval_integrator`` / ``eval_substeps``, else the
        training one) inside the block, as validate/test/predict do; yields ``(integrator, substeps)``."""
        self._check_unchanged("evaluating")
        self._use_eval_discretisation()
        try:
            yield self.discretisation()
        finally:
            self._use_train_discretisation()

    def _use_eval_discretisation(self) -> None:
        if self.hparams.eval_integrator or self.hparams.eval_substeps:
            self._set_all(self.hparams.eval_integrator, self.hparams.eval_substeps)

    def _use_train_discretisation(self) -> None:
        for net, saved in zip(self.hamiltonian_nets, self._train_discretisation):
            net.set_integrator(*saved)

    def on_validation_start(self) -> None:
        self._check_unchanged("validation")
        self._use_eval_discretisation()

    def on_validation_end(self) -> None:
        self._use_train_discretisation()

    def on_test_start(self) -> None:
        self._check_unchanged("test")
        self._use_eval_discretisation()

    def on_test_end(self) -> None:  # an evaluation rule never leaks into a later fit
        self._use_train_discretisation()

    def on_predict_start(self) -> None:
        self._check_unchanged("predict")
        self._use_eval_discretisation()

    def on_predict_end(self) -> None:
        self._use_train_discretisation()

    # ------------------------------------------------------------ setup
    def setup(self, stage: str) -> None:
        dm = getattr(self.trainer, "datamodule", None)
        data_classes = getattr(dm, "n_classes", None)
        net_classes = getattr(self.net, "n_classes", None)
        if data_classes is not None and self.hparams.n_classes is not None and data_classes != self.hparams.n_classes:
            raise ValueError(
                f"n_classes={self.hparams.n_classes} was given, but the data module {type(dm).__name__} has "
                f"{data_classes} classes: leave --model.n_classes unset (it is taken from the net or the data) or "
                "choose the data it is meant for"
            )
        if data_classes is not None and net_classes is not None and data_classes != net_classes:
            raise ValueError(
                f"the net {type(self.net).__name__} has {net_classes} classes but the data module "
                f"{type(dm).__name__} has {data_classes}: set the net's n_classes (or choose the model for this data)"
            )
        if self.n_classes is None:
            if data_classes is None:
                raise ValueError(
                    f"the number of classes is unknown: the net {type(self.net).__name__} has no n_classes "
                    "attribute and the data module gives none; set --model.n_classes"
                )
            self.n_classes = data_classes
            self._make_metrics()

    # ------------------------------------------------------------ steps
    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _loss(self, logits: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        if logits.dim() == 1:  # logistic head
            return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype)), (logits > 0).long()
        return F.cross_entropy(logits, y), logits.argmax(-1)

    def regularization(self) -> Tensor:
        """The net's ``regularization(alpha)`` if it has one, else the smoothness regulariser of its Hamiltonian
        nets (zero for a plain net)."""
        alpha = self.hparams.alpha
        own = getattr(self.net, "regularization", None)
        if callable(own):
            return own(alpha)
        zero = next(self.net.parameters()).new_zeros(())
        return sum((n.regularization(alpha) for n in self.hamiltonian_nets), zero)

    def _log_solver_stats(self, stage: str) -> None:
        nets = [n for n in self.hamiltonian_nets if n.continuous and n.stats]
        for i, net in enumerate(nets):
            prefix = f"{stage}/solver_" if len(nets) == 1 else f"{stage}/solver{i}_"
            for key, value in net.stats.items():
                self.log(prefix + key, float(value), on_step=stage == "train", on_epoch=True)

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
        reg = self.regularization()
        total = loss + reg
        self.train_acc(pred, y)
        self.log("train/loss", loss, prog_bar=True)
        self.log("train/regularizer", reg)
        self.log("train/acc", self.train_acc, on_step=False, on_epoch=True, prog_bar=True)
        self._log_solver_stats("train")
        return total

    def _eval_step(self, batch, stage: str, metric) -> dict[str, Tensor]:
        x, y = batch
        logits = self(x)
        loss, pred = self._loss(logits, y)
        metric(pred, y)
        self.log(f"{stage}/loss", loss, prog_bar=stage == "val", sync_dist=True)
        self.log(f"{stage}/acc", metric, prog_bar=True)
        self._log_solver_stats(stage)
        # what NonFiniteGuard checks: a net whose outputs are not finite is never saved as best or last
        return {"loss": loss.detach(), "finite_outputs": torch.isfinite(logits).all()}

    def validation_step(self, batch, batch_idx: int) -> dict[str, Tensor]:
        self._check_inputs(batch[0], "validation", batch_idx)
        return self._eval_step(batch, "val", self.val_acc)

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
        hdnn = [p for n in self.hamiltonian_nets for p in n.parameters()]
        ids = {id(p) for p in hdnn}
        rest = [p for p in self.net.parameters() if id(p) not in ids]
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
HDNNClassifier.__doc__ = HDNNClassifier.__doc__.format(INTEGRATORS=", ".join(list_integrators()))
