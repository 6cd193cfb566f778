"""Plain nn.Modules built on HamiltonianNet: the 2-D classifier, the MNIST net of L4DC, a Hamiltonian CNN and its
ResNet baseline; helpers that find the Hamiltonian nets inside any model."""

from __future__ import annotations

import inspect
import itertools
from collections.abc import Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .activations import get_activation
from .architectures import architecture_info, list_architectures, make_field
from .net import GradientMode, HamiltonianNet, OptionValue, SolverOptions
from .validation import check_int

ActivationName = Literal["tanh", "relu", "sigmoid"]
WeightsMode = Literal["piecewise", "constant", "linear"]
InitMode = Literal["default", "normal"]

__all__ = [
    "MNISTHDNN",
    "HamiltonianCNN",
    "RecordsInitArgs",
    "ResidualBlocks",
    "ResidualCNN",
    "StagedCNN",
    "Toy2DClassifier",
    "build_net",
    "hamiltonian_inputs",
    "hamiltonian_nets",
    "resolve_t_end",
]


def _plain(value: Any) -> Any:
    """``value`` as YAML-able data (tuples become lists); raises TypeError for anything else."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict) and all(isinstance(k, str) for k in value):
        return {k: _plain(v) for k, v in value.items()}
    raise TypeError(f"not plain data: {type(value).__name__}")


class RecordsInitArgs:
    """Mixin for models: records the constructor's arguments as ``init_config`` (``{"class_path": ...,
    "init_args": {...}}``, the form of a LightningCLI config), so that a training system given the built model can
    store how to rebuild it (``HDNNClassifier`` saves it with the checkpoint). ``init_config`` is None when an
    argument is not plain data (a tensor, a module)."""

    init_config: dict[str, Any] | None

    def __new__(cls, *args: Any, **kwargs: Any):
        self = super().__new__(cls)
        config = None
        try:
            bound = inspect.signature(cls.__init__).bind(self, *args, **kwargs)
            bound.apply_defaults()
            init_args = {k: _plain(v) for k, v in list(bound.arguments.items())[1:]}
            config = {"class_path": f"{cls.__module__}.{cls.__qualname__}", "init_args": init_args}
        except TypeError:  # bad arguments (__init__ will say so) or arguments that are not plain data
            pass
        object.__setattr__(self, "init_config", config)  # before nn.Module.__init__: a plain attribute
        return self


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
    solver_options: SolverOptions | None = None,
    images: bool = False,
    field_options: dict[str, OptionValue] | None = None,
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


class Toy2DClassifier(RecordsInitArgs, nn.Module):
    """2-D points -> zero-padded state of size ``dim`` -> H-DNN -> linear head.

    Args:
        architecture: the Hamiltonian field, one of {DENSE}.
        dim: state size n (>= 2; the papers use 4).
        n_layers: layers N.
        t_end: final time T of the flow (give t_end or h, not both).
        h: layer step, T = n_layers * h (give t_end or h, not both).
        integrator: the discretisation, one of {INTEGRATORS}, or ``torchdiffeq:<method>`` (e.g.
            torchdiffeq:dopri5), or None for the architecture's default.
        substeps: integrator steps per layer (>= 1).
        gradient: ``backprop`` (through the steps), ``reversible`` (O(1) memory: states rebuilt by the inverse
            step; invertible rules only) or ``adjoint`` (torchdiffeq's adjoint solve).
        activation: the activation σ of the field.
        width: hidden size m of K (None: the architecture's default).
        weights: ``piecewise`` (one weight set per layer, the papers), ``constant`` (a time-invariant ODE) or
            ``linear`` (interpolated between N + 1 nodes).
        init: ``default`` (N(0, 1/fan_in) matrices) or ``normal`` (N(0, 1), the papers' 2-D recipe).
        solver_options: options of a torchdiffeq solve, e.g. {{rtol: 1e-4, atol: 1e-5}}.
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
        gradient: GradientMode = "backprop",
        activation: ActivationName = "tanh",
        width: int | None = None,
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        solver_options: SolverOptions | None = None,
        positions: Sequence[int] | None = None,
        head: Literal["logit", "softmax"] = "logit",
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
        self.n_classes = 2
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


class MNISTHDNN(RecordsInitArgs, nn.Module):
    """L4DC's MNIST net: Conv2d(1 -> C, 3x3, padding 1) -> H-DNN on the C channels of every pixel
    (state ``(B, 28, 28, C)``, channels last, no spatial mixing) -> Linear(C·28·28 -> 10).

    Args:
        architecture: the Hamiltonian field, one of {DENSE}.
        channels: channels C of every pixel (the H-DNN's state size).
        n_layers: layers N (0: the papers' "0 layers" baseline, conv + linear, without an H-DNN).
        t_end: final time T of the flow (give t_end or h, not both).
        h: layer step, T = n_layers * h (give t_end or h, not both).
        integrator: the discretisation, one of {INTEGRATORS}, or ``torchdiffeq:<method>``, or None for the
            architecture's default.
        substeps: integrator steps per layer (>= 1).
        gradient: ``backprop``, ``reversible`` or ``adjoint`` (see :class:`hamode.HamiltonianNet`).
        activation: the activation σ of the field.
        width: hidden size m of K (None: the architecture's default).
        weights: ``piecewise``, ``constant`` or ``linear`` (see :class:`Toy2DClassifier`).
        init: ``default`` or ``normal``.
        solver_options: options of a torchdiffeq solve.
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
        gradient: GradientMode = "backprop",
        activation: ActivationName = "tanh",
        width: int | None = None,
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        solver_options: SolverOptions | None = None,
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
        self.n_classes = 10
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


def _check_stages(channels: Sequence[int], layers: Sequence[int]) -> tuple[list[int], list[int]]:
    channels, layers = list(channels), list(layers)
    if not channels or len(channels) != len(layers):
        raise ValueError(f"channels and layers must name the same stages (one entry each), got {channels} and {layers}")
    for c in channels:
        check_int("channels", c, 1)
    for n in layers:
        check_int("layers", n, 1)
    return channels, layers


class StagedCNN(RecordsInitArgs, nn.Module):
    """The frame of the image models: stem, stages at decreasing resolution, transitions, pooling, head.

    A stem convolution (3x3, ``in_channels -> channels[0]``, stride ``stem_stride``), then the stages (built by the
    subclass's :meth:`make_stage`), between stages a **non-Hamiltonian** transition that halves the resolution and
    changes the channels (``"conv"``: a 3x3 convolution with stride 2; ``"pool"``: 2x2 average pooling and a 1x1
    convolution),
    global average pooling and a linear head. With ``norm="batch"`` the stem and every transition are followed by
    batch normalisation and a ReLU (the non-linear, non-Hamiltonian part of the model, stated as such; without it
    the stem and the transitions are linear maps).

    Args:
        in_channels: image channels.
        n_classes: outputs of the head.
        channels: channels of each stage.
        layers: layers of each stage (same length as ``channels``).
        transition: ``"conv"`` or ``"pool"``.
        norm: ``"batch"`` or ``"none"``.
        stem_stride: 1 (the first stage at the input resolution) or 2 (at half of it).
    """

    def __init__(
        self,
        in_channels: int,
        n_classes: int,
        channels: Sequence[int],
        layers: Sequence[int],
        transition: Literal["conv", "pool"],
        norm: Literal["batch", "none"],
        stem_stride: int = 1,
    ) -> None:
        super().__init__()
        channels, layers = _check_stages(channels, layers)
        if isinstance(stem_stride, bool) or stem_stride not in (1, 2):
            raise ValueError(f"stem_stride must be 1 or 2, got {stem_stride!r}")
        if transition not in ("conv", "pool"):
            raise ValueError(f"transition must be 'conv' or 'pool', got {transition!r}")
        if norm not in ("batch", "none"):
            raise ValueError(f"norm must be 'batch' or 'none', got {norm!r}")
        self.channels, self.layers = channels, layers
        self.n_classes = check_int("n_classes", n_classes, 1)

        def post(c: int) -> list[nn.Module]:
            return [nn.BatchNorm2d(c), nn.ReLU()] if norm == "batch" else []

        c_in = check_int("in_channels", in_channels, 1)
        stem = nn.Conv2d(c_in, channels[0], 3, stride=stem_stride, padding=1, bias=norm != "batch")
        self.stem = nn.Sequential(stem, *post(channels[0]))
        self.stages = nn.ModuleList(self.make_stage(c, n) for c, n in zip(channels, layers))
        self.transitions = nn.ModuleList()
        for c_in, c_out in itertools.pairwise(channels):
            if transition == "conv":
                step = [nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=norm != "batch")]
            else:
                step = [nn.AvgPool2d(2), nn.Conv2d(c_in, c_out, 1, bias=norm != "batch")]
            self.transitions.append(nn.Sequential(*step, *post(c_out)))
        self.head = nn.Linear(channels[-1], self.n_classes)

    def make_stage(self, channels: int, layers: int) -> nn.Module:
        """One stage: a module from ``(B, channels, H, W)`` to the same shape."""
        raise NotImplementedError

    def features(self, images: Tensor) -> Tensor:
        """The last stage's output ``(B, channels[-1], H', W')``."""
        y = self.stem(images)
        for i, stage in enumerate(self.stages):
            if i:
                y = self.transitions[i - 1](y)
            y = stage(y)
        return y

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, n_classes)`` for images ``(B, in_channels, H, W)``."""
        return self.head(self.features(images).mean((-2, -1)))


class HamiltonianCNN(StagedCNN):
    """A multi-stage Hamiltonian CNN for images ``(B, in_channels, H, W)``.

    The frame of :class:`StagedCNN` (stem, transitions, pooling, head) around stages that are each a
    :class:`HamiltonianNet` on an image field (``ConvH2`` or ``ConvH1_J1``/``ConvH1_J2``): inside a stage the flow is
    symplectic, TAC's lower bound ``‖∂y_N/∂y_j‖ ≥ 1`` holds under symplectic Euler and the stage is exactly
    reversible. The stem and the transitions are not Hamiltonian (see ``norm``).

    Args:
        in_channels: image channels.
        n_classes: outputs of the head.
        channels: channels of each stage (even for ConvH2).
        layers: Hamiltonian layers of each stage (same length as ``channels``).
        architecture: the stages' image field, one of {IMAGE}.
        h: the layer step of every stage (``t_end = h * layers``).
        integrator: the stages' integrator, one of {INTEGRATORS} (None: the architecture's default).
        substeps: integrator steps per layer.
        gradient: ``"backprop"``, ``"reversible"`` or ``"adjoint"`` (see :class:`hamode.HamiltonianNet`).
        activation: the fields' activation.
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"``.
        init: ``"default"`` or ``"normal"``.
        solver_options: options of a torchdiffeq solve.
        width: hidden channels of the fields' convolutions (None: the field's default).
        kernel_size: the fields' convolution kernel.
        transition: ``"conv"`` or ``"pool"``.
        norm: ``"batch"`` (batch normalisation and ReLU after the stem and each transition) or ``"none"``.
        stem_stride: 1 (the first stage at the input resolution) or 2 (at half of it).
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
        gradient: GradientMode = "backprop",
        activation: ActivationName = "tanh",
        width: int | None = None,
        kernel_size: int = 3,
        transition: Literal["conv", "pool"] = "conv",
        norm: Literal["batch", "none"] = "batch",
        stem_stride: int = 1,
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        solver_options: SolverOptions | None = None,
    ) -> None:
        self._stage_args = dict(
            architecture=architecture,
            h=h,
            integrator=integrator,
            substeps=substeps,
            gradient=gradient,
            activation=activation,
            width=width,
            weights=weights,
            init=init,
            solver_options=solver_options,
            images=True,
            field_options={"kernel_size": kernel_size},
        )
        super().__init__(in_channels, n_classes, channels, layers, transition, norm, stem_stride)

    def make_stage(self, channels: int, layers: int) -> HamiltonianNet:
        return build_net(dim=channels, n_layers=layers, **self._stage_args)

    def regularization(self, alpha: float) -> Tensor:
        """The smoothness regulariser summed over the stages."""
        return sum((net.regularization(alpha) for net in self.stages), self.head.weight.new_zeros(()))


class ResidualBlocks(nn.Module):
    """``n`` residual blocks ``y + h K₂ σ(K₁ y + b₁) + h b₂`` on ``(B, C, H, W)`` with free 3x3 convolutions K₁ (C -> m)
    and K₂ (m -> C): the ResNet counterpart of an H-DNN stage (the same explicit-Euler form and width, no
    Hamiltonian structure, so none of its guarantees)."""

    def __init__(
        self,
        channels: int,
        n_layers: int,
        width: int | None = None,
        h: float = 0.2,
        activation: ActivationName = "tanh",
        kernel_size: int = 3,
    ) -> None:
        super().__init__()
        m = channels if width is None else check_int("width", width, 1)
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not h > 0:
            raise ValueError(f"h must be a number > 0, got {h!r}")
        self.h = float(h)
        self.sigma = get_activation(activation).sigma
        pad = kernel_size // 2
        self.inner = nn.ModuleList(nn.Conv2d(channels, m, kernel_size, padding=pad) for _ in range(n_layers))
        self.outer = nn.ModuleList(nn.Conv2d(m, channels, kernel_size, padding=pad) for _ in range(n_layers))

    def forward(self, y: Tensor) -> Tensor:
        for k1, k2 in zip(self.inner, self.outer):
            y = y + self.h * k2(self.sigma(k1(y)))
        return y


class ResidualCNN(StagedCNN):
    """The non-Hamiltonian baseline of :class:`HamiltonianCNN`: the same stem, transitions, pooling and head, with
    stages of :class:`ResidualBlocks` (a plain ResNet of the same width and depth).

    Args:
        in_channels: image channels.
        n_classes: outputs of the head.
        channels: channels of each stage.
        layers: residual blocks of each stage.
        h: the blocks' step.
        activation: the blocks' activation.
        width: hidden channels of each block (None: the stage's channels).
        kernel_size: the blocks' convolution kernel (odd).
        transition: ``"conv"`` or ``"pool"``.
        norm: ``"batch"`` or ``"none"`` (see :class:`StagedCNN`).
        stem_stride: 1 or 2 (see :class:`StagedCNN`).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        layers: Sequence[int] = (4, 4),
        h: float = 0.2,
        activation: ActivationName = "tanh",
        width: int | None = None,
        kernel_size: int = 3,
        transition: Literal["conv", "pool"] = "conv",
        norm: Literal["batch", "none"] = "batch",
        stem_stride: int = 1,
    ) -> None:
        if kernel_size % 2 == 0 or kernel_size < 1:
            raise ValueError(f"kernel_size must be an odd int >= 1, got {kernel_size!r}")
        self._block_args = dict(width=width, h=h, activation=activation, kernel_size=kernel_size)
        super().__init__(in_channels, n_classes, channels, layers, transition, norm, stem_stride)

    def make_stage(self, channels: int, layers: int) -> ResidualBlocks:
        return ResidualBlocks(channels, layers, **self._block_args)


def hamiltonian_nets(model: nn.Module) -> list[HamiltonianNet]:
    """Every :class:`HamiltonianNet` inside ``model`` (itself included), in module order."""
    return [m for m in model.modules() if isinstance(m, HamiltonianNet)]


@torch.no_grad()
def hamiltonian_inputs(model: nn.Module, x: Tensor) -> list[tuple[HamiltonianNet, Tensor]]:
    """The input state of every :class:`HamiltonianNet` inside ``model`` when ``model(x)`` runs (one forward pass,
    no gradient), in the order they ran: what the diagnostics need for any model, a user's own too."""
    seen: list[tuple[HamiltonianNet, Tensor]] = []
    hooks = [
        net.register_forward_pre_hook(lambda net, args: seen.append((net, args[0].detach().clone())))
        for net in hamiltonian_nets(model)
    ]
    try:
        model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return seen


def _document_choices() -> None:
    """The architecture and integrator names in the models' help come from the registries (they cannot go stale)."""
    from .integrators import list_integrators

    image = [a for a in list_architectures() if architecture_info(a).field_class.state_rank == 3]
    dense = [a for a in list_architectures() if a not in image]
    names = {"DENSE": ", ".join(dense), "IMAGE": ", ".join(image), "INTEGRATORS": ", ".join(list_integrators())}
    for cls in (Toy2DClassifier, MNISTHDNN, HamiltonianCNN):
        cls.__doc__ = cls.__doc__.format(**names)


_document_choices()
