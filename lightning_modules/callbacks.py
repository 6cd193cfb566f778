"""Callbacks: gradient-sensitivity monitoring and a guard against non-finite losses."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint

from hamode.diagnostics import layer_sensitivity
from hamode.models import hamiltonian_inputs
from hamode.validation import check_int

__all__ = ["LastCheckpoint", "NonFiniteGuard", "NonFiniteLossError", "PredictionWriter", "SensitivityMonitor"]


class SensitivityMonitor(L.Callback):
    """Logs ‖∂y_N/∂y_j‖₂ (per sample: mean/min/max over a fixed probe batch) and the smallest singular value of
    ∂y_N/∂y_j for every :class:`hamode.HamiltonianNet` inside the model (each stage of a CNN), every
    ``every_n_steps`` training steps. Small states get the exact BSM; image states the matrix-free Lanczos estimate
    (:func:`hamode.diagnostics.layer_sensitivity`).

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


class NonFiniteGuard(L.Callback):
    """Stops training with a clear message when the loss or a gradient is NaN/Inf, or the loss diverges.

    The loss is checked before the backward pass and the gradients before the optimizer step, so the
    weights are never updated by a bad step. The guard keeps (in memory) the weights of the last step
    whose loss was finite and not diverged; when it fires it writes them as ``last_finite.ckpt`` next to
    the run's other checkpoints and names that file (``last.ckpt``, the last completed epoch, is left as
    it was).

    Args:
        divergence_factor: stop when a step's loss exceeds this factor times the running minimum of the
            smoothed loss (an exponential moving average; None: no divergence check, only NaN/Inf).
        smoothing: weight of the past in that moving average, in [0, 1).
        keep_finite: keep a copy of the last good weights and write it when the guard fires (costs one
            copy of the model's state per step; False: only stop).
    """

    FILENAME = "last_finite.ckpt"

    def __init__(self, divergence_factor: float | None = 1e4, smoothing: float = 0.9, keep_finite: bool = True) -> None:
        super().__init__()
        if divergence_factor is not None and not (
            isinstance(divergence_factor, (int, float)) and math.isfinite(divergence_factor) and divergence_factor > 1
        ):
            raise ValueError(f"divergence_factor must be a finite number > 1 or None, got {divergence_factor!r}")
        if not (isinstance(smoothing, (int, float)) and 0 <= smoothing < 1):
            raise ValueError(f"smoothing must be a number in [0, 1), got {smoothing!r}")
        self.divergence_factor, self.smoothing, self.keep_finite = divergence_factor, float(smoothing), keep_finite
        self.smoothed: float | None = None
        self.running_min: float | None = None
        self._good: tuple[int, dict[str, torch.Tensor]] | None = None
        self._loss: float | None = None

    def state_dict(self) -> dict[str, Any]:
        return {"smoothed": self.smoothed, "running_min": self.running_min}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.smoothed, self.running_min = state_dict.get("smoothed"), state_dict.get("running_min")

    def on_before_backward(self, trainer, pl_module, loss) -> None:
        value = float(loss.detach())
        self._loss = value
        if not math.isfinite(value):
            self._stop(trainer, pl_module, f"the loss is {value}")
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
        if self.keep_finite:  # these weights gave a finite, non-diverged loss
            self._good = (trainer.global_step, {k: v.detach().clone() for k, v in pl_module.state_dict().items()})

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        for name, p in pl_module.named_parameters():
            if p.grad is not None and not torch.isfinite(p.grad).all():
                self._stop(trainer, pl_module, f"the gradient of {name} is not finite (loss {self._loss})")

    def _where(self, trainer) -> Path:
        ckpt = trainer.checkpoint_callback
        if ckpt is not None and getattr(ckpt, "dirpath", None):
            return Path(ckpt.dirpath)
        return Path(trainer.log_dir or trainer.default_root_dir)

    def _stop(self, trainer, pl_module, why: str) -> None:
        kept = "no step had a finite loss yet, nothing was saved"
        if self._good is not None and trainer.is_global_zero:
            step, state = self._good
            bad = {k: v.detach().clone() for k, v in pl_module.state_dict().items()}
            pl_module.load_state_dict(state)
            path = self._where(trainer) / self.FILENAME
            path.parent.mkdir(parents=True, exist_ok=True)
            trainer.save_checkpoint(path)
            kept = f"the weights of step {step}, the last with a finite loss, are in {path}"
            if not all(torch.isfinite(v).all() for v in bad.values() if v.is_floating_point()):
                kept += " (the current weights are not finite: the model now holds the saved ones)"
        elif not self.keep_finite:
            kept = "keep_finite is off, nothing was saved"
        raise NonFiniteLossError(
            f"stopping at step {trainer.global_step} (epoch {trainer.current_epoch}): {why}. The weights were not "
            f"updated by this step; {kept}. Try a smaller lr, a larger alpha or a smaller h."
        )


class LastCheckpoint(ModelCheckpoint):
    """Writes ``last.ckpt`` at the end of every completed epoch, and on an interrupt (Ctrl-C, a crash),
    whatever the validation metric did; the best-by-validation checkpoint is kept apart (``best.ckpt``).

    Not on a :class:`NonFiniteLossError`: then the guard has written ``last_finite.ckpt`` and ``last.ckpt``
    stays the last completed epoch.

    Args:
        dirpath: folder of the checkpoints (None: ``<log_dir>/checkpoints``, the run's own folder).
    """

    def __init__(self, dirpath: str | None = None) -> None:
        super().__init__(
            dirpath=dirpath,
            filename="last",
            monitor=None,
            save_top_k=1,
            save_last=False,
            enable_version_counter=False,
            save_on_exception=True,
        )

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        if not isinstance(exception, NonFiniteLossError):
            super().on_exception(trainer, pl_module, exception)


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
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["index", "class", *(f"p_{k}" for k in range(probs.shape[1])), "integrator", "substeps"])
            for i, (c, p) in enumerate(zip(classes.tolist(), probs.tolist())):
                w.writerow([i, c, *(f"{v:.6g}" for v in p), integrator, substeps])
        self.written = path
