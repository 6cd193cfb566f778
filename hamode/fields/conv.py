"""Convolutional H-DNN fields on image-shaped states ``(B, C, H, W)`` (channels first).

With K a convolution and Kᵀ its adjoint (the transposed convolution with the same weights), the layers

- ConvH1: ``dy/dt = J Kᵀ σ(K y + b)``, ``H(y) = Σ σ̃(K * y + b)`` (J acting on channels), and
- ConvH2: ``y = [p, q]`` on channels (p the first C/2), ``dp/dt = -Xᵀ K_qᵀ σ(K_q q + b_q)``,
  ``dq/dt = X K_pᵀ σ(K_p p + b_p)`` (X a 1x1 channel mixing),

are exactly ``J ∇H`` with the structure ``J ⊗ I`` on the flattened state, so every guarantee of the dense
fields (symplectic flows under symplectic rules, TAC's non-vanishing gradients, exact reversibility) carries over.
A convolution couples neighbouring pixels: the fields are not "row-local" (see
[`Field.row_local`][hamode.fields.Field.row_local]).
"""

from __future__ import annotations

from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.nn.grad import conv2d_weight

from .. import native
from ..activations import Activation
from ..architectures import register_architecture
from ..validation import check_int
from .base import Field, InitMode, SeparableMixin, WeightsMode, scaled_
from .structure import fixed_structure

__all__ = ["ConvDtype", "ConvField", "ConvH1Field", "ConvH2Field", "Convolution"]

Padding = Literal["zeros", "circular"]
ConvDtype = Literal["state", "bfloat16", "float16"]
"""The dtype a convolutional field's evaluations run in: ``"state"`` (the state's own), or a reduced precision."""
_CONV_DTYPES: dict[str, torch.dtype | None] = {"state": None, "bfloat16": torch.bfloat16, "float16": torch.float16}


class Convolution:
    """A size-preserving 2-D convolution, its adjoint and its weight gradient (stride 1, odd kernel).

    ``apply(x, W, b)`` is ``K x + b`` for a weight ``W: (m, C, k, k)`` and an optional bias ``b: (m,)`` (added by
    the convolution itself: a broadcast add over a ``channels_last`` batch of few channels costs half a
    convolution); ``adjoint(z, W)`` is ``Kᵀ z`` (so
    ``<K x, z> = <x, Kᵀ z>`` exactly); ``weight_grad(x, g, shape)`` is ``∂<g, K x>/∂W``.

    ``dtype``: the precision the products run in (see [`ConvField`][hamode.fields.ConvField]): with
    ``"bfloat16"`` the inputs, the weights and the bias are rounded to it, the products are accumulated by the backend
    (in float32 on oneDNN and cuDNN), rounded to it and returned in the input's dtype (``weight_grad``: in the
    dtype asked for).
    """

    def __init__(
        self, kernel_size: int = 3, dilation: int = 1, padding: Padding = "zeros", dtype: ConvDtype = "state"
    ) -> None:
        self.kernel_size = check_int("kernel_size", kernel_size, 1)
        if kernel_size % 2 == 0:
            raise ValueError(f"kernel_size must be odd (a size-preserving convolution), got {kernel_size}")
        self.dilation = check_int("dilation", dilation, 1)
        if padding not in ("zeros", "circular"):
            raise ValueError(f"padding must be 'zeros' or 'circular', got {padding!r}")
        self.padding = padding
        self.pad = self.dilation * (self.kernel_size - 1) // 2
        if not isinstance(dtype, str) or dtype not in _CONV_DTYPES:
            raise ValueError(f"conv_dtype must be one of {sorted(_CONV_DTYPES)}, got {dtype!r}")
        self.dtype = dtype
        self.compute_dtype = _CONV_DTYPES[dtype]

    def __repr__(self) -> str:
        extra = "" if self.compute_dtype is None else f", dtype={self.dtype!r}"
        return f"Convolution(kernel_size={self.kernel_size}, dilation={self.dilation}, padding={self.padding!r}{extra})"

    def cast(self, x: Tensor) -> Tensor:
        """``x`` in the precision the products run in (``x`` itself at ``dtype="state"``)."""
        cd = self.compute_dtype
        return x if cd is None or x.dtype == cd else x.to(cd)

    def adjoint_kernel(self, W: Tensor) -> Tensor:
        """The kernel of ``Kᵀ`` as a correlation: ``W`` with its two channel axes swapped and its taps flipped
        (leading axes, e.g. layers, are kept); ``adjoint(z, W)`` is ``apply(z, adjoint_kernel(W))``."""
        return W.transpose(-4, -3).flip(-1, -2)

    def _circular(self, x: Tensor) -> Tensor:
        p = self.pad
        return F.pad(x, (p, p, p, p), mode="circular") if p else x

    def apply(self, x: Tensor, W: Tensor, b: Tensor | None = None, dtype: torch.dtype | None = None) -> Tensor:
        """``K x + b``, returned in ``dtype`` (default ``x``'s: an ``x`` cast already names the state's dtype)."""
        if dtype is not None and not isinstance(dtype, torch.dtype):
            raise TypeError(f"Convolution.apply: dtype must be a torch.dtype or None, got {dtype!r}")
        dtype, x, W = x.dtype if dtype is None else dtype, self.cast(x), self.cast(W)
        b = None if b is None else self.cast(b)
        if self.padding == "circular":
            out = F.conv2d(self._circular(x), W, b, dilation=self.dilation)
        else:
            out = F.conv2d(x, W, b, padding=self.pad, dilation=self.dilation)
        return out if out.dtype == dtype else out.to(dtype)

    def adjoint(self, z: Tensor, W: Tensor) -> Tensor:
        # Kᵀ of a size-preserving (stride 1) correlation is the correlation with the flipped, transposed kernel.
        # Written as conv2d rather than conv_transpose2d: the same operator (to rounding), but on the CPU
        # conv_transpose2d of a few channels misses oneDNN's fast path (4x slower on (128, 8, 28, 28), 1 thread).
        return self.apply(z, self.adjoint_kernel(W))

    def weight_grad(self, x: Tensor, g: Tensor, shape: torch.Size, dtype: torch.dtype | None = None) -> Tensor:
        """``∂<g, K x>/∂W`` for a weight of ``shape``, returned in ``dtype`` (default ``x``'s)."""
        out_dtype = x.dtype if dtype is None else dtype
        x, g = self.cast(x), self.cast(g)
        if self.padding == "circular":
            out = conv2d_weight(self._circular(x), shape, g, dilation=self.dilation)
        else:
            out = conv2d_weight(x, shape, g, padding=self.pad, dilation=self.dilation)
        return out.to(out_dtype)

    def operator_norm_bound(self, W: Tensor) -> Tensor:
        """``Σ_taps ‖W[:, :, a, b]‖₂ >= ‖K‖₂`` (Young's inequality; the leading axes of ``W`` are kept)."""
        taps = W.flatten(-2).movedim(-1, 0)  # (k*k, ..., m, C)
        return torch.linalg.matrix_norm(taps, 2).sum(0)


def channel_mix(M: Tensor, z: Tensor) -> Tensor:
    """``(M z)_c = Σ_d M[c, d] z_d`` on the channel axis of ``(B, C, H, W)`` (a 1x1 convolution)."""
    return torch.einsum("cd,bdhw->bchw", M, z)


class ConvField(Field):
    """Base of the convolutional fields: states ``(B, C, H, W)`` with ``C = dim`` channels, any H x W.

    The state of one sample is ``(C, H, W)``; diagnostics flatten it to ``C H W`` coordinates, where the
    structure matrix is ``J ⊗ I_{HW}`` ([`flat_structure()`][hamode.fields.ConvField.flat_structure]).

    **Reduced precision** (``conv_dtype="bfloat16"`` or ``"float16"``): the convolutions K and Kᵀ (and, in the
    backward, their weight gradients) run in that dtype: their inputs, weights and the bias b (which the
    convolution adds) are rounded to it, the products accumulated by the backend (in float32 on oneDNN and cuDNN)
    and the results rounded to it; everything else (σ, J or X, the state, its update ``y + h f`` and every
    gradient) stays in the state's dtype. On CPUs with bf16
    matrix units (AMX) and on GPUs a convolution is several times faster so. The price: the layer map is exactly
    symplectic no longer (the field equals J times the gradient of H only up to the reduced precision's rounding,
    measured by `scripts/bench_models.py`), and the fused and reference paths agree to that precision rather
    than to the state's rounding. ``"state"`` (the default) computes in the state's dtype and keeps every exact
    property.

    The fused engine runs image states in the ``channels_last`` memory format (oneDNN's and cuDNN's fast
    layout; a state in another layout is copied once per solve).
    """

    state_rank: ClassVar[int] = 3
    row_local: ClassVar[bool] = False
    fused_shared_keys: ClassVar[tuple[str, ...]] = ("J", "Jt", "X", "Xt")

    def check_state(self, y, name: str = "y") -> None:
        if not isinstance(y, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(y).__name__}")
        if y.dim() != 4 or y.shape[1] != self.dim:
            raise ValueError(
                f"{name} must be an image batch (B, C, H, W) with C = dim = {self.dim} channels; got shape "
                f"{tuple(y.shape)}"
            )
        super().check_state(y.movedim(1, -1), name)

    def fused_rows(self, y: Tensor) -> Tensor:
        return y.reshape(-1, *y.shape[-3:]).contiguous(memory_format=torch.channels_last)

    def flat_structure(self, height: int, width: int) -> Tensor:
        """The structure matrix on the flattened ``(C, H, W)`` state: ``J ⊗ I_{HW}``."""
        J = self.J
        return torch.kron(J, torch.eye(height * width, dtype=J.dtype, device=J.device))

    @property
    def conv_dtype(self) -> ConvDtype:
        """The precision of the evaluations (see above)."""
        return self.conv.dtype


@register_architecture("ConvH1_J1", J="J1")
@register_architecture("ConvH1_J2", J="J2")
class ConvH1Field(ConvField):
    """ConvH1: ``dy/dt = J Kᵀ σ(K y + b)`` on ``(B, C, H, W)``, K a ``C -> m`` convolution, J on channels.

    ``H(y) = Σ_{channels, pixels} σ̃(K * y + b)`` per sample.

    Args:
        dim: channels C.
        n_layers: number of layers N.
        width: channels m of ``K y`` (default C).
        kernel_size: the convolution's kernel (odd: the convolution is size-preserving).
        dilation: the convolution's dilation.
        padding: ``"zeros"`` or ``"circular"``.
        J: ``"J1"`` (even C), ``"J2"`` or a (C, C) skew-symmetric tensor.
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"`` (see [`Field`][hamode.fields.Field]).
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"`` (see [`Field`][hamode.fields.Field]).
        init: ``"default"`` (K ~ N(0, 1/(C k²)), b = 0) or ``"normal"`` (N(0, 1)).
        conv_dtype: ``"state"``, ``"bfloat16"`` or ``"float16"``: the precision of the evaluations (see
            [`ConvField`][hamode.fields.ConvField]).

    Parameters: ``K`` (nodes, m, C, k, k), ``b`` (nodes, m).
    """

    default_integrator: ClassVar[str] = "euler"

    def __init__(
        self,
        dim: int,
        n_layers: int,
        width: int | None = None,
        kernel_size: int = 3,
        dilation: int = 1,
        padding: Padding = "zeros",
        J: str | Tensor = "J1",
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        conv_dtype: ConvDtype = "state",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(dim, n_layers, activation, weights)
        self.conv = Convolution(kernel_size, dilation, padding, conv_dtype)
        factory = {"dtype": dtype, "device": device}
        m = dim if width is None else check_int("width", width, 1)
        self.width = m
        k = self.conv.kernel_size
        self._stacked("K", (m, dim, k, k), dim * k * k, init, factory)
        self._stacked("b", (m,), None, init, factory)
        self.register_buffer("J_matrix", fixed_structure(J, dim, **factory))

    def parameters_per_layer(self) -> int:
        """K (m × C × k × k) and b (m) per layer: 9C² + C for 3×3 kernels and m = C."""
        k = self.conv.kernel_size
        return self.width * self.dim * k * k + self.width

    def weight_table(self) -> dict[str, Tensor]:
        table = super().weight_table()
        table["J"] = self.J_matrix
        return table

    def _rhs(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        K = w["K"]
        s = self.activation.sigma(self.conv.apply(y, K, w["b"]))
        return channel_mix(w["J"], self.conv.adjoint(s, K))

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        z = self.conv.apply(y, w["K"], w["b"])
        return self.activation.antiderivative(z).sum((-3, -2, -1))

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        return w["J"]

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        S = self.activation.slope_bound
        return {"full": S * torch.linalg.matrix_norm(w["J"], 2) * self.conv.operator_norm_bound(w["K"]) ** 2}

    # fused engine: the same products without autograd; ctx = σ(K y + b) (and its rounded copies: _activation). The
    # kernels of K and Kᵀ are made once per pass for all layers, in the convolutions' precision.
    def fused_weights(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        c, K, J = self.conv.cast, table["K"], table["J"]
        return {"K": c(K), "Kt": c(self.conv.adjoint_kernel(K)), "b": c(table["b"]), "J": J, "Jt": J.mT}

    def fused_f(self, w, y, alpha=1.0, base=None):
        ctx = _activation(self.conv, self.activation, y, w["K"], w["b"])
        out = channel_mix(w["J"], self.conv.apply(_context(ctx, y)[1], w["Kt"], dtype=y.dtype))
        return scaled_(out, alpha, base), ctx

    def fused_f_vjp(self, w, y, ctx, c, alpha=1.0, base=None):
        return _conv_vjp(self.conv, self.activation, w["K"], w["Kt"], y, ctx, channel_mix(w["Jt"], c), alpha, base)

    def fused_group_grads(self, name, fw, table, factors, a):
        return _conv_group_grads(self.conv, table["K"], factors, a, "K", "b", sign=1.0)


@register_architecture("ConvH2")
class ConvH2Field(SeparableMixin, ConvField):
    """ConvH2: ``y = [p, q]`` split on channels (p = the first C/2), ``dp/dt = -Xᵀ K_qᵀ σ(K_q q + b_q)``,
    ``dq/dt = X K_pᵀ σ(K_p p + b_p)``; ``H = Σ σ̃(K_p * p + b_p) + Σ σ̃(K_q * q + b_q)``.

    Separable, so every splitting rule applies (``symplectic_euler`` gives TAC's H2 layer on images).

    Args:
        dim: channels C (even).
        n_layers: number of layers N.
        width: channels m of ``K_p p`` and ``K_q q`` (default C/2).
        kernel_size: the convolutions' kernel (odd).
        dilation: the convolutions' dilation.
        padding: ``"zeros"`` or ``"circular"``.
        X: ``None`` (identity) or a fixed (C/2, C/2) channel mixing.
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"`` (see [`Field`][hamode.fields.Field]).
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"`` (see [`Field`][hamode.fields.Field]).
        init: ``"default"`` (K ~ N(0, 1/((C/2) k²)), b = 0) or ``"normal"`` (N(0, 1)).
        conv_dtype: ``"state"``, ``"bfloat16"`` or ``"float16"``: the precision of the evaluations (see
            [`ConvField`][hamode.fields.ConvField]).

    Parameters: ``Kp``, ``Kq`` (nodes, m, C/2, k, k), ``bp``, ``bq`` (nodes, m).
    """

    default_integrator: ClassVar[str] = "symplectic_euler"

    def __init__(
        self,
        dim: int,
        n_layers: int,
        width: int | None = None,
        kernel_size: int = 3,
        dilation: int = 1,
        padding: Padding = "zeros",
        X: Tensor | None = None,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        conv_dtype: ConvDtype = "state",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        if isinstance(dim, int) and not isinstance(dim, bool) and dim % 2:
            raise ValueError(f"ConvH2Field splits the channels into p and q and needs an even dim, got dim={dim}")
        super().__init__(dim, n_layers, activation, weights)
        self.conv = Convolution(kernel_size, dilation, padding, conv_dtype)
        factory = {"dtype": dtype, "device": device}
        half = dim // 2
        self.half = half
        m = half if width is None else check_int("width", width, 1)
        self.width = m
        k = self.conv.kernel_size
        for name in ("p", "q"):
            self._stacked(f"K{name}", (m, half, k, k), half * k * k, init, factory)
            self._stacked(f"b{name}", (m,), None, init, factory)
        # identity X is structural (no buffer that could be changed behind the field's back): no mixing is computed
        self.mixing = X is not None
        if X is not None:
            if not isinstance(X, Tensor) or X.shape != (half, half):
                raise ValueError(
                    f"X must be None (identity) or a fixed ({half}, {half}) tensor (a learnable X is not offered for "
                    f"ConvH2), got {getattr(X, 'shape', X)!r}"
                )
            self.register_buffer("X_matrix", X.detach().clone().to(**{k: v for k, v in factory.items() if v}))

    # channels first: p and q are halves of axis -3

    def parameters_per_layer(self) -> int:
        """K_p, K_q (m × C/2 × k × k each) and b_p, b_q (m each) per layer."""
        k = self.conv.kernel_size
        return 2 * (self.width * self.half * k * k + self.width)

    def split(self, y: Tensor) -> tuple[Tensor, Tensor]:
        p, q = y[..., : self.half, :, :], y[..., self.half :, :, :]
        if y.dim() == 4 and y.is_contiguous(memory_format=torch.channels_last):
            # a channel slice of a channels_last batch is in neither layout: the convolutions would copy it and
            # every elementwise op mixing it with their (contiguous) outputs would take the slow path
            return p.contiguous(memory_format=torch.channels_last), q.contiguous(memory_format=torch.channels_last)
        return p, q

    def join(self, p: Tensor, q: Tensor) -> Tensor:
        return torch.cat([p, q], dim=-3)

    @property
    def X(self) -> Tensor:
        """The channel mixing X (C/2, C/2): the identity unless a fixed X was given."""
        if self.mixing:
            return self.X_matrix
        return torch.eye(self.half, dtype=self.Kp.dtype, device=self.Kp.device)

    def weight_table(self) -> dict[str, Tensor]:
        table = super().weight_table()
        table["X"] = self.X
        return table

    def _mix(self, M: Tensor, z: Tensor) -> Tensor:
        return channel_mix(M, z) if self.mixing else z

    def _half(self, K: Tensor, b: Tensor, M: Tensor, x: Tensor) -> Tensor:
        return self._mix(M, self.conv.adjoint(self.activation.sigma(self.conv.apply(x, K, b)), K))

    def _dp(self, w: dict[str, Tensor], q: Tensor) -> Tensor:
        return -self._half(w["Kq"], w["bq"], w["X"].mT, q)

    def _dq(self, w: dict[str, Tensor], p: Tensor) -> Tensor:
        return self._half(w["Kp"], w["bp"], w["X"], p)

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        p, q = self.split(y)
        sig, conv = self.activation.antiderivative, self.conv.apply
        hp = sig(conv(p, w["Kp"], w["bp"])).sum((-3, -2, -1))
        return hp + sig(conv(q, w["Kq"], w["bq"])).sum((-3, -2, -1))

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        X = w["X"]
        zero = torch.zeros_like(X)
        return torch.cat([torch.cat([zero, -X.mT], 1), torch.cat([X, zero], 1)], 0)

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        S, X = self.activation.slope_bound, torch.linalg.matrix_norm(w["X"], 2)
        dp = S * X * self.conv.operator_norm_bound(w["Kq"]) ** 2
        dq = S * X * self.conv.operator_norm_bound(w["Kp"]) ** 2
        return {"dp": dp, "dq": dq, "full": torch.maximum(dp, dq)}

    # fused engine
    def fused_weights(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        c, X, adj = self.conv.cast, table["X"], self.conv.adjoint_kernel
        out = {key: c(table[key]) for key in ("Kp", "bp", "Kq", "bq")}
        out |= {"Kpt": c(adj(table["Kp"])), "Kqt": c(adj(table["Kq"]))}
        return out | {"X": X, "Xt": X.mT}

    def _half_eval(self, K, Kt, b, M, sign, x, alpha, base):
        ctx = _activation(self.conv, self.activation, x, K, b)
        s_c = _context(ctx, x)[1]
        if self.mixing:
            return scaled_(self._mix(M, self.conv.apply(s_c, Kt, dtype=x.dtype)), sign * alpha, base), ctx
        return _update(self.conv, self.conv.apply(s_c, Kt), sign * alpha, base, x.dtype), ctx

    def _half_vjp(self, K, Kt, Mt, sign, x, ctx, c, alpha, base):
        # c_M = M c: the cotangent behind the channel mixing (unsigned)
        return _conv_vjp(self.conv, self.activation, K, Kt, x, ctx, self._mix(Mt, c), sign * alpha, base)

    def fused_dp(self, w, q, alpha=1.0, base=None):  # -Xᵀ K_qᵀ σ(K_q q + b_q)
        return self._half_eval(w["Kq"], w["Kqt"], w["bq"], w["Xt"], -1.0, q, alpha, base)

    def fused_dp_vjp(self, w, q, ctx, c, alpha=1.0, base=None):
        return self._half_vjp(w["Kq"], w["Kqt"], w["X"], -1.0, q, ctx, c, alpha, base)

    def fused_dq(self, w, p, alpha=1.0, base=None):  # X K_pᵀ σ(K_p p + b_p)
        return self._half_eval(w["Kp"], w["Kpt"], w["bp"], w["X"], 1.0, p, alpha, base)

    def fused_dq_vjp(self, w, p, ctx, c, alpha=1.0, base=None):
        return self._half_vjp(w["Kp"], w["Kpt"], w["Xt"], 1.0, p, ctx, c, alpha, base)

    def fused_group_grads(self, name, fw, table, factors, a):
        if name == "dp":
            return _conv_group_grads(self.conv, table["Kq"], factors, a, "Kq", "bq", sign=-1.0)
        return _conv_group_grads(self.conv, table["Kp"], factors, a, "Kp", "bp", sign=1.0)


def _activation(conv: Convolution, act: Activation, x: Tensor, K: Tensor, b: Tensor) -> Tensor | tuple:
    """The context of an evaluation: ``s = σ(K x + b)`` in ``x``'s dtype (σ in place on the product), and, where the
    products run in a reduced precision, also ``s`` and ``x`` as the products take them: ``(s, s_c, x_c)``. The
    next product and the backward's weight gradients use ``s_c`` and ``x_c``, so each is rounded once per
    evaluation (the same numbers as rounding again: rounding is deterministic) at the price of keeping them
    on the tape (half the bytes of ``s`` and ``x`` each in bfloat16). From a bfloat16 product of a float32 state,
    tanh runs as one native pass that also rounds its result ([`hamode.native.tanh_bf16`][hamode.native.tanh_bf16])
    instead of a conversion, σ and a conversion back."""
    x_c = conv.cast(x)
    z = conv.apply(x_c, K, b, dtype=conv.compute_dtype)
    done = None
    if z.dtype == torch.bfloat16 and x.dtype == torch.float32 and act.native_code == 0:
        done = native.tanh_bf16(z)
    if done is None:
        s = act.sigma_(z.to(x.dtype))  # (z itself when it is in x's dtype)
        done = s, conv.cast(s)
    s, s_c = done
    return s if s_c is s else (s, s_c, x_c)


def _context(ctx: Tensor | tuple, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(s, s_c, x_c)`` of an evaluation at ``x`` from its context (``_activation``): ``s`` and ``x`` themselves
    where the products run in the state's dtype (the context is ``s`` alone)."""
    return ctx if isinstance(ctx, tuple) else (ctx, ctx, x)


def _update(conv: Convolution, product: Tensor, alpha: float, base: Tensor | None, dtype: torch.dtype) -> Tensor:
    """``base + alpha product`` in the state's ``dtype`` from a product in the convolutions' precision: from a
    bfloat16 product one native pass ([`hamode.native.axpy_bf16`][hamode.native.axpy_bf16]) instead of a conversion
    and the update; else ``scaled_`` over the product (converted)."""
    if product.dtype == torch.bfloat16 and dtype == torch.float32:
        out = native.axpy_bf16(base, product, alpha)
        if out is not None:
            return out
    return scaled_(product.to(dtype), alpha, base)


def _conv_vjp(conv: Convolution, act, K: Tensor, Kt: Tensor, x: Tensor, ctx, cm: Tensor, alpha: float, base):
    """``(base + alpha Kᵀ gz, factors)`` with ``gz = σ'(K x + b) ⊙ K c_M``: the VJP of ``Kᵀ σ(K x + b)`` (its
    channel mixing applied to the cotangent already: ``cm``), and its parameter factors ``(s, c_M, gz, x, Σ gz)``;
    ``ctx`` is the evaluation's context (``_activation``).

    The factors are kept as the convolutions take them, in the products' precision: with ``conv_dtype``
    ``"bfloat16"`` the weight gradients take ``s`` and ``x`` as the forward rounded them and ``c_M``, ``gz`` as the
    products here did (each rounded once, not again), and the bias gradient's sum ``Σ gz`` (over the batch and
    the pixels) is taken here from ``gz`` in the state's dtype. At ``"state"`` the casts are the tensors themselves."""
    dtype, cm = cm.dtype, conv.cast(cm)
    s, s_c, x_c = _context(ctx, x)
    product = conv.apply(cm, K)  # in the products' precision
    done = None
    if product.dtype == torch.bfloat16 and act.native_code == 0:  # σ' from a bfloat16 product: one native pass
        done = native.tanh_backward_bf16(product, s)
    if done is None:
        gz = act.backprop_through_output(product.to(dtype), s)
        done = gz, conv.cast(gz)
    gz, gz_c = done
    return _update(conv, conv.apply(gz_c, Kt), alpha, base, dtype), (s_c, cm, gz_c, x_c, gz.sum((0, 2, 3)))


def _conv_group_grads(conv: Convolution, K: Tensor, factors, a, k_key: str, b_key: str, sign: float) -> dict:
    """Gradients of ``K``, ``b`` for ``f = sign M Kᵀ σ(K x + b)`` from factors ``(s, c_M, gz, x, Σ gz)`` stacked over
    nodes (``_conv_vjp``): ``∂/∂K = sign a (∂<c_M, Kᵀ s>/∂K + ∂<gz, K x>/∂K)``, ``∂/∂b = sign a Σ gz``."""
    S, CM, GZ, V, DB = factors
    nodes = S.shape[0]
    scale = [float(a) if isinstance(a, float) else float(a[i].reshape(())) for i in range(nodes)]
    shape, dtype = K.shape[1:], K.dtype  # the table's weight: the gradients take its dtype
    dK = torch.stack(
        [
            (conv.weight_grad(CM[i], S[i], shape, dtype) + conv.weight_grad(V[i], GZ[i], shape, dtype))
            * (sign * scale[i])
            for i in range(nodes)
        ]
    )
    db = torch.stack([DB[i].to(dtype) * (sign * scale[i]) for i in range(nodes)])
    return {k_key: dK, b_key: db}
