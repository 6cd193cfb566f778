"""Plain nn.Modules built on HamiltonianNet: the 2-D classifier, the MNIST net of L4DC and a Hamiltonian CNN."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .architectures import architecture_info, list_architectures, make_field
from .net import HamiltonianNet
from .validation import check_int

__all__ = ["MNISTHDNN", "HamiltonianCNN", "Toy2DClassifier", "build_net", "resolve_t_end"]


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
    images: bool = False,
    field_options: dict[str, Any] | None = None,
) -> HamiltonianNet:
    """A :class:`HamiltonianNet` from plain hyper-parameters (what configs and checkpoints store).

    ``images``: whether the caller feeds image states ``(B, C, H, W)``; an image architecture (ConvH1, ConvH2) is
    refused otherwise, and a dense one when it is set. ``field_options``: further arguments of the field class
    (``kernel_size``, ...)."""
    image_field = architecture_info(architecture).field_class.state_rank == 3
    if image_field != images:
        kind = "an image" if images else "a dense"
        allowed = [a for a in list_architectures() if (architecture_info(a).field_class.state_rank == 3) == images]
        states = "image states (B, C, H, W)" if image_field else "(..., dim) states"
        raise ValueError(
            f"architecture {architecture!r} acts on {states}, but this model needs {kind} field: choose one of "
            f"{', '.join(allowed)}"
        )
    field = make_field(
        architecture,
        dim=dim,
        n_layers=n_layers,
        width=width,
        activation=activation,
        weights=weights,
        init=init,
        **(field_options or {}),
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

    The net's arguments (``architecture``, ``n_layers``, ``t_end``, ``h``, ``integrator``, ``substeps``,
    ``gradient``, ``activation``, ``width``, ``weights``, ``init``, ``solver_options``) are those of
    :func:`build_net`.

    Args:
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


class HamiltonianCNN(nn.Module):
    """A multi-stage Hamiltonian CNN for images ``(B, in_channels, H, W)``.

    A stem convolution (3x3, ``in_channels -> channels[0]``), then per stage a :class:`HamiltonianNet` on an
    image field (``ConvH2`` or ``ConvH1_J1``/``ConvH1_J2``: its symplectic flow, TAC's lower bound under
    symplectic Euler and exact reversibility hold inside the stage), between stages a **non-Hamiltonian**
    transition that halves the resolution and changes the channels (``"conv"``: a 3x3 convolution with stride
    2; ``"pool"``: 2x2 average pooling and a 1x1 convolution), global average pooling and a linear head.

    Args:
        in_channels: image channels.
        n_classes: outputs of the head.
        channels: channels of each stage (even for ConvH2).
        layers: Hamiltonian layers of each stage (same length as ``channels``).
        architecture: the stages' image field.
        h: the layer step of every stage (``t_end = h * layers``).
        integrator: the stages' integrator (None: the architecture's default).
        substeps: integrator steps per layer.
        gradient: ``"backprop"`` or ``"reversible"`` (see :class:`hamode.HamiltonianNet`).
        activation: the fields' activation.
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"``.
        init: ``"default"`` or ``"normal"``.
        solver_options: options of a torchdiffeq solve.
        width: hidden channels of the fields' convolutions (None: the field's default).
        kernel_size: the fields' convolution kernel.
        transition: ``"conv"`` or ``"pool"``.
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        layers: Sequence[int] = (4, 4),
        architecture: str = "ConvH2",
        h: float = 0.2,
        integrator: str | None = None,
        substeps: int = 1,
        gradient: str = "backprop",
        activation: str = "tanh",
        width: int | None = None,
        kernel_size: int = 3,
        transition: Literal["conv", "pool"] = "conv",
        weights: str = "piecewise",
        init: str = "default",
        solver_options: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        channels, layers = list(channels), list(layers)
        if not channels or len(channels) != len(layers):
            raise ValueError(
                f"channels and layers must name the same stages (one entry each), got {channels} and {layers}"
            )
        for c in channels:
            check_int("channels", c, 1)
        for n in layers:
            check_int("layers", n, 1)
        if transition not in ("conv", "pool"):
            raise ValueError(f"transition must be 'conv' or 'pool', got {transition!r}")
        self.stem = nn.Conv2d(check_int("in_channels", in_channels, 1), channels[0], 3, padding=1)
        self.stages = nn.ModuleList(
            build_net(
                architecture,
                c,
                n,
                None,
                h,
                integrator,
                substeps,
                gradient,
                activation,
                width,
                weights,
                init,
                solver_options,
                images=True,
                field_options={"kernel_size": kernel_size},
            )
            for c, n in zip(channels, layers)
        )
        self.transitions = nn.ModuleList()
        for c_in, c_out in itertools.pairwise(channels):
            if transition == "conv":
                self.transitions.append(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1))
            else:
                self.transitions.append(nn.Sequential(nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1)))
        self.head = nn.Linear(channels[-1], check_int("n_classes", n_classes, 1))

    def features(self, images: Tensor) -> Tensor:
        """The last stage's output ``(B, channels[-1], H', W')``."""
        y = self.stem(images)
        for i, net in enumerate(self.stages):
            if i:
                y = self.transitions[i - 1](y)
            y = net(y)
        return y

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, n_classes)``."""
        return self.head(self.features(images).mean((-2, -1)))

    def regularization(self, alpha: float) -> Tensor:
        """The smoothness regulariser summed over the stages."""
        return sum((net.regularization(alpha) for net in self.stages), self.head.weight.new_zeros(()))
