"""Callbacks: gradient-sensitivity monitoring and a guard against non-finite losses."""

from __future__ import annotations

import math
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.utilities import rank_zero_info

from hamode.diagnostics import layer_sensitivity
from hamode.files import write_csv
from hamode.models import hamiltonian_inputs
from hamode.validation import check_int

__all__ = [
    "LastCheckpoint",
    "NonFiniteGuard",
    "NonFiniteLossError",
    "PredictionWriter",
    "SensitivityMonitor",
    "TrainingInterrupted",
]


class SensitivityMonitor(L.Callback):
    """Logs ‖∂y_N/∂y_j‖₂ (per sample: mean/min/max over a fixed probe batch) and the smallest singular value of
    ∂y_N/∂y_j for every [`HamiltonianNet`][hamode.HamiltonianNet] inside the model (each stage of a CNN), every
    ``every_n_steps`` training steps. Small states get the exact BSM; image states the matrix-free Lanczos estimate
    ([`layer_sensitivity()`][hamode.diagnostics.layer_sensitivity]).

    Args:
        every_n_steps: logging period in optimizer steps.
        layers: layer boundaries j to monitor (default: 0, N/4, N/2, 3N/4, N-1; all of them
            when ``full_curve``).
        probe_size: training samples in the probe batch (fixed at the start of training).
        full_curve: log every layer (default: on where every sample is one state vector, as in the 2-D task;
            off for per-pixel and image states, where a sample holds many coordinates).
        max_iter: Lanczos iterations per boundary for image states.
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        layers: Sequence[int] | None = None,
        probe_size: int = 16,
        full_curve: bool | None = None,
        max_iter: int = 20,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        check_int("max_iter", max_iter, 1)
        self.every_n_steps, self.layers, self.probe_size, self.full_curve = (
            every_n_steps,
            layers,
            probe_size,
            full_curve,
        )
        self.max_iter = max_iter
        self._probe: torch.Tensor | None = None

    def _layers(self, n_layers: int, full: bool) -> list[int]:
        if self.layers is not None:
            return sorted({int(j) for j in self.layers})
        if full:
            return list(range(n_layers + 1))
        return sorted({0, n_layers // 4, n_layers // 2, (3 * n_layers) // 4, n_layers - 1})

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        dm = trainer.datamodule
        if getattr(dm, "train_set", None) is not None:
            self._probe = dm.train_set[0][: self.probe_size]
        else:
            self._probe = next(iter(trainer.train_dataloader))[0][: self.probe_size]

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if self._probe is None or trainer.global_step % self.every_n_steps:
            return
        was_training = pl_module.training
        pl_module.eval()  # batch-norm layers around the nets: the probe must not move their statistics
        try:
            inputs = hamiltonian_inputs(pl_module.net, self._probe.to(pl_module.device))
        finally:
            pl_module.train(was_training)
        for i, (net, y0) in enumerate(inputs):
            prefix = "sensitivity" if len(inputs) == 1 else f"sensitivity/stage{i}"
            full = self.full_curve if self.full_curve is not None else y0.dim() == 2
            layers = self._layers(net.n_layers, full)
            found = layer_sensitivity(net, y0, layers, max_iter=self.max_iter)
            norm, smin = found["norm"].flatten(1), found["sigma_min"].flatten(1)
            stats = {
                "norm_mean": norm.mean(1),
                "norm_min": norm.amin(1),
                "norm_max": norm.amax(1),
                "sigma_min_min": smin.amin(1),
            }
            for k, j in enumerate(layers):
                for key, values in stats.items():
                    pl_module.log(f"{prefix}/{key}/layer_{j:03d}", values[k].item(), on_step=True, on_epoch=False)
            inner = stats["norm_min"][:-1] if len(layers) > 1 else stats["norm_min"]
            pl_module.log(f"{prefix}/min_norm", inner.min().item(), on_step=True, on_epoch=False)


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/Inf loss or gradient, or diverged; raised before the optimizer step could spread it."""


def _detached_copy(value: Any) -> Any:
    """A checkpoint dict with every tensor cloned (the live model and optimizer go on changing in place)."""
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, dict):
        return type(value)((k, _detached_copy(v)) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return type(value)(_detached_copy(v) for v in value)
    return value


class NonFiniteGuard(L.Callback):
    """Stops training with a clear message when the loss, a gradient, a weight or a validation output is NaN/Inf,
    when the loss diverges or passes an absolute ceiling, or when the net is stuck at chance.

    The loss is checked before the backward pass and the gradients before the optimizer step, so the
    weights are never updated by a bad step; the weights are checked after every step and the validation outputs
    at every validation batch, so no checkpoint (``best.ckpt``, ``last.ckpt``) is ever written of a net whose
    weights or outputs are not finite. The guard keeps (in memory) the whole training state at the end of
    the last batch whose weights then gave a finite, non-diverged loss: weights, optimizer and scheduler states,
    step and loop position of one and the same moment. When it fires it writes that state as ``last_finite.ckpt``
    next to the run's other checkpoints and names that file; ``hamode fit --ckpt_path <it> --model.lr=<smaller>``
    resumes from there, replaying the batch that went wrong under the new lr (``last.ckpt``, the last completed
    epoch, is left as it was).

    Args:
        divergence_factor: stop when a step's loss exceeds this factor times the running minimum of the
            smoothed loss (an exponential moving average; None: no divergence check, only NaN/Inf).
        smoothing: weight of the past in that moving average, in [0, 1).
        keep_finite: keep a copy of the last good training state and write it when the guard fires (costs one
            copy of the model's and optimizer's state per step; False: only stop).
        loss_ceiling: stop when a step's loss exceeds this absolute value (None: no ceiling). A cross-entropy
            above 1000 means logits of that size: the net diverged at its first step (a huge ``h`` or ``lr``),
            where the running minimum has nothing to compare with.
        chance_patience: stop after this many consecutive validation epochs at chance level: accuracy within one
            point of ``1 / n_classes`` and a validation loss above twice that of the uniform guess,
            ``2 ln(n_classes)`` (a net confidently wrong, not learning; None: no check).
    """

    FILENAME = "last_finite.ckpt"

    def __init__(
        self,
        divergence_factor: float | None = 1e4,
        smoothing: float = 0.9,
        keep_finite: bool = True,
        loss_ceiling: float | None = 1e3,
        chance_patience: int | None = 3,
    ) -> None:
        super().__init__()
        if divergence_factor is not None and not (
            isinstance(divergence_factor, (int, float)) and math.isfinite(divergence_factor) and divergence_factor > 1
        ):
            raise ValueError(f"divergence_factor must be a finite number > 1 or None, got {divergence_factor!r}")
        if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
            raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
        if not isinstance(keep_finite, bool):
            raise ValueError(f"keep_finite must be true or false, got {keep_finite!r}")
        if loss_ceiling is not None and not (
            isinstance(loss_ceiling, (int, float))
            and not isinstance(loss_ceiling, bool)
            and math.isfinite(loss_ceiling)
            and loss_ceiling > 0
        ):
            raise ValueError(f"loss_ceiling must be a finite number > 0 or None, got {loss_ceiling!r}")
        if chance_patience is not None and (
            isinstance(chance_patience, bool) or not isinstance(chance_patience, int) or chance_patience < 1
        ):
            raise ValueError(f"chance_patience must be an int >= 1 or None, got {chance_patience!r}")
        self.divergence_factor, self.smoothing, self.keep_finite = divergence_factor, float(smoothing), keep_finite
        self.loss_ceiling, self.chance_patience = loss_ceiling, chance_patience
        self.smoothed: float | None = None
        self.running_min: float | None = None
        self.at_chance = 0  # consecutive validation epochs at chance level
        self._pending: dict[str, Any] | None = None  # the state now, its weights not yet checked by a loss
        self._good: dict[str, Any] | None = None  # the last state whose weights gave a finite loss
        self._loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"smoothed": self.smoothed, "running_min": self.running_min, "at_chance": self.at_chance}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.smoothed, self.running_min = state_dict.get("smoothed"), state_dict.get("running_min")
        self.at_chance = state_dict.get("at_chance", 0)

    def _snapshot(self, trainer) -> None:
        """The training state as a checkpoint would hold it now (between two batches, where Lightning's own
        step checkpoints are taken, so a resume from it continues exactly)."""
        if self.keep_finite:
            self._pending = _detached_copy(trainer._checkpoint_connector.dump_checkpoint(weights_only=False))

    def on_train_start(self, trainer, pl_module) -> None:
        self._pending = self._good = None
        self._snapshot(trainer)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        params = dict(pl_module.named_parameters())
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params.values()]).all()):  # one sync
            bad = next(name for name, p in params.items() if not torch.isfinite(p).all())
            self._stop(trainer, pl_module, f"the weight {bad} is not finite after the optimizer step", updated=True)
        self._snapshot(trainer)

    def on_validation_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        if trainer.sanity_checking or trainer.state.fn != "fit" or not isinstance(outputs, dict):
            return
        finite = outputs.get("finite_outputs")
        if finite is not None and not bool(finite):
            # before the epoch's checkpoints: this net is never saved as best.ckpt or last.ckpt
            why = f"the net's outputs on validation batch {batch_idx} are not finite"
            self._stop(trainer, pl_module, why, updated=True)

    def on_validation_end(self, trainer, pl_module) -> None:  # the epoch's metrics are aggregated by now
        n_classes = getattr(pl_module, "n_classes", None)
        if self.chance_patience is None or trainer.sanity_checking or trainer.state.fn != "fit" or not n_classes:
            return
        acc, loss = trainer.callback_metrics.get("val/acc"), trainer.callback_metrics.get("val/loss")
        if acc is None or loss is None:
            return
        chance = float(acc) <= 1 / n_classes + 0.01 and float(loss) > 2 * math.log(n_classes)
        self.at_chance = self.at_chance + 1 if chance else 0
        if self.at_chance >= self.chance_patience:
            self._stop(
                trainer,
                pl_module,
                f"the net is stuck at chance: validation accuracy {100 * float(acc):.1f} % and loss {float(loss):.4g} "
                f"(the uniform guess: {math.log(n_classes):.3g}) for {self.at_chance} validation epochs in a row",
            )

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        self._snapshot(trainer)  # after the epoch's validation: the state an epoch checkpoint holds

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        value = float(loss.detach())
        self._loss = value
        if not math.isfinite(value):
            self._stop(trainer, pl_module, f"the loss is {value}")
        if self.loss_ceiling is not None and value > self.loss_ceiling:
            self._stop(trainer, pl_module, f"the loss {value:.4g} is above loss_ceiling {self.loss_ceiling:g}")
        if self.divergence_factor is not None and self.running_min is not None:
            limit = self.divergence_factor * self.running_min
            if value > limit:
                self._stop(
                    trainer,
                    pl_module,
                    f"the loss diverged: {value:.4g} > divergence_factor {self.divergence_factor:g} x the running "
                    f"minimum {self.running_min:.4g} of the smoothed loss",
                )
        beta = self.smoothing
        self.smoothed = value if self.smoothed is None else beta * self.smoothed + (1 - beta) * value
        self.running_min = self.smoothed if self.running_min is None else min(self.running_min, self.smoothed)
        if self._pending is not None:  # the weights of this state gave a finite, non-diverged loss
            self._good, self._pending = self._pending, None

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, p in pl_module.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                self._stop(trainer, pl_module, f"the gradient of {name} is not finite (loss {self._loss})")

    def _where(self, trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            return Path(ckpt.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _stop(self, trainer, pl_module, why: str, updated: bool = False) -> None:
        """Write the last good state and raise. ``updated``: the weights now are the result of the step found bad
        (a non-finite weight or output seen after the update), not of one before it."""
        kept = "no step had a finite loss yet, nothing was saved"
        if self._good is not None:
            state = self._good
            bad = [v for v in pl_module.state_dict().values() if v.is_floating_point()]
            path = self._where(trainer) / self.FILENAME
            trainer.strategy.save_checkpoint(state, path)  # rank zero writes
            pl_module.load_state_dict(state["state_dict"])
            kept = f"the training state of step {state['global_step']}, the last with a finite loss, is in {path}"
            if not all(torch.isfinite(v).all() for v in bad):
                kept += " (the current weights are not finite: the model now holds the saved ones)"
        elif not self.keep_finite:
            kept = "keep_finite is off, nothing was saved"
        raise NonFiniteLossError(
            f"stopping at step {trainer.global_step} (epoch {trainer.current_epoch}): {why}. "
            + ("" if updated else "The weights were not updated by this step; ")
            + f"{kept}. Try a smaller lr (resume from that file with --model.lr=...), a larger "
            "alpha or a smaller h."
        )


class TrainingInterrupted(SystemExit):
    """Training was stopped by SIGINT (Ctrl-C) or SIGTERM after the batch in flight, with ``last.ckpt`` saved.

    A ``SystemExit`` whose status is 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
    reports a process ended by that signal, so ``hamode fit ... && hamode test ...`` does not go on to test a
    half-trained model."""

    def __init__(self, signum: int, step: int, path: str | None) -> None:
        self.signum, self.step, self.path = signum, step, path
        super().__init__(128 + signum)


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` at the end of every completed epoch and when training is interrupted by SIGINT
    (Ctrl-C) or SIGTERM; the best-by-validation checkpoint is kept apart (``best.ckpt``).

    An interrupt is never acted on in the middle of a step: the first SIGINT or SIGTERM lets the batch in flight
    finish (its update applied and counted), then ``last.ckpt`` is saved at that batch boundary and training
    stops with [`TrainingInterrupted`][lightning_modules.TrainingInterrupted] (exit status 130 / 143). Resuming from
    it (``--ckpt_path last``) gives
    bit-identical weights to an uninterrupted run. A second Ctrl-C stops at once, without saving. A crash (any
    other exception) writes nothing: ``last.ckpt`` only ever holds a state training can continue from exactly.

    Args:
        dirpath: folder of the checkpoints (None: ``<log_dir>/checkpoints``, the run's own folder).
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            save_on_exception=False,
        )
        self._signal: int | None = None
        self._previous: dict[int, Any] = {}

    # ------------------------------------------------------------ signals
    def _on_signal(self, signum: int, frame) -> None:
        if self._signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C: stop now
        self._signal = signum
        print(
            f"\nhamode: {signal.Signals(signum).name} received: finishing the current batch, then saving last.ckpt "
            "and stopping (Ctrl-C again stops at once, without saving)",
            file=sys.stderr,
            flush=True,
        )

    def _install(self) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in self.SIGNALS:
            self._previous[signum] = signal.signal(signum, self._on_signal)

    def _uninstall(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler if handler is not None else signal.SIG_DFL)
        self._previous = {}

    def on_train_start(self, trainer, pl_module) -> None:
        # after Lightning has put its own SIGTERM handler in place (and noted the handlers to restore at teardown)
        self._signal = signal.SIGTERM if getattr(trainer, "received_sigterm", False) else None
        self._install()
        rank_zero_info("hamode: training; SIGINT (Ctrl-C) or SIGTERM stops after the current batch, last.ckpt saved")

    def on_train_end(self, trainer, pl_module) -> None:
        super().on_train_end(trainer, pl_module)
        self._uninstall()

    def teardown(self, trainer, pl_module, stage: str) -> None:
        self._uninstall()

    def _stop_if_signalled(self, trainer) -> None:
        asked = self._signal is not None
        if trainer.world_size > 1:  # every process stops at the same batch
            asked = trainer.strategy.reduce_boolean_decision(asked, all=False)
        if not asked:
            return
        filepath = self.format_checkpoint_name(metrics=self._monitor_candidates(trainer))
        self._save_checkpoint(trainer, filepath)
        signum = self._signal if self._signal is not None else signal.SIGTERM
        if trainer.is_global_zero:
            print(
                f"hamode: stopped by {signal.Signals(signum).name} after step {trainer.global_step} with the run's "
                f"state saved in {filepath}; resume it with --ckpt_path last (or that file)",
                file=sys.stderr,
                flush=True,
            )
        self._uninstall()
        raise TrainingInterrupted(signum, trainer.global_step, filepath)

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        self._stop_if_signalled(trainer)

    def on_train_epoch_end(self, trainer, pl_module) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        self._stop_if_signalled(trainer)

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._uninstall()


class PredictionWriter(L.Callback):
    """Writes ``hamode predict``'s predictions to a CSV file: one row per sample with its index, the
    predicted class, the class probabilities and the discretisation they were computed with.

    Args:
        path: the file (None: ``predictions.csv`` in this command's log folder, ``<run>/predict_K`` when
            ``--ckpt_path`` is a run's checkpoint, so no prediction overwrites another).
    """

    def __init__(self, path: str | None = None) -> None:
        super().__init__()
        self.path = path
        self._outputs: list[dict[str, torch.Tensor]] = []
        self.written: Path | None = None

    def _target(self, trainer) -> Path:
        if self.path:
            return Path(self.path)
        return Path(trainer.log_dir or trainer.default_root_dir) / "predictions.csv"

    def on_predict_epoch_start(self, trainer, pl_module) -> None:
        self._outputs = []

    def on_predict_batch_end(self, trainer, pl_module, outputs, batch, batch_idx, dataloader_idx=0) -> None:
        self._outputs.append({k: v.detach().cpu() for k, v in outputs.items()})

    def on_predict_epoch_end(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero or not self._outputs:
            return
        probs = torch.cat([p["probs"] for p in self._outputs])
        classes = torch.cat([p["class"] for p in self._outputs])
        # the discretisation of the model's Hamiltonian nets ("+"-joined where stages differ; none: a plain net)
        found = list(dict.fromkeys((n.integrator_name, n.substeps) for n in pl_module.hamiltonian_nets))
        integrator = "+".join(name for name, _ in found) or "none"
        substeps = "+".join(str(k) for _, k in found) or "0"
        path = self._target(trainer)
        path.parent.mkdir(parents=True, exist_ok=True)
        headers = ["index", "class", *(f"p_{k}" for k in range(probs.shape[1])), "integrator", "substeps"]
        rows = (
            [i, c, *(f"{v:.6g}" for v in p), integrator, substeps]
            for i, (c, p) in enumerate(zip(classes.tolist(), probs.tolist()))
        )
        write_csv(path, headers, rows)
        self.written = path
