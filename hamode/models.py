"""Plain nn.Modules built on HamiltonianNet: the 2-D classifier and the MNIST conv net of L4DC."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from .architectures import make_field
from .net import HamiltonianNet
from .validation import check_int

__all__ = ["MNISTHDNN", "Toy2DClassifier", "build_net", "resolve_t_end"]


def resolve_t_end(n_layers: int, t_end: float | None, h: float | None) -> float:
    """The final time from exactly one of ``t_end`` and the layer step ``h`` (``t_end = n_layers * h``)."""
    if (t_end is None) == (h is None):
        raise ValueError(f"give exactly one of t_end and h (got t_end={t_end!r}, h={h!r})")
    if h is not None:
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
            raise ValueError(f"h must be a number > 0, got {h!r}")
        return float(h) * n_layers
    return t_end


def build_net(
    architecture: str,
    dim: int,
    n_layers: int,
    t_end: float | None = None,
    h: float | None = None,
    integrator: str | None = None,
    substeps: int = 1,
    gradient: str = "backprop",
    activation: str = "tanh",
    width: int | None = None,
    weights: str = "piecewise",
    init: str = "default",
    solver_options: dict[str, Any] | None = None,
) -> HamiltonianNet:
    """A :class:`HamiltonianNet` from plain hyper-parameters (what configs and checkpoints store)."""
    field = make_field(
        architecture, dim=dim, n_layers=n_layers, width=width, activation=activation, weights=weights, init=init
    )
    return HamiltonianNet(
        field,
        resolve_t_end(n_layers, t_end, h),
        integrator=integrator,
        substeps=substeps,
        gradient=gradient,
        solver_options=solver_options,
    )


class Toy2DClassifier(nn.Module):
    """2-D points -> zero-padded state of size ``dim`` -> H-DNN -> linear head.

    Args:
        architecture, n_layers, t_end, h, integrator, substeps, gradient, activation, width, weights, init,
            solver_options: see :func:`build_net`.
        dim: state size n (>= 2; the papers use 4).
        positions: where the two input features go in the state (default: the first two).
        head: ``"logit"`` (one output, logistic loss: the papers) or ``"softmax"`` (two outputs).
    """

    def __init__(
        self,
        architecture: str = "H1_J1",
        dim: int = 4,
        n_layers: int = 16,
        t_end: float | None = None,
        h: float | None = None,
        integrator: str | None = None,
        substeps: int = 1,
        gradient: str = "backprop",
        activation: str = "tanh",
        width: int | None = None,
        weights: str = "piecewise",
        init: str = "default",
        solver_options: dict[str, Any] | None = None,
        positions: Sequence[int] | None = None,
        head: str = "logit",
    ) -> None:
        super().__init__()
        check_int("dim", dim, 2)
        positions = [0, 1] if positions is None else list(positions)
        if len(positions) != 2 or len(set(positions)) != 2 or not all(0 <= p < dim for p in positions):
            raise ValueError(f"positions must be two distinct indices in [0, {dim}), got {positions!r}")
        if head not in ("logit", "softmax"):
            raise ValueError(f"head must be 'logit' or 'softmax', got {head!r}")
        self.register_buffer("positions", torch.tensor(positions), persistent=False)
        self.dim = dim
        self.net = build_net(
            architecture,
            dim,
            n_layers,
            t_end,
            h,
            integrator,
            substeps,
            gradient,
            activation,
            width,
            weights,
            init,
            solver_options,
        )
        self.head_kind = head
        self.head = nn.Linear(dim, 1 if head == "logit" else 2)

    def embed(self, x: Tensor) -> Tensor:
        """The H-DNN's input state: the features placed in a zero state."""
        y0 = x.new_zeros(*x.shape[:-1], self.dim)
        return y0.index_copy(-1, self.positions, x)

    def features(self, x: Tensor) -> Tensor:
        return self.net(self.embed(x))

    def forward(self, x: Tensor) -> Tensor:
        """Logits: ``(B,)`` for the logistic head, ``(B, 2)`` for softmax."""
        out = self.head(self.features(x))
        return out.squeeze(-1) if self.head_kind == "logit" else out

    def regularization(self, alpha: float) -> Tensor:
        return self.net.regularization(alpha)


class MNISTHDNN(nn.Module):
    """L4DC's MNIST net: Conv2d(1 -> C, 3x3, padding 1) -> H-DNN on the C channels of every pixel
    (state ``(B, 28, 28, C)``, channels last, no spatial mixing) -> Linear(C·28·28 -> 10).

    ``n_layers = 0`` is the papers' "0 layers" baseline (conv + linear). Other arguments: see :func:`build_net`.
    """

    def __init__(
        self,
        architecture: str = "H2",
        channels: int = 8,
        n_layers: int = 4,
        t_end: float | None = None,
        h: float | None = None,
        integrator: str | None = None,
        substeps: int = 1,
        gradient: str = "backprop",
        activation: str = "tanh",
        width: int | None = None,
        weights: str = "piecewise",
        init: str = "default",
        solver_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("n_layers", n_layers, 0)
        self.conv = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.net = None
        if n_layers > 0:
            self.net = build_net(
                architecture,
                channels,
                n_layers,
                t_end,
                h,
                integrator,
                substeps,
                gradient,
                activation,
                width,
                weights,
                init,
                solver_options,
            )
        self.head = nn.Linear(channels * 28 * 28, 10)

    def embed(self, images: Tensor) -> Tensor:
        """The H-DNN's input state ``(B, 28, 28, C)``."""
        return self.conv(images).permute(0, 2, 3, 1).contiguous()

    def features(self, images: Tensor) -> Tensor:
        y = self.embed(images)
        return y if self.net is None else self.net(y)

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, 10)`` for images ``(B, 1, 28, 28)``."""
        return self.head(self.features(images).flatten(1))

    def regularization(self, alpha: float) -> Tensor:
        if self.net is None:
            return self.head.weight.new_zeros(())
        return self.net.regularization(alpha)
