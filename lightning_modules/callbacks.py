"""Callbacks: gradient-sensitivity monitoring and a guard against non-finite losses."""

from __future__ import annotations

from collections.abc import Sequence

import lightning as L
import torch

from hamode.diagnostics import backward_sensitivity, sensitivity_norms

__all__ = ["NonFiniteGuard", "NonFiniteLossError", "SensitivityMonitor"]


class SensitivityMonitor(L.Callback):
    """Logs ‖∂y_N/∂y_j‖₂ (per sample: mean/min/max over a fixed probe batch) and the smallest
    singular value of ∂y_N/∂y_j, every ``every_n_steps`` training steps.

    Args:
        every_n_steps: logging period in optimizer steps.
        layers: layer boundaries j to monitor (default: 0, N/4, N/2, 3N/4, N-1; all of them
            when ``full_curve``).
        probe_size: training samples in the probe batch (fixed at the start of training).
        full_curve: log every layer (default: on for the 2-D task, off for MNIST, where every
            pixel is a sample and the probe is larger).
    """

    def __init__(
        self,
        every_n_steps: int = 100,
        layers: Sequence[int] | None = None,
        probe_size: int = 16,
        full_curve: bool | None = None,
    ) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps, self.layers, self.probe_size, self.full_curve = (
            every_n_steps,
            layers,
            probe_size,
            full_curve,
        )
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
        net = getattr(pl_module, "net", None)
        if net is None or self._probe is None or trainer.global_step % self.every_n_steps:
            return
        model = pl_module.model
        full = self.full_curve if self.full_curve is not None else pl_module.hparams.task == "toy2d"
        layers = self._layers(net.n_layers, full)
        with torch.no_grad():
            y0 = model.embed(self._probe.to(pl_module.device))
        S = backward_sensitivity(net, y0, layers)
        stats = sensitivity_norms(S.flatten(1, -3))
        for i, j in enumerate(layers):
            for key in ("norm_mean", "norm_min", "norm_max", "sigma_min_min"):
                pl_module.log(f"sensitivity/{key}/layer_{j:03d}", stats[key][i].item(), on_step=True, on_epoch=False)
        pl_module.log(
            "sensitivity/min_norm",
            stats["norm_min"][:-1].min().item() if len(layers) > 1 else stats["norm_min"].min().item(),
            on_step=True,
            on_epoch=False,
        )


class NonFiniteLossError(RuntimeError):
    """Training hit a NaN/Inf loss or gradient; raised before the optimizer step could spread it."""


class NonFiniteGuard(L.Callback):
    """Stops training with a clear message when the loss or a gradient is NaN/Inf.

    Runs before the optimizer step, so the weights, and every checkpoint on disk, stay
    as they were after the last good step.
    """

    def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:
        loss = getattr(pl_module, "_last_loss", None)
        bad = None
        if loss is not None and not torch.isfinite(loss).all():
            bad = f"the loss is {loss.item()}"
        else:
            for name, p in pl_module.named_parameters():
                if p.grad is not None and not torch.isfinite(p.grad).all():
                    bad = f"the gradient of {name} is not finite (loss {loss.item() if loss is not None else '?'})"
                    break
        if bad is None:
            return
        last = getattr(trainer.checkpoint_callback, "last_model_path", "") or "none saved yet"
        raise NonFiniteLossError(
            f"stopping at step {trainer.global_step} (epoch {trainer.current_epoch}): {bad}. The weights were not "
            f"updated; the last good checkpoint is {last}. Try a smaller lr, a larger alpha or a smaller h."
        )
