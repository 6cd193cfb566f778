"""The field base class: an ODE right-hand side with per-layer weights on a leading layer axis."""

from __future__ import annotations

import math
import typing
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from ..activations import Activation, get_activation
from ..grid import LayerGrid
from ..native import NATIVE_FROM, rowgram, rowmm, rowvjp_sums
from ..validation import check_int

__all__ = [
    "INITS",
    "WEIGHT_PATHS",
    "Factors",
    "Field",
    "FusedField",
    "FusedFullField",
    "FusedSeparableField",
    "FusedWeights",
    "HalfField",
    "InitMode",
    "LayerRHS",
    "WeightsMode",
    "fused_methods_missing",
    "protocol_methods",
]

WeightsMode = Literal["piecewise", "constant", "linear"]
"""How the weights vary in t: one set per layer, one for all layers, or linear between N + 1 nodes."""
InitMode = Literal["default", "normal"]
"""``default``: N(0, 1/fan_in) matrices and zero biases; ``normal``: N(0, 1) for everything (the papers' 2-D code)."""
WEIGHT_PATHS: tuple[str, ...] = typing.get_args(WeightsMode)
INITS: tuple[str, ...] = typing.get_args(InitMode)


class Field(nn.Module):
    """An ODE right-hand side ``dy/dt = f(t, y)`` whose weights change from layer to layer.

    Subclasses register their per-layer parameters with `_stacked()` (a leading
    axis of *nodes*: N for ``weights="piecewise"``, 1 for ``"constant"``, N + 1 for
    ``"linear"``) and implement the right-hand side of one layer as pure functions of
    a weight dictionary ``w`` (one layer's weights, paper convention ``K: (m, n)``):
    ``_rhs(w, y)``, ``_energy(w, y)`` and ``_structure(w)``. Weights derived from the
    parameters (a skew K, a block-sparse K, ``J = A - Aᵀ``) are built once per pass for
    all layers by [`weight_table()`][hamode.fields.Field.weight_table].

    Args:
        dim: state size n.
        n_layers: number of layers N.
        activation: ``"tanh"``, ``"relu"``, ``"sigmoid"`` or an `Activation`.
        weights: ``"piecewise"`` (one weight set per layer, the papers' choice),
            ``"constant"`` (one set for all layers: a time-invariant ODE) or
            ``"linear"`` (weights at the N + 1 layer boundaries, linearly interpolated
            inside each layer: continuous in t).
    """

    separable: ClassVar[bool] = False
    constant_structure: ClassVar[bool] = True
    default_integrator: ClassVar[str] = "euler"
    state_rank: ClassVar[int] = 1
    """How many trailing axes hold one sample's state: 1 for ``(..., dim)``, 3 for images ``(B, C, H, W)``."""
    row_local: ClassVar[bool] = True
    """Whether the field acts on each row ``y[..., :]`` independently (so per-row Jacobians are its Jacobian)."""

    def __init__(
        self,
        dim: int,
        n_layers: int,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
    ) -> None:
        super().__init__()
        self.dim = check_int("dim", dim, 1)
        self.n_layers = check_int("n_layers", n_layers, 1)
        self.activation = get_activation(activation)
        if weights not in WEIGHT_PATHS:
            raise ValueError(f"weights must be one of {', '.join(WEIGHT_PATHS)}; got {weights!r}")
        self.weights = weights
        self.n_nodes = {"piecewise": n_layers, "constant": 1, "linear": n_layers + 1}[weights]
        self._stacked_names: list[str] = []

    # ---------------------------------------------------------------- parameters
    def _stacked(
        self, name: str, shape: tuple[int, ...], fan_in: int | None, init: InitMode, factory: dict
    ) -> nn.Parameter:
        """Register a parameter with a leading node axis and initialise it.

        ``init="default"``: matrices N(0, 1/fan_in), biases 0. ``init="normal"``: N(0, 1)
        for everything (the published code's choice).
        """
        if init not in INITS:
            raise ValueError(f"init must be one of {', '.join(INITS)}; got {init!r}")
        p = torch.empty((self.n_nodes, *shape), **factory)
        with torch.no_grad():
            if init == "normal":
                p.normal_(0.0, 1.0)
            elif fan_in is None:
                p.zero_()
            else:
                p.normal_(0.0, 1.0 / math.sqrt(fan_in))
        param = nn.Parameter(p)
        self.register_parameter(name, param)
        self._stacked_names.append(name)
        return param

    def weight_table(self) -> dict[str, Tensor]:
        """All weights the layers use, built for every node at once.

        Entries named in [`stacked_keys`][hamode.fields.Field.stacked_keys] have the node axis first; the others
        (``J``, ``X``) are shared by all layers. The default returns the parameters
        themselves (no copies); fields with derived weights extend it.
        """
        return {name: getattr(self, name) for name in self._stacked_names}

    def direct_parameters(self) -> list[Tensor]:
        """Parameters the layers use directly rather than through
        [`weight_table()`][hamode.fields.Field.weight_table] (a user Hamiltonian's
        own module parameters): the reversible engine differentiates them step by step. Default: none."""
        return []

    def stacked_parameters(self) -> dict[str, nn.Parameter]:
        """The parameters registered with a leading node axis (what `parameters_per_layer()` counts)."""
        return {name: getattr(self, name) for name in self._stacked_names}

    def parameters_per_layer(self) -> int:
        """How many parameters each node (layer) holds in [`weight_table()`][hamode.fields.Field.weight_table]'s
        stacked entries, by the field's
        own formula (the papers state these counts); the generic tests check it against
        [`stacked_parameters()`][hamode.fields.Field.stacked_parameters]. Shared parameters (a learnable J or X) are
        not counted."""
        raise NotImplementedError(f"{type(self).__name__} states no parameter count (parameters_per_layer)")

    @property
    def stacked_keys(self) -> tuple[str, ...]:
        """Keys of [`weight_table()`][hamode.fields.Field.weight_table] that carry a node axis."""
        return tuple(self._stacked_names)

    @property
    def smoothness_keys(self) -> tuple[str, ...]:
        """Keys of [`weight_table()`][hamode.fields.Field.weight_table] penalised by the smoothness regulariser (K's
        and b's)."""
        return self.stacked_keys

    def reference_tensor(self) -> Tensor | None:
        """A tensor whose dtype and device the input must match (None: anything goes)."""
        for t in self.parameters():
            return t
        for t in self.buffers():
            return t
        return None

    # ---------------------------------------------------------------- layers
    def node_range(self, j: int) -> tuple[int, int]:
        """The nodes ``[lo, hi)`` that layer ``j`` reads."""
        if self.weights == "piecewise":
            return j, j + 1
        if self.weights == "constant":
            return 0, 1
        return j, j + 2

    def layer(
        self, j: int | Tensor, table: dict[str, Tensor] | None = None, grid: LayerGrid | None = None
    ) -> "LayerRHS":
        """The right-hand side frozen at layer ``j`` (views into the stacked weights, no copies).

        Args:
            j: layer index in ``[0, n_layers)`` (an int, or a 0-dim integer tensor).
            table: a [`weight_table()`][hamode.fields.Field.weight_table] computed earlier in the same pass (optional).
            grid: the layer grid of the net evaluating it; needed to evaluate at a time t when the
                weights change inside a layer (``weights="linear"``). The field keeps no grid of its own, so
                one field can serve several nets with different final times.
        """
        if table is None:
            table = self.weight_table()
        if isinstance(j, Tensor):
            idx = j if self.weights != "constant" else torch.zeros_like(j)
            local = {
                k: (v[idx].unsqueeze(0) if self.weights != "linear" else v[torch.stack([idx, idx + 1])])
                if k in self.stacked_keys
                else v
                for k, v in table.items()
            }
        else:
            if not 0 <= j < self.n_layers:
                raise IndexError(f"layer index j must be in [0, {self.n_layers}), got {j}")
            lo, hi = self.node_range(j)
            local = {k: (v[lo:hi] if k in self.stacked_keys else v) for k, v in table.items()}
        return LayerRHS(self, j, local, grid)

    def layer_from_local(self, j: int, local: dict[str, Tensor], grid: LayerGrid | None = None) -> "LayerRHS":
        """A [`LayerRHS`][hamode.fields.LayerRHS] from weights already sliced with
        [`node_range()`][hamode.fields.Field.node_range] (used by gradient engines)."""
        return LayerRHS(self, j, local, grid)

    def check_state(self, y: Any, name: str = "y") -> None:
        """Raise a clear error if ``y`` is not a state this field accepts."""
        if not isinstance(y, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() < 1 or y.shape[-1] != self.dim:
            raise ValueError(
                f"{name} must have the state in its last dimension, of size dim={self.dim}; got shape {tuple(y.shape)}"
            )
        if not y.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {y.dtype}")
        ref = self.reference_tensor()
        if ref is not None and (y.dtype != ref.dtype or y.device != ref.device):
            raise TypeError(
                f"{name} has dtype {y.dtype} on {y.device}, but the field's parameters have dtype {ref.dtype} on "
                f"{ref.device}; convert one of them (e.g. field.to(y.dtype) or y.to(...))"
            )

    def fused_rows(self, y: Tensor) -> Tensor:
        """The state as the fused engine's evaluations take it: ``(rows, dim)`` (image fields keep their axes)."""
        return y.reshape(-1, self.dim)

    # ---------------------------------------------------------------- continuous-time interface
    def forward(self, t: Tensor | float, y: Tensor, grid: LayerGrid | None = None) -> Tensor:
        """The continuous right-hand side ``f(t, y)``; the layer is looked up from ``t`` on ``grid``.

        A field has no time grid of its own (a net owns it): pass ``grid=net.grid``, or call
        ``net.rhs(t, y)``.
        """
        grid = _need_grid(self, grid, "forward(t, y)")
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t), dtype=y.dtype, device=y.device)
        return self.layer(grid.layer_of(t), grid=grid)(t, y)

    def hamiltonian(self, t: Tensor | float, y: Tensor, grid: LayerGrid | None = None) -> Tensor:
        """The energy ``H(t, y)`` per sample (shape ``y.shape[:-1]``), the layer looked up from ``t`` on ``grid``."""
        grid = _need_grid(self, grid, "hamiltonian(t, y)")
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t), dtype=y.dtype, device=y.device)
        return self.layer(grid.layer_of(t), grid=grid).hamiltonian(t, y)

    @property
    def J(self) -> Tensor:
        """The structure matrix (n, n); fields whose J changes per layer return (nodes, n, n)."""
        table = self.weight_table()
        if self.constant_structure:
            return self._structure({k: v[0] if k in self.stacked_keys else v for k, v in table.items()})
        return torch.stack([self.layer(j, table).J for j in range(self.n_layers)])

    # ---------------------------------------------------------------- to implement
    def _rhs(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        raise NotImplementedError

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        raise NotImplementedError

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        raise NotImplementedError

    # ---------------------------------------------------------------- fused gradient engine (optional)
    # The contract is FusedField (below); ``supports_fused`` is derived from it when the class is created.
    supports_fused: ClassVar[bool] = False
    fused_shared_keys: ClassVar[tuple[str, ...]] = ("J", "X")

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        missing = fused_methods_missing(cls)
        declared = cls.__dict__.get("supports_fused")
        if declared is True and missing:
            raise TypeError(
                f"{cls.__name__} sets supports_fused = True but lacks the fused methods {', '.join(missing)} "
                "(see hamode.fields.FusedFullField / FusedSeparableField)"
            )
        cls.supports_fused = not missing if declared is None else bool(declared)

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        """Bounds on ‖∂f/∂y‖₂ (``"full"``) and, if separable, ‖∂(dp/dt)/∂q‖₂ (``"dp"``), ‖∂(dq/dt)/∂p‖₂ (``"dq"``)."""
        raise NotImplementedError(f"{type(self).__name__} states no Lipschitz bound")

    def extra_repr(self) -> str:
        return f"dim={self.dim}, n_layers={self.n_layers}, activation={self.activation.name}, weights={self.weights}"


def mm_out(a: Tensor, B: Tensor, alpha: float, base: Tensor | None) -> Tensor:
    """``base + alpha (a @ B)`` (``alpha (a @ B)`` without a base), written over the product; ``base`` has its shape.

    ``mm`` then ``add``: for the small matrices of an H-DNN layer this is faster than ``addmm``,
    which copies ``base`` into its output before the product. Wide states (per-pixel nets) take one native pass
    ([`hamode.native.rowmm`][hamode.native.rowmm]) where a kernel applies.
    """
    if a.numel() >= NATIVE_FROM:  # wide states: one native pass (None where no kernel applies)
        out = rowmm(a, B, alpha, base)
        if out is not None:
            return out
    out = torch.mm(a, B)  # scaled_ written out: this sits in the dense fields' innermost loop
    if base is None:
        return out if alpha == 1.0 else out.mul_(alpha)
    return torch.add(base, out, alpha=alpha, out=out)  # over the fresh product: no allocation (see scaled_)


def scaled_(out: Tensor, alpha: float, base: Tensor | None) -> Tensor:
    """``base + alpha out``, written over ``out``: a fresh temporary of the caller (``alpha out`` without a base).

    Writing into ``out`` instead of a new tensor saves the allocation, which for image and per-pixel states is
    megabytes of fresh pages per update (their first-touch faults cost as much as the add itself). A ``base`` of
    another shape, dtype or layout gets a new tensor, as ``torch.add`` makes it.
    """
    if base is None:
        return out if alpha == 1.0 else out.mul_(alpha)
    if base.shape == out.shape and base.dtype == out.dtype and base.stride() == out.stride():
        return torch.add(base, out, alpha=alpha, out=out)
    return torch.add(base, out, alpha=alpha)


def layer_eval(
    act: Activation, x: Tensor, W1: Tensor, b: Tensor, W2: Tensor, alpha: float, base: Tensor | None
) -> tuple[Tensor, Tensor]:
    """``(base + alpha s @ W2, s)`` with ``s = σ(x @ W1 + b)``: an evaluation ``σ(x A + b) B`` of the fused
    engine and its context (the VJP's ``s``). Two products (native on wide states) with σ between them (its
    ``sigma_``: for tanh on wide states hamode's own kernel); why σ is not in the product's kernel is on the Speed
    page."""
    if x.numel() >= NATIVE_FROM:
        s = affine_act(act, x, W1, b)
    else:  # affine_act's small-state path written out: one frame less per evaluation of the deep nets
        z = torch.mm(x, W1)
        s = act.sigma_(z.add_(b) if z.numel() < BIAS_TILE_FROM else add_bias_(z, b))
    return mm_out(s, W2, alpha, base), s


def vjp_factors(
    act: Activation, c: Tensor, W1: Tensor, s: Tensor, W2: Tensor, x: Tensor, alpha: float, base: Tensor | None
) -> tuple[Tensor, Factors]:
    """``(base + alpha gz @ W2, factors)`` with ``gz = (c @ W1) ⊙ σ'`` from σ's output ``s``: the VJP of an
    evaluation ``σ(x A + b) B`` at ``x`` (``W1 = Bᵀ``, ``W2 = Aᵀ``) and its parameter factors ``(s, c, gz, x)``.

    Wide states with a σ the native kernels know take one native pass
    ([`hamode.native.rowvjp_sums`][hamode.native.rowvjp_sums]) that sums the factors over the rows instead of
    keeping them: the factors are then ``(sᵀ c, gzᵀ x, Σ gz)``. ``layer_sums()`` takes either form.
    """
    if c.numel() < NATIVE_FROM:
        product = torch.mm(c, W1)  # mm_out's small-state path written out: one frame less per VJP of the deep nets
    else:
        done = None if act.native_code is None else rowvjp_sums(c, W1, s, act.native_code, W2, x, alpha, base)
        if done is not None:
            out, sc, gx, gs = done
            return out, (sc, gx, gs)
        product = mm_out(c, W1, 1.0, None)
    gz = act.backprop_through_output(product, s)
    return mm_out(gz, W2, alpha, base), (s, c, gz, x)


def layer_sums(factors: Factors, a) -> tuple[Tensor, Tensor, Tensor]:
    """``(a sᵀ c, a gzᵀ x, a Σ gz)`` per node from ``vjp_factors()``' factors stacked over nodes, in either form
    (kept rows, or already summed over them)."""
    if len(factors) == 3:
        sc, gx, gs = factors
        return sc * a, gx * a, gs * (a if isinstance(a, float) else a[:, :, 0])
    S, C, GZ, X = factors
    return wdot(S, C, a), wdot(GZ, X, a), wsum(GZ, a)


def affine_act(act, x: Tensor, Wt: Tensor, b: Tensor) -> Tensor:
    """``σ(x Wt + b)`` with the bias and σ applied in place on the product (fused engine)."""
    if x.numel() >= NATIVE_FROM:
        z = rowmm(x, Wt, bias=b)
        if z is not None:
            return act.sigma_(z)
    z = torch.mm(x, Wt)
    return act.sigma_(z.add_(b) if z.numel() < BIAS_TILE_FROM else add_bias_(z, b))  # small: no call (deep nets)


BIAS_TILE_FROM = 1 << 16
"""From this many elements ``add_bias_`` adds a bias of few columns through a wide view."""


def add_bias_(z: Tensor, b: Tensor) -> Tensor:
    """``z += b`` for a contiguous ``(rows, n)`` product ``z`` and a bias ``(n,)``; returns ``z``.

    A bias of few columns broadcast over many rows runs an inner loop of n elements, too short for the vector units:
    on a (78 400, 8) per-pixel state the plain ``add_`` took 244 us, as long as the product itself. For large ``z``
    the rows are taken r at a time (a ``(rows / r, r n)`` view, ``r n <= 64``) and ``b`` tiled r times: 68 us.
    """
    if z.numel() < BIAS_TILE_FROM or z.dim() != 2 or b.dim() != 1 or z.shape[1] >= 32 or not z.is_contiguous():
        return z.add_(b)
    rows, n = z.shape
    r = 64 // n
    while rows % r:
        r //= 2
    if r > 1:
        z.view(rows // r, r * n).add_(b.repeat(r))
    else:
        z.add_(b)
    return z


def wdot(A: Tensor, B: Tensor, a) -> Tensor:
    """``a * Aᵀ B`` per node (``(nodes, rows, m)``, ``(nodes, rows, n)`` -> ``(nodes, m, n)``); the scale is
    applied to the small result, never to the factors. One node of many rows (a wide state's layer) takes one
    native pass ([`hamode.native.rowgram`][hamode.native.rowgram]) where a kernel applies."""
    if A.shape[0] == 1 and A.numel() >= NATIVE_FROM:
        out = rowgram(A[0], B[0])
        if out is not None:
            return out.unsqueeze_(0).mul_(a)
    return torch.bmm(A.mT, B).mul_(a)


def wsum(A: Tensor, a) -> Tensor:
    """``a * Σ_rows A`` per node (``(nodes, rows, m)`` -> ``(nodes, m)``)."""
    out = A.sum(1)
    return out.mul_(a if isinstance(a, float) else a[:, :, 0])


def axpy(base: Tensor | None, s: Tensor, alpha: float) -> Tensor:
    """``base + alpha s`` (``alpha s`` without a base)."""
    return s * alpha if base is None else torch.add(base, s, alpha=alpha)


class SeparableMixin:
    """Fields with ``y = [p, q]`` (in some order), ``dp/dt = a(t, q)`` and ``dq/dt = b(t, p)``.

    ``p`` is the half that ``symplectic_euler`` updates first. Subclasses implement
    ``_dp(w, q)``, ``_dq(w, p)`` and, if p is not the first half, set
    ``p_is_first_half = False``.
    """

    separable: ClassVar[bool] = True
    p_is_first_half: ClassVar[bool] = True

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        """``(p, q)`` from the state."""
        half = y.shape[-1] // 2
        a, b = y[..., :half], y[..., half:]
        return (a, b) if self.p_is_first_half else (b, a)

    def join(self, p: Tensor, q: Tensor) -> Tensor:
        """The state from ``(p, q)``."""
        return torch.cat([p, q] if self.p_is_first_half else [q, p], dim=-1)

    def _rhs(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        p, q = self.split(y)
        return self.join(self._dp(w, q), self._dq(w, p))


class LayerRHS:
    """One layer's right-hand side: ``f(t, y)``, and for separable fields the half-fields.

    Built by [`Field.layer()`][hamode.fields.Field.layer]. With ``weights="linear"`` the weights are interpolated
    in t with the layer's own two nodes (and extrapolated with the same formula for
    stages outside the layer's interval), so every stage uses this layer's weights.
    """

    __slots__ = ("_fixed", "_inv_h", "_t0", "field", "j", "local")

    def __init__(self, field: Field, j: int | Tensor, local: dict[str, Tensor], grid: LayerGrid | None = None) -> None:
        self.field = field
        self.j = j
        self.local = local
        stacked = field.stacked_keys
        self._t0 = self._inv_h = None
        if field.weights == "linear":
            self._fixed = None
            if grid is not None:
                self._inv_h = 1.0 / grid.h
                if isinstance(j, Tensor):
                    self._t0 = grid.boundaries(torch.float64, j.device)[j]
                else:
                    self._t0 = grid.start(j)
        else:
            self._fixed = {k: (v[0] if k in stacked else v) for k, v in local.items()}

    def weights(self, t: Tensor | float) -> dict[str, Tensor]:
        """This layer's weights at time t."""
        if self._fixed is not None:
            return self._fixed
        if self._t0 is None:
            raise RuntimeError(
                f"{type(self.field).__name__} has weights='linear': evaluating layer {self.j} at a time t needs the "
                "net's grid (field.layer(j, grid=net.grid))"
            )
        return self.weights_at_fraction((t - self._t0) * self._inv_h)

    def weights_at_fraction(self, s: Tensor | float) -> dict[str, Tensor]:
        """The weights a fraction ``s`` into the layer (0: its start, 1: its end; linear weights only differ)."""
        if self._fixed is not None:
            return self._fixed
        if isinstance(s, Tensor):
            s = s.to(next(iter(self.local.values())).dtype)
        stacked = self.field.stacked_keys
        return {k: (v[0] + s * (v[1] - v[0]) if k in stacked else v) for k, v in self.local.items()}

    def __call__(self, t: Tensor | float, y: Tensor) -> Tensor:
        return self.field._rhs(self.weights(t), y)

    def dp(self, t: Tensor | float, q: Tensor) -> Tensor:
        """dp/dt as a function of q (separable fields)."""
        return self.field._dp(self.weights(t), q)

    def dq(self, t: Tensor | float, p: Tensor) -> Tensor:
        """dq/dt as a function of p (separable fields)."""
        return self.field._dq(self.weights(t), p)

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        return self.field.split(y)

    def join(self, p: Tensor, q: Tensor) -> Tensor:
        return self.field.join(p, q)

    def hamiltonian(self, t: Tensor | float, y: Tensor) -> Tensor:
        """H of this layer per sample."""
        return self.field._energy(self.weights(t), y)

    def lipschitz(self, t: Tensor | float) -> dict[str, Tensor]:
        """Lipschitz bounds of this layer's field (see `Field._lipschitz()`)."""
        return self.field._lipschitz(self.weights(t))

    def structure(self, t: Tensor | float) -> Tensor:
        """This layer's structure matrix at time t (it depends on t only for MS1/MS2 with linear weights)."""
        return self.field._structure(self.weights(t))

    @property
    def J(self) -> Tensor:
        """This layer's structure matrix (n, n) (at the layer start for linear weights)."""
        return self.field._structure(self.weights_at_fraction(0.0))


def _need_grid(field: Field, grid: LayerGrid | None, what: str) -> LayerGrid:
    if grid is None:
        raise TypeError(
            f"{type(field).__name__}.{what} looks the layer up from t and needs the layer grid: pass grid=net.grid "
            "(a field keeps no grid of its own), or call net.rhs(t, y) / net.hamiltonian(t, y)"
        )
    if not isinstance(grid, LayerGrid):
        raise TypeError(f"grid must be a hamode.LayerGrid, got {type(grid).__name__}")
    if grid.n_layers != field.n_layers:
        raise ValueError(f"grid has {grid.n_layers} layers but the field has n_layers={field.n_layers}")
    return grid


Factors = tuple[Tensor, ...]
"""One evaluation's parameter factors, as a VJP returns them: the tensors (``(rows, ·)`` each) from which the
parameter gradients of that evaluation are formed, or sums of them over the rows (a native VJP's, see
``vjp_factors()``); the engine stacks them over nodes as ``(nodes, ...)``, and the field's ``fused_group_grads``
reads the form it wrote."""
FusedWeights = dict[str, Tensor]
"""Per-node tensors of [`FusedField.fused_weights()`][hamode.fields.FusedField.fused_weights] (keys in
``fused_shared_keys`` are shared by all nodes);
one layer's dict of views into them is the ``w`` an evaluation receives."""
HalfField = Literal["f", "dp", "dq"]
"""Which evaluation a group of factors belongs to: the full field, or a separable field's dp/dt or dq/dt."""


@runtime_checkable
class FusedField(Protocol):
    """What every field provides for the fused engine ([`engines`][hamode.engines]); all without autograd.

    ``w`` is one layer's dict from [`fused_weights()`][hamode.fields.FusedField.fused_weights]; ``alpha`` and
    ``base`` fuse the step's
    update: an evaluation returns ``base + alpha f(y)`` (``alpha f(y)`` without a base) and a
    context, a VJP returns ``base + alpha (∂f/∂y)ᵀ c`` and its parameter [`Factors`][hamode.fields.Factors]
    (unscaled: the
    engine applies each evaluation's alpha when it stacks them). A non-separable field provides
    [`FusedFullField`][hamode.fields.FusedFullField], a separable one
    [`FusedSeparableField`][hamode.fields.FusedSeparableField] (the engine composes the full field
    from its halves). ``Field.supports_fused`` is True exactly when a class has all of its kind's methods; a
    field without them runs on the autograd reference path, and one that sets ``supports_fused = True``
    without them is refused when the class is created, naming what is missing.
    """

    fused_shared_keys: tuple[str, ...]

    def fused_rows(self, y: Tensor) -> Tensor:
        """The state as the evaluations take it (``(rows, dim)``; image fields keep their axes)."""
        ...

    def fused_weights(self, table: dict[str, Tensor]) -> FusedWeights:
        """Per-node tensors (products for all layers at once, e.g. ``K Jᵀ``)."""
        ...

    def fused_group_grads(
        self, name: HalfField, fw: FusedWeights, table: dict[str, Tensor], factors: Factors, a: float | Tensor
    ) -> dict[str, Tensor]:
        """``{table key: gradient}`` for half-field ``name`` from factors stacked over nodes as ``(nodes, B, ·)``,
        one evaluation per node; ``a`` the alphas (a float, or ``(nodes, 1, 1)``)."""
        ...


@runtime_checkable
class FusedFullField(FusedField, Protocol):
    """A non-separable field's fused right-hand side ``f(y)`` and its VJP."""

    def fused_f(
        self, w: dict[str, Tensor], y: Tensor, alpha: float = 1.0, base: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """``(base + alpha f(y), context)``."""
        ...

    def fused_f_vjp(
        self, w: dict[str, Tensor], y: Tensor, ctx: Any, c: Tensor, alpha: float = 1.0, base: Tensor | None = None
    ) -> tuple[Tensor, Factors]:
        """``(base + alpha (∂f/∂y)ᵀ c, factors)``."""
        ...


@runtime_checkable
class FusedSeparableField(FusedField, Protocol):
    """A separable field's fused half-fields: ``dp/dt`` as a function of q, ``dq/dt`` of p, and their VJPs."""

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]: ...

    def join(self, p: Tensor, q: Tensor) -> Tensor: ...

    def fused_dp(
        self, w: dict[str, Tensor], q: Tensor, alpha: float = 1.0, base: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """``(base + alpha dp/dt(q), context)``."""
        ...

    def fused_dp_vjp(
        self, w: dict[str, Tensor], q: Tensor, ctx: Any, c: Tensor, alpha: float = 1.0, base: Tensor | None = None
    ) -> tuple[Tensor, Factors]:
        """``(base + alpha (∂(dp/dt)/∂q)ᵀ c, factors)``."""
        ...

    def fused_dq(
        self, w: dict[str, Tensor], p: Tensor, alpha: float = 1.0, base: Tensor | None = None
    ) -> tuple[Tensor, Any]:
        """``(base + alpha dq/dt(p), context)``."""
        ...

    def fused_dq_vjp(
        self, w: dict[str, Tensor], p: Tensor, ctx: Any, c: Tensor, alpha: float = 1.0, base: Tensor | None = None
    ) -> tuple[Tensor, Factors]:
        """``(base + alpha (∂(dq/dt)/∂p)ᵀ c, factors)``."""
        ...


def protocol_methods(protocol: type) -> tuple[str, ...]:
    """The public methods a protocol class declares (its own and its protocol bases')."""
    names: dict[str, None] = {}
    for klass in reversed(protocol.__mro__):
        if klass is object or klass is Protocol or not getattr(klass, "_is_protocol", False):
            continue
        names.update({n: None for n, v in vars(klass).items() if callable(v) and not n.startswith("_")})
    return tuple(names)


def fused_methods_missing(cls: type) -> list[str]:
    """The methods of its kind's fused protocol ([`FusedFullField`][hamode.fields.FusedFullField] or
    [`FusedSeparableField`][hamode.fields.FusedSeparableField]) that a
    field class lacks (empty: the fused engine covers it)."""
    protocol = FusedSeparableField if getattr(cls, "separable", False) else FusedFullField
    return [name for name in protocol_methods(protocol) if not callable(getattr(cls, name, None))]
