"""Plain nn.Modules built on HamiltonianNet: the 2-D classifier, the MNIST net of L4DC, a Hamiltonian CNN and its
ResNet baseline; helpers that find the Hamiltonian nets inside any model."""

from __future__ import annotations

import dataclasses
import functools
import inspect
import itertools
import math
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from .activations import ActivationName, get_activation
from .architectures import architecture_info, list_architectures, make_field
from .fields.base import InitMode, WeightsMode
from .fields.conv import ConvDtype
from .net import GradientMode, HamiltonianNet, OptionValue, SolverOptions
from .validation import check_int

__all__ = [
    "MNISTHDNN",
    "NET_ARGUMENT_HELP",
    "HamiltonianCNN",
    "NetArguments",
    "RecordsInitArgs",
    "ResidualBlocks",
    "ResidualCNN",
    "SetsIntegrator",
    "StagedCNN",
    "Toy2DClassifier",
    "build_net",
    "channels_last",
    "hamiltonian_inputs",
    "hamiltonian_nets",
    "net_arguments",
    "resolve_t_end",
    "takes_net_arguments",
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


class SetsIntegrator:
    """Mixin for models that contain [`HamiltonianNet`][hamode.HamiltonianNet] modules (the flow of a per-pixel net,
    the stages of a CNN): one call changes the discretisation of all of them, and the model's recorded arguments
    (``init_config``, what a checkpoint rebuilds it from) follow."""

    def set_integrator(self, integrator: str, substeps: int | None = None) -> None:
        """Run every Hamiltonian net of the model under ``integrator`` with ``substeps`` per layer (None: each
        net's current value). Checked for every net first: a call that raises changes nothing."""
        nets = hamiltonian_nets(self)  # type: ignore[arg-type]
        if not nets:
            raise ValueError(f"{type(self).__name__} holds no hamode.HamiltonianNet: there is no integrator to set")
        before = [(net.integrator_name, net.substeps) for net in nets]
        try:
            for net in nets:
                net.set_integrator(integrator, substeps)
        except Exception:
            for net, (name, k) in zip(nets, before):
                net.set_integrator(name, k)
            raise
        config = getattr(self, "init_config", None)
        if config is not None and "integrator" in config["init_args"]:
            config["init_args"]["integrator"] = nets[0].integrator_name
            config["init_args"]["substeps"] = nets[0].substeps

    @property
    def discretisation(self) -> tuple[str, int] | None:
        """``(integrator, substeps)`` of the model's Hamiltonian nets (None without one); a ValueError when they
        differ (one was changed on its own)."""
        found = {(net.integrator_name, net.substeps) for net in hamiltonian_nets(self)}  # type: ignore[arg-type]
        if len(found) > 1:
            name = type(self).__name__
            raise ValueError(f"the Hamiltonian nets of this {name} run different discretisations: {sorted(found)}")
        return found.pop() if found else None


def resolve_t_end(n_layers: int, t_end: float | None, h: float | None, default_h: float | None = None) -> float:
    """The final time from exactly one of ``t_end`` and the layer step ``h`` (``t_end = n_layers * h``); when
    neither is given, from the model's ``default_h``."""
    if t_end is None and h is None and default_h is not None:
        h = default_h
    if (t_end is None) == (h is None):
        raise ValueError(f"give exactly one of t_end and h (got t_end={t_end!r}, h={h!r})")
    for name, value in (("h", h), ("t_end", t_end)):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0
        ):
            raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(h) * n_layers if h is not None else float(t_end)


@dataclass(frozen=True)
class NetArguments:
    """The arguments of a model's Hamiltonian net: one schema (names, types with their ``Literal`` choices, defaults
    and, in [`NET_ARGUMENT_HELP`][hamode.models.NET_ARGUMENT_HELP], help) that
    [`build_net()`][hamode.models.build_net] and every model take, through
    [`takes_net_arguments()`][hamode.models.takes_net_arguments]. A new argument is added here and in the help,
    nowhere else."""

    architecture: str = "H2"
    n_layers: int = 4
    t_end: float | None = None
    h: float | None = None
    integrator: str | None = None
    substeps: int = 1
    gradient: GradientMode = "backprop"
    activation: ActivationName = "tanh"
    width: int | None = None
    weights: WeightsMode = "piecewise"
    init: InitMode = "default"
    solver_options: SolverOptions | None = None


NET_ARGUMENT_HELP: dict[str, str] = {
    "architecture": "the Hamiltonian field, one of {ARCHITECTURES}.",
    "n_layers": "layers N.",
    "t_end": "final time T of the flow (give t_end or h, not both).",
    "h": "layer step, T = n_layers * h (give t_end or h, not both).",
    "integrator": (
        "the discretisation, one of {INTEGRATORS}, or ``torchdiffeq:<method>`` (e.g. torchdiffeq:dopri5), or None "
        "for the architecture's default."
    ),
    "substeps": "integrator steps per layer (>= 1).",
    "gradient": (
        "``backprop`` (through the steps), ``reversible`` (O(1) memory: states rebuilt by the inverse step; "
        "invertible rules only) or ``adjoint`` (torchdiffeq's adjoint solve)."
    ),
    "activation": "the activation σ of the field.",
    "width": "hidden size m of K (None: the architecture's default).",
    "weights": (
        "``piecewise`` (one weight set per layer, the papers), ``constant`` (a time-invariant ODE) or ``linear`` "
        "(interpolated between N + 1 nodes)."
    ),
    "init": "``default`` (N(0, 1/fan_in) matrices) or ``normal`` (N(0, 1), the papers' 2-D recipe).",
    "solver_options": "options of a torchdiffeq solve, e.g. {{rtol: 1e-4, atol: 1e-5}}.",
}
"""Help of each [`NetArguments`][hamode.models.NetArguments] field (``{ARCHITECTURES}`` and ``{INTEGRATORS}`` are
filled from the
registries when the models' docs are made)."""


def build_net(
    dim: int,
    args: NetArguments,
    images: bool = False,
    field_options: dict[str, OptionValue] | None = None,
    default_h: float | None = None,
) -> HamiltonianNet:
    """A [`HamiltonianNet`][hamode.HamiltonianNet] on states of size ``dim`` from the plain hyper-parameters
    ``args`` (what configs
    and checkpoints store).

    ``images``: whether the caller feeds image states ``(B, C, H, W)``; an image architecture (ConvH1, ConvH2) is
    refused otherwise, and a dense one when it is set. ``field_options``: further arguments of the field class
    (``kernel_size``, ...). ``default_h``: the layer step when ``args`` gives neither ``t_end`` nor ``h``."""
    if not isinstance(args, NetArguments):
        raise TypeError(f"args must be a NetArguments, got {type(args).__name__}")
    architecture = args.architecture
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
        n_layers=args.n_layers,
        width=args.width,
        activation=args.activation,
        weights=args.weights,
        init=args.init,
        **(field_options or {}),
    )
    return HamiltonianNet(
        field,
        resolve_t_end(args.n_layers, args.t_end, args.h, default_h),
        integrator=args.integrator,
        substeps=args.substeps,
        gradient=args.gradient,
        solver_options=args.solver_options,
    )


def takes_net_arguments(
    *, first: tuple[str, ...] = (), after: str | None = None, exclude: tuple[str, ...] = (), **defaults: Any
):
    """Class decorator: the model's ``__init__(self, <own arguments>, **net)`` takes the
    [`NetArguments`][hamode.models.NetArguments] too.

    Its public signature (what ``inspect.signature``, jsonargparse's ``--help`` and configs see) is the model's own
    arguments with the schema's inserted: ``first`` at the front, the others after the own argument ``after``
    (``exclude``: schema fields the model does not take; ``defaults``: the model's own defaults for schema fields).
    The wrapped ``__init__`` receives the schema's values in ``**net``; their help is added to the class
    docstring's Args from [`NET_ARGUMENT_HELP`][hamode.models.NET_ARGUMENT_HELP]."""
    hints = typing.get_type_hints(NetArguments)
    schema = {f.name: f for f in dataclasses.fields(NetArguments) if f.name not in exclude}
    unknown = set(defaults) - set(schema)
    if unknown:
        raise TypeError(f"takes_net_arguments: no net argument {', '.join(sorted(unknown))}")

    def parameter(name: str) -> inspect.Parameter:
        default = defaults.get(name, schema[name].default)
        return inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=default, annotation=hints[name])

    def deco(cls):
        init = cls.__init__
        own = [p for p in inspect.signature(init).parameters.values() if p.kind is not inspect.Parameter.VAR_KEYWORD]
        cut = 1 if after is None else [p.name for p in own].index(after) + 1
        rest = [n for n in schema if n not in first]
        public = inspect.signature(init).replace(
            parameters=[own[0], *map(parameter, first), *own[1:cut], *map(parameter, rest), *own[cut:]]
        )
        names = [*first, *rest]

        @functools.wraps(init)
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            bound = public.bind(self, *args, **kwargs)
            bound.apply_defaults()
            values = dict(list(bound.arguments.items())[1:])
            init(self, **{k: v for k, v in values.items() if k not in names}, **{k: values[k] for k in names})

        __init__.__signature__ = public  # type: ignore[attr-defined]
        cls.__init__ = __init__
        cls.__doc__ = _with_net_help(cls.__doc__ or "", first, rest, after)
        return cls

    return deco


def net_arguments(values: dict[str, Any]) -> NetArguments:
    """The [`NetArguments`][hamode.models.NetArguments] among a model's ``**net`` (the schema fields it excludes
    keep their defaults)."""
    return NetArguments(**{k: v for k, v in values.items() if k in NetArguments.__dataclass_fields__})


def _with_net_help(doc: str, first: tuple[str, ...], rest: list[str], after: str | None) -> str:
    """The docstring with the schema's entries in its Args block (``first`` at its top, ``rest`` after ``after``)."""
    lines = doc.split("\n")
    start = next(i for i, line in enumerate(lines) if line.strip() == "Args:")
    indent = " " * (len(lines[start + 1]) - len(lines[start + 1].lstrip()))

    def entries(names) -> list[str]:
        return [f"{indent}{n}: {NET_ARGUMENT_HELP[n]}" for n in names]

    at = start + 1
    if after is not None:
        at = next(i for i in range(start + 1, len(lines)) if lines[i].startswith(f"{indent}{after}:")) + 1
        while at < len(lines) and lines[at].startswith(indent + " "):  # the entry's continuation lines
            at += 1
    lines[at:at] = entries(rest)
    lines[start + 1 : start + 1] = entries(first)
    return "\n".join(lines)


@takes_net_arguments(first=("architecture",), after="dim", architecture="H1_J1", n_layers=16)
class Toy2DClassifier(SetsIntegrator, RecordsInitArgs, nn.Module):
    """2-D points -> zero-padded state of size ``dim`` -> H-DNN -> linear head.

    With no arguments: H1_J1 under forward Euler, 16 layers, ``h = 0.075`` (T = 1.2, the papers' final time), a
    state of size 4 and the papers' logistic head.

    The head: ``"logit"`` returns one logit per point, shape ``(B,)``, for the logistic loss
    ``F.binary_cross_entropy_with_logits(model(x), y.float())`` (the papers; ``HDNNClassifier`` applies it);
    ``"softmax"`` returns class logits ``(B, 2)`` for ``F.cross_entropy(model(x), y)``.

    Args:
        dim: state size n (>= 2; the papers use 4).
        positions: where the two input features go in the state (default: the first two).
        head: ``"logit"`` (one output ``(B,)``, logistic loss: the papers) or ``"softmax"`` (class logits
            ``(B, 2)``).
    """

    default_h = 0.075

    def __init__(
        self,
        dim: int = 4,
        positions: Sequence[int] | None = None,
        head: Literal["logit", "softmax"] = "logit",
        **net: Any,
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
        self.net = build_net(dim, net_arguments(net), default_h=self.default_h)
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


@takes_net_arguments(first=("architecture",), after="channels", architecture="H2", n_layers=4)
class MNISTHDNN(SetsIntegrator, RecordsInitArgs, nn.Module):
    """L4DC's MNIST net: Conv2d(1 -> C, 3x3, padding 1) -> H-DNN on the C channels of every pixel
    (state ``(B, 28, 28, C)``, channels last, no spatial mixing) -> Linear(C·28·28 -> 10).
    ``n_layers=0`` is the papers' "0 layers" baseline (conv + linear, without an H-DNN). With no arguments: H2
    under symplectic Euler, 4 layers, ``h = 0.5``, C = 8.

    Args:
        channels: channels C of every pixel (the H-DNN's state size).
    """

    default_h = 0.5

    def __init__(self, channels: int = 8, **net: Any) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("n_layers", net["n_layers"], 0)
        self.conv = nn.Conv2d(1, channels, kernel_size=3, padding=1)
        self.net = build_net(channels, net_arguments(net), default_h=self.default_h) if net["n_layers"] > 0 else None
        self.n_classes = 10
        self.head = nn.Linear(channels * 28 * 28, 10)

    def embed(self, images: Tensor) -> Tensor:
        """The H-DNN's input state ``(B, 28, 28, C)``.

        The convolution runs ``channels_last`` (see [`channels_last()`][hamode.models.channels_last]): its output
        is then already the state's layout, so neither the forward nor the backward copies it (an NCHW output
        permuted and copied, and its gradient copied back, took a third of the frame's time on a batch of 100)."""
        return self.conv(channels_last(images)).permute(0, 2, 3, 1).contiguous()

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


def channels_last(images: Tensor) -> Tensor:
    """``images`` ``(B, C, H, W)`` in the ``channels_last`` memory format, with strides that say so.

    With one channel an NCHW-contiguous batch counts as ``channels_last`` already (its channel stride is never
    used), so ``contiguous(memory_format=torch.channels_last)`` returns it unchanged; but the convolution picks its
    output's layout from the strides, reads NCHW, and the whole stem after it (batch norm, activation and their
    backward, each mixing layouts with the stage's ``channels_last`` state) takes the slow path. A one-channel batch
    is therefore restrided as a view.
    """
    if images.dim() != 4:
        raise ValueError(f"channels_last: images must be (B, C, H, W), got shape {tuple(images.shape)}")
    if images.shape[1] == 1 and images.is_contiguous():
        b, _, h, w = images.shape
        return images.reshape(b, h, w, 1).permute(0, 3, 1, 2)
    return images.contiguous(memory_format=torch.channels_last)


class StagedCNN(RecordsInitArgs, nn.Module):
    """The frame of the image models: stem, stages at decreasing resolution, transitions, pooling, head.

    A stem convolution (3x3, ``in_channels -> channels[0]``, stride ``stem_stride``), then the stages (built by the
    subclass's [`make_stage()`][hamode.models.StagedCNN.make_stage]), between stages a **non-Hamiltonian**
    transition that halves the resolution and
    changes the channels (``"conv"``: a 3x3 convolution with stride 2; ``"pool"``: 2x2 average pooling and a 1x1
    convolution),
    global average pooling and a linear head. With ``norm="batch"`` the stem and every transition are followed by
    batch normalisation and a ReLU (the non-linear, non-Hamiltonian part of the model, stated as such; without it
    the stem and the transitions are linear maps). The images are run in the ``channels_last`` memory format
    (oneDNN's and cuDNN's fast layout: the same values, to rounding, in less time).

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
        y = self.stem(channels_last(images) if images.dim() == 4 else images)
        for i, stage in enumerate(self.stages):
            if i:
                y = self.transitions[i - 1](y)
            y = stage(y)
        return y

    def forward(self, images: Tensor) -> Tensor:
        """Logits ``(B, n_classes)`` for images ``(B, in_channels, H, W)``."""
        return self.head(self.features(images).mean((-2, -1)))


@takes_net_arguments(after="layers", exclude=("n_layers", "t_end"), architecture="ConvH2", h=0.2)
class HamiltonianCNN(SetsIntegrator, StagedCNN):
    """A multi-stage Hamiltonian CNN for images ``(B, in_channels, H, W)``.

    The frame of [`StagedCNN`][hamode.models.StagedCNN] (stem, transitions, pooling, head) around stages that are each a
    [`HamiltonianNet`][hamode.HamiltonianNet] on an image field (``ConvH2`` or ``ConvH1_J1``/``ConvH1_J2``): inside
    a stage the flow is
    symplectic, TAC's lower bound ``‖∂y_N/∂y_j‖ ≥ 1`` holds under symplectic Euler and the stage is exactly
    reversible. The stem and the transitions are not Hamiltonian (see ``norm``).

    Args:
        in_channels: image channels.
        n_classes: outputs of the head.
        channels: channels of each stage (even for ConvH2).
        layers: Hamiltonian layers of each stage (same length as ``channels``); each stage's ``t_end = h * layers``.
        kernel_size: the fields' convolution kernel.
        transition: ``"conv"`` or ``"pool"``.
        norm: ``"batch"`` (batch normalisation and ReLU after the stem and each transition) or ``"none"``.
        stem_stride: 1 (the first stage at the input resolution) or 2 (at half of it).
        conv_dtype: ``"state"`` (default: the convolutions in the state's dtype, every exact property kept),
            ``"bfloat16"`` or ``"float16"``: the fields' convolutions in that precision, the Hamiltonian update in
            the state's (faster where the hardware has it; see [`ConvField`][hamode.fields.ConvField]).
    """

    def __init__(
        self,
        in_channels: int = 1,
        n_classes: int = 10,
        channels: Sequence[int] = (16, 32),
        layers: Sequence[int] = (4, 4),
        kernel_size: int = 3,
        transition: Literal["conv", "pool"] = "conv",
        norm: Literal["batch", "none"] = "batch",
        stem_stride: int = 1,
        conv_dtype: ConvDtype = "state",
        **net: Any,
    ) -> None:
        self._stage_args = net_arguments(net)
        self._field_options = {"kernel_size": kernel_size, "conv_dtype": conv_dtype}
        super().__init__(in_channels, n_classes, channels, layers, transition, norm, stem_stride)

    def make_stage(self, channels: int, layers: int) -> HamiltonianNet:
        args = dataclasses.replace(self._stage_args, n_layers=layers)
        return build_net(channels, args, images=True, field_options=self._field_options)

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
        if isinstance(h, bool) or not isinstance(h, (int, float)) or not (math.isfinite(h) and h > 0):
            raise ValueError(f"h must be a finite number > 0, got {h!r}")
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
    """The non-Hamiltonian baseline of [`HamiltonianCNN`][hamode.models.HamiltonianCNN]: the same stem, transitions,
    pooling and head, with
    stages of [`ResidualBlocks`][hamode.models.ResidualBlocks] (a plain ResNet of the same width and depth).

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
        norm: ``"batch"`` or ``"none"`` (see [`StagedCNN`][hamode.models.StagedCNN]).
        stem_stride: 1 or 2 (see [`StagedCNN`][hamode.models.StagedCNN]).
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
    """Every [`HamiltonianNet`][hamode.HamiltonianNet] inside ``model`` (itself included), in module order."""
    return [m for m in model.modules() if isinstance(m, HamiltonianNet)]


@torch.no_grad()
def hamiltonian_inputs(model: nn.Module, x: Tensor) -> list[tuple[HamiltonianNet, Tensor]]:
    """The input state of every [`HamiltonianNet`][hamode.HamiltonianNet] inside ``model`` when ``model(x)`` runs
    (one forward pass,
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
    integrators = ", ".join(list_integrators())
    for cls, names in ((Toy2DClassifier, dense), (MNISTHDNN, dense), (HamiltonianCNN, image)):
        cls.__doc__ = cls.__doc__.format(ARCHITECTURES=", ".join(names), INTEGRATORS=integrators)


_document_choices()
