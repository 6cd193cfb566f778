"""MS1 and MS2 (Haber & Ruthotto): fields with ``J Kᵀ = I``."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

from ..activations import Activation
from ..architectures import register_architecture
from .base import Field, InitMode, SeparableMixin, WeightsMode, affine_act, axpy, mm_out, wdot, wsum

__all__ = ["MS1Field", "MS2Field"]


def _check_even(dim: int, who: str, why: str) -> None:
    if isinstance(dim, int) and not isinstance(dim, bool) and dim % 2:
        raise ValueError(f"{who} needs an even dim ({why}); got dim={dim}: pad the input with one zero state")


@register_architecture("MS1")
class MS1Field(SeparableMixin, Field):
    """MS1 (Haber & Ruthotto, Verlet): y = [y; z] with halves of size n/2,

    ``dz/dt = -σ(K_0ᵀ y + b_1)``, ``dy/dt = σ(K_0 z + b_2)``.

    ``symplectic_euler`` updates z first (with y_j) and then y (with z_{j+1}), the
    published layer, so here p = z (the second half) and q = y (the first half).
    Hamiltonian form: ``H = 1ᵀσ̃(K_0ᵀ y + b_1) + 1ᵀσ̃(K_0 z + b_2)`` with
    ``J = [[0, K_0⁻ᵀ], [-K_0⁻¹, 0]]`` (which needs K_0 invertible and changes with the
    layer). Parameters ``K0`` (nodes, n/2, n/2), ``b1``, ``b2`` (nodes, n/2): n²/4 + n per layer.
    """

    default_integrator: ClassVar[str] = "symplectic_euler"
    constant_structure: ClassVar[bool] = False
    p_is_first_half: ClassVar[bool] = False

    def __init__(
        self,
        dim: int,
        n_layers: int,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        _check_even(dim, "MS1Field", "it splits the state into y and z")
        super().__init__(dim, n_layers, activation, weights)
        factory = {"dtype": dtype, "device": device}
        half = dim // 2
        self.half = half
        self._stacked("K0", (half, half), half, init, factory)
        self._stacked("b1", (half,), None, init, factory)
        self._stacked("b2", (half,), None, init, factory)

    def parameters_per_layer(self) -> int:
        """K_0 (n/2 × n/2), b_1 and b_2 (n/2 each) per layer: n²/4 + n."""
        return self.half * self.half + 2 * self.half

    def _dp(self, w: dict[str, Tensor], q: Tensor) -> Tensor:  # dz/dt from y
        return -self.activation.sigma(torch.matmul(q, w["K0"]) + w["b1"])

    def _dq(self, w: dict[str, Tensor], p: Tensor) -> Tensor:  # dy/dt from z
        return self.activation.sigma(torch.matmul(p, w["K0"].mT) + w["b2"])

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        z, yy = self.split(y)
        sig = self.activation.antiderivative
        return sig(torch.matmul(yy, w["K0"]) + w["b1"]).sum(-1) + sig(torch.matmul(z, w["K0"].mT) + w["b2"]).sum(-1)

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        K0inv = torch.linalg.inv(w["K0"])
        zero = torch.zeros_like(K0inv)
        return torch.cat([torch.cat([zero, K0inv.mT], 1), torch.cat([-K0inv, zero], 1)], 0)

    # fused engine
    def fused_weights(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"K0": table["K0"], "K0t": table["K0"].mT, "b1": table["b1"], "b2": table["b2"]}

    def fused_dp(self, w, q, alpha=1.0, base=None):  # -σ(y K0 + b1)
        s = affine_act(self.activation, q, w["K0"], w["b1"])
        return axpy(base, s, -alpha), s

    def fused_dp_vjp(self, w, q, s, c, alpha=1.0, base=None):  # factor gz is for +σ: dp = -σ flips the sign
        gz = self.activation.backprop_through_output(c.clone(), s)  # c belongs to the caller
        return mm_out(gz, w["K0t"], -alpha, base), (gz, q)

    def fused_dq(self, w, p, alpha=1.0, base=None):  # σ(z K0ᵀ + b2)
        s = affine_act(self.activation, p, w["K0t"], w["b2"])
        return axpy(base, s, alpha), s

    def fused_dq_vjp(self, w, p, s, c, alpha=1.0, base=None):
        gz = self.activation.backprop_through_output(c.clone(), s)  # c belongs to the caller
        return mm_out(gz, w["K0"], alpha, base), (gz, p)

    def fused_group_grads(self, name, fw, table, factors, a):
        GZ, V = factors
        if name == "dp":  # dz/dt = -σ(y K0 + b1): the factor gz is for +σ
            return {"K0": wdot(V, GZ, a).neg_(), "b1": wsum(GZ, a).neg_()}
        return {"K0": wdot(GZ, V, a), "b2": wsum(GZ, a)}

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        L = self.activation.slope_bound * torch.linalg.matrix_norm(w["K0"], 2)
        return {"dp": L, "dq": L, "full": L}


@register_architecture("MS2")
class MS2Field(Field):
    """MS2 (Haber & Ruthotto; AntisymmetricRNN): ``dy/dt = σ(K_j y + b_j)`` with K_j skew-symmetric.

    K_j is parametrised by its strictly upper triangle (``U``: (nodes, n(n-1)/2)), so
    it is skew by construction: (n² + n)/2 parameters per layer. Hamiltonian form:
    ``H = 1ᵀσ̃(K y + b)``, ``J = K⁻ᵀ`` (needs an even n: an odd skew matrix is singular).
    """

    default_integrator: ClassVar[str] = "euler"
    constant_structure: ClassVar[bool] = False

    def __init__(
        self,
        dim: int,
        n_layers: int,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        _check_even(dim, "MS2Field", "an odd-sized skew-symmetric K is singular, so J Kᵀ = I has no solution")
        super().__init__(dim, n_layers, activation, weights)
        factory = {"dtype": dtype, "device": device}
        iu = torch.triu_indices(dim, dim, 1, device=device)
        self.register_buffer("_iu", iu, persistent=False)
        self._stacked("U", (iu.shape[1],), dim, init, factory)
        self._stacked("b", (dim,), None, init, factory)

    def parameters_per_layer(self) -> int:
        """The strict upper triangle of the skew K (n(n - 1)/2) and b (n) per layer: (n² + n)/2."""
        return self.dim * (self.dim - 1) // 2 + self.dim

    def weight_table(self) -> dict[str, Tensor]:
        U = self.U
        n = U.shape[0]
        nodes = torch.arange(n, device=U.device)[:, None]
        upper = U.new_zeros(n, self.dim, self.dim).index_put((nodes, self._iu[0][None], self._iu[1][None]), U)
        return {"K": upper - upper.mT, "b": self.b, "U": U}

    @property
    def stacked_keys(self) -> tuple[str, ...]:
        return ("K", "b", "U")

    @property
    def smoothness_keys(self) -> tuple[str, ...]:
        return ("K", "b")

    @property
    def K(self) -> Tensor:
        """The skew-symmetric K (nodes, n, n)."""
        return self.weight_table()["K"]

    def _rhs(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        return self.activation.sigma(torch.matmul(y, w["K"].mT) + w["b"])

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        return self.activation.antiderivative(torch.matmul(y, w["K"].mT) + w["b"]).sum(-1)

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        return torch.linalg.inv(w["K"].mT)

    # fused engine
    def fused_weights(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"K": table["K"], "Kt": table["K"].mT, "b": table["b"]}

    def fused_f(self, w, y, alpha=1.0, base=None):
        s = affine_act(self.activation, y, w["Kt"], w["b"])
        return axpy(base, s, alpha), s

    def fused_f_vjp(self, w, y, s, c, alpha=1.0, base=None):
        gz = self.activation.backprop_through_output(c.clone(), s)  # c belongs to the caller
        return mm_out(gz, w["K"], alpha, base), (gz, y)

    def fused_group_grads(self, name, fw, table, factors, a):
        GZ, Y = factors
        return {"K": wdot(GZ, Y, a), "b": wsum(GZ, a)}

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        return {"full": self.activation.slope_bound * torch.linalg.matrix_norm(w["K"], 2)}
