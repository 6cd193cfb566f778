"""A field from any user Hamiltonian: ``dy/dt = J ∇_y H(t, y)`` by autograd."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from .base import Field
from .structure import check_skew, j1, j2

__all__ = ["AutogradHamiltonianField"]


class AutogradHamiltonianField(Field):
    """``dy/dt = J ∇_y H(t, y)`` for a user Hamiltonian ``H(t, y) -> (...)`` (an MLP, say).

    The gradient is taken by autograd (with ``create_graph`` while gradients are on, so
    the net stays differentiable in y0 and in H's parameters). ``n_layers`` only sets
    the layer grid the integrators step on; H's own parameters are shared by all
    layers and are not smoothed by the regulariser.

    Args:
        hamiltonian: a callable or ``nn.Module`` taking ``(t, y)`` and returning one
            energy per sample (shape ``y.shape[:-1]``).
        J: ``"J1"``, ``"J2"`` or a (dim, dim) skew-symmetric tensor.
        dim: state size n.
        n_layers: number of layers of the grid (default 1).
    """

    default_integrator: ClassVar[str] = "rk4"

    def __init__(
        self, hamiltonian: Callable[[Tensor | float, Tensor], Tensor], J: str | Tensor, dim: int, n_layers: int = 1
    ) -> None:
        super().__init__(dim, n_layers)
        if not callable(hamiltonian):
            raise TypeError(f"hamiltonian must be callable H(t, y), got {type(hamiltonian).__name__}")
        self.H = hamiltonian  # registered as a submodule if it is an nn.Module
        if isinstance(J, str):
            if J not in ("J1", "J2"):
                raise ValueError(f"J must be 'J1', 'J2' or a skew-symmetric tensor; got {J!r}")
            J = j1(dim) if J == "J1" else j2(dim)
        else:
            check_skew(J, dim)
        self.register_buffer("J_matrix", J.detach().clone())

    def weight_table(self) -> dict[str, Tensor]:
        return {"J": self.J_matrix}

    def reference_tensor(self) -> Tensor | None:
        # J is a constant matrix cast to the state's dtype; only H's own parameters constrain the input
        for t in self.parameters():
            return t
        return None

    def _energy_at(self, t, y: Tensor) -> Tensor:
        H = self.H(t, y)
        if not isinstance(H, Tensor) or H.shape != y.shape[:-1]:
            raise ValueError(
                f"hamiltonian(t, y) must return one energy per sample, shape {tuple(y.shape[:-1])}; "
                f"got {getattr(H, 'shape', type(H).__name__)}"
            )
        return H

    def _grad_H(self, t, y: Tensor) -> Tensor:
        keep = torch.is_grad_enabled()
        with torch.enable_grad():
            y_in = y if y.requires_grad else y.detach().requires_grad_(True)
            H = self._energy_at(t, y_in).sum()
            (g,) = torch.autograd.grad(H, y_in, create_graph=keep)
        return g

    # LayerRHS passes the weights dict; the user's H gets the time instead.
    def layer(self, j, table=None, grid=None):
        return _AutogradLayer(self, j, {"J": self.J_matrix})

    def layer_from_local(self, j, local, grid=None):
        return _AutogradLayer(self, j, {"J": self.J_matrix})

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        return w["J"]


class _AutogradLayer:
    """Layer view of an :class:`AutogradHamiltonianField` (H is evaluated at the stage time)."""

    __slots__ = ("field", "j", "local")

    def __init__(self, field: AutogradHamiltonianField, j, local) -> None:
        self.field, self.j, self.local = field, j, local

    def __call__(self, t, y: Tensor) -> Tensor:
        return torch.matmul(self.field._grad_H(t, y), self.local["J"].to(y).mT)

    def hamiltonian(self, t, y: Tensor) -> Tensor:
        return self.field._energy_at(t, y)

    @property
    def J(self) -> Tensor:
        return self.local["J"]
