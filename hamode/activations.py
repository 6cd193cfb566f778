"""Activations paired with their antiderivatives (the Hamiltonian uses the antiderivative)."""

from __future__ import annotations

import math
import typing
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from hamode import native

__all__ = ["Activation", "ActivationName", "get_activation", "list_activations"]


def _log_cosh(x: Tensor) -> Tensor:
    # log cosh x = |x| + log(1 + exp(-2|x|)) - log 2: no overflow for large |x|.
    a = x.abs()
    return a + F.softplus(-2.0 * a) - math.log(2.0)


def _softplus(x: Tensor) -> Tensor:
    # log(1 + e^x) = max(x, 0) + log1p(e^{-|x|}), exact everywhere: F.softplus returns x itself above its
    # threshold (20), whose derivative 1 then differs from sigmoid(x) by ~e^{-20}
    return torch.relu(x) + torch.log1p(torch.exp(-x.abs()))


def _half_relu_sq(x: Tensor) -> Tensor:
    return 0.5 * torch.relu(x) ** 2


def _tanh_prime(x: Tensor) -> Tensor:
    t = torch.tanh(x)
    return 1.0 - t * t


def _tanh_(x: Tensor) -> Tensor:
    # the fused engine's tanh: hamode's kernel where it applies (dense CPU float32/float64 tensors of some size) and
    # torch's is slow (native.use_tanh: MKL's vector math on a processor that is not Intel's), torch's elsewhere.
    # The size is checked inline: the deep nets' small states pay no further call.
    if x.numel() >= native.TANH_FROM and native.use_tanh():
        out = native.tanh_(x)
        if out is not None:
            return out
    return torch.tanh_(x)


def _sigmoid_prime(x: Tensor) -> Tensor:
    s = torch.sigmoid(x)
    return s * (1.0 - s)


@dataclass(frozen=True)
class Activation:
    """An activation σ with its antiderivative σ̃ (σ̃' = σ) and derivative σ'.

    Attributes:
        name: registry name.
        sigma: σ.
        antiderivative: σ̃, used by the Hamiltonian ``H = 1ᵀ σ̃(K y + b)``.
        derivative: σ'.
        slope_bound: sup |σ'| (S in the gradient upper bound).
    """

    name: str
    sigma: Callable[[Tensor], Tensor]
    antiderivative: Callable[[Tensor], Tensor]
    derivative: Callable[[Tensor], Tensor]
    slope_bound: float
    backprop_through_output: Callable[[Tensor, Tensor], Tensor]
    """``g ⊙ σ'(z)`` computed from ``s = σ(z)`` (no need to keep z); may overwrite g. Fused engine only."""
    sigma_: Callable[[Tensor], Tensor]
    """σ in place (fused engine only; for tanh, [`hamode.native.tanh_`][hamode.native.tanh_] where it applies)."""
    native_code: int | None = None
    """How the native VJP ([`hamode.native.rowvjp_sums`][hamode.native.rowvjp_sums]) takes σ' from σ's output
    (0 tanh, 1 sigmoid, 2 relu); ``None``: it does not know this σ, and its VJPs stay with torch."""


# The backward of σ from its output as one pass (the kernels autograd itself runs for torch.tanh / sigmoid / relu):
# written as g (1 - s²) with mul and addcmul_ it took three passes, 5x the time on a (78 400, 8) state. From
# IN_PLACE_FROM elements the result is written over g (the callers' fresh product): a new tensor of that size costs
# its first-touch page faults (a (78 400, 8) state: 530 -> 440 us); below it the plain call has less overhead.
IN_PLACE_FROM = 1 << 16
_tanh_bw, _tanh_bw_into = torch.ops.aten.tanh_backward.default, torch.ops.aten.tanh_backward.grad_input
_relu_bw, _relu_bw_into = torch.ops.aten.threshold_backward.default, torch.ops.aten.threshold_backward.grad_input
_sigmoid_bw, _sigmoid_bw_into = torch.ops.aten.sigmoid_backward.default, torch.ops.aten.sigmoid_backward.grad_input


def _tanh_backprop(g: Tensor, s: Tensor) -> Tensor:  # g (1 - s²)
    return _tanh_bw(g, s) if g.numel() < IN_PLACE_FROM else _tanh_bw_into(g, s, grad_input=g)


def _relu_backprop(g: Tensor, s: Tensor) -> Tensor:  # g where s > 0, else 0
    return _relu_bw(g, s, 0) if g.numel() < IN_PLACE_FROM else _relu_bw_into(g, s, 0, grad_input=g)


def _sigmoid_backprop(g: Tensor, s: Tensor) -> Tensor:  # g s (1 - s)
    return _sigmoid_bw(g, s) if g.numel() < IN_PLACE_FROM else _sigmoid_bw_into(g, s, grad_input=g)


_ACTIVATIONS = {
    "tanh": Activation("tanh", torch.tanh, _log_cosh, _tanh_prime, 1.0, _tanh_backprop, _tanh_, 0),
    "relu": Activation(
        "relu", torch.relu, _half_relu_sq, lambda x: (x > 0).to(x.dtype), 1.0, _relu_backprop, torch.relu_, 2
    ),
    "sigmoid": Activation(
        "sigmoid", torch.sigmoid, _softplus, _sigmoid_prime, 0.25, _sigmoid_backprop, torch.sigmoid_, 1
    ),
}


ActivationName = Literal["tanh", "relu", "sigmoid"]
"""The names of the built-in activations (the choices a config's ``activation`` takes)."""
assert set(typing.get_args(ActivationName)) == set(_ACTIVATIONS)


def list_activations() -> list[str]:
    """Names accepted by ``activation=`` arguments."""
    return sorted(_ACTIVATIONS)


def get_activation(activation: str | Activation) -> Activation:
    """Look an activation up by name (or pass an `Activation` through)."""
    if isinstance(activation, Activation):
        return activation
    if not isinstance(activation, str):
        raise TypeError(f"activation must be a name or an Activation, got {type(activation).__name__}")
    try:
        return _ACTIVATIONS[activation]
    except KeyError:
        raise ValueError(f"unknown activation {activation!r}; valid: {', '.join(list_activations())}") from None
