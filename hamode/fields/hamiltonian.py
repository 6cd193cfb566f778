"""H1: ``dy/dt = J K(t)ᵀ σ(K(t) y + b(t))`` with a full K and a constant skew J."""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor, nn

from ..activations import Activation
from ..architectures import register_architecture
from ..validation import check_int
from .base import Field, InitMode, WeightsMode, layer_eval, layer_sums, vjp_factors
from .structure import fixed_structure, j2

__all__ = ["H1Field"]


@register_architecture("H1_J1", J="J1")
@register_architecture("H1_J2", J="J2")
class H1Field(Field):
    """The H1 H-DNN field ``dy/dt = J K_jᵀ σ(K_j y + b_j)`` (TAC eq. 5, L4DC H1).

    Hamiltonian ``H = 1ᵀ σ̃(K y + b)``; ``dy/dt = J ∇_y H``.

    Args:
        dim: state size n.
        n_layers: number of layers N.
        width: hidden size m of ``K: (m, n)`` (default n).
        J: ``"J1"`` (``[[0, I], [-I, 0]]``, even n), ``"J2"`` (+1 above the diagonal,
            -1 below), ``"learnable"`` (``J = A - Aᵀ`` with A learned, initialised to J2/2)
            or a user (n, n) skew-symmetric tensor.
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"`` (see [`Field`][hamode.fields.Field]).
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"`` (see [`Field`][hamode.fields.Field]).
        init: ``"default"`` (K ~ N(0, 1/n), b = 0) or ``"normal"`` (N(0, 1), the published code).

    Parameters: ``K`` (nodes, m, n), ``b`` (nodes, m), and ``A`` (n, n) if J is learnable.
    """

    default_integrator: ClassVar[str] = "euler"

    def __init__(
        self,
        dim: int,
        n_layers: int,
        width: int | None = None,
        J: str | Tensor = "J1",
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__(dim, n_layers, activation, weights)
        factory = {"dtype": dtype, "device": device}
        m = dim if width is None else check_int("width", width, 1)
        self.width = m
        self._stacked("K", (m, dim), dim, init, factory)
        self._stacked("b", (m,), None, init, factory)
        self.learnable_J = isinstance(J, str) and J == "learnable"
        if self.learnable_J:
            self.A = nn.Parameter(0.5 * j2(dim, **factory))
        else:
            self.register_buffer("J_matrix", fixed_structure(J, dim, **factory, also=("learnable",)))

    def parameters_per_layer(self) -> int:
        """K (m × n) and b (m) per layer: n² + n with the default width m = n."""
        return self.width * self.dim + self.width

    def weight_table(self) -> dict[str, Tensor]:
        table = super().weight_table()
        table["J"] = self.A - self.A.mT if self.learnable_J else self.J_matrix
        return table

    def _rhs(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        K = w["K"]
        s = self.activation.sigma(torch.matmul(y, K.mT) + w["b"])
        return torch.matmul(torch.matmul(s, K), w["J"].mT)

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        return self.activation.antiderivative(torch.matmul(y, w["K"].mT) + w["b"]).sum(-1)

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        return w["J"]

    # fused engine: f(y) = σ(y Kᵀ + b) (K Jᵀ), with K Jᵀ precomputed for all layers
    def fused_weights(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        K, J = table["K"], table["J"]
        KJ = torch.matmul(K, J.mT)
        return {"K": K, "Kt": K.mT, "b": table["b"], "J": J, "KJ": KJ, "KJt": KJ.mT}

    def fused_f(self, w, y, alpha=1.0, base=None):
        return layer_eval(self.activation, y, w["Kt"], w["b"], w["KJ"], alpha, base)

    def fused_f_vjp(self, w, y, s, c, alpha=1.0, base=None):
        return vjp_factors(self.activation, c, w["KJt"], s, w["K"], y, alpha, base)

    def fused_group_grads(self, name, fw, table, factors, a):
        dKJ, dK, db = layer_sums(factors, a)  # dKJ = ∂L/∂(K Jᵀ)
        grads = {"K": dK.add_(torch.matmul(dKJ, fw["J"])), "b": db}
        if table["J"].requires_grad:
            grads["J"] = torch.matmul(dKJ.mT, fw["K"]).sum(0)
        return grads

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        S = self.activation.slope_bound
        return {"full": S * torch.linalg.matrix_norm(w["J"], 2) * torch.linalg.matrix_norm(w["K"], 2) ** 2}
