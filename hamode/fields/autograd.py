"""Fields from user Hamiltonians, differentiated by autograd: any ``H(t, y)`` with ``dy/dt = J ∇_y H``, and
separable ``H = T(t, p) + V(t, q)`` (every explicit symplectic rule applies)."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import torch
from torch import Tensor

from .base import Field, SeparableMixin
from .structure import check_skew, j1, j2

__all__ = ["AutogradHamiltonianField", "AutogradSeparableField"]


def _energy(fn, name: str, t, x: Tensor) -> Tensor:
    E = fn(t, x)
    if not isinstance(E, Tensor) or E.shape != x.shape[:-1]:
        raise ValueError(
            f"{name}(t, x) must return one energy per sample, shape {tuple(x.shape[:-1])}; "
            f"got {getattr(E, 'shape', type(E).__name__)}"
        )
    return E


def _gradient(fn, name: str, t, x: Tensor) -> Tensor:
    """``∇_x fn(t, x)`` (with a graph while gradients are on, so the flow stays differentiable)."""
    keep = torch.is_grad_enabled()
    with torch.enable_grad():
        # under no_grad a view of a tensor that requires grad still says requires_grad: detach whenever grad is off
        x_in = x if (keep and x.requires_grad) else x.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(_energy(fn, name, t, x_in).sum(), x_in, create_graph=keep)
    return g


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

    def direct_parameters(self) -> list[Tensor]:
        return list(self.parameters())  # H's own parameters, used by every layer

    def reference_tensor(self) -> Tensor | None:
        # J is a constant matrix cast to the state's dtype; only H's own parameters constrain the input
        for t in self.parameters():
            return t
        return None

    def _energy_at(self, t, y: Tensor) -> Tensor:
        return _energy(self.H, "hamiltonian", t, y)

    def _grad_H(self, t, y: Tensor) -> Tensor:
        return _gradient(self.H, "hamiltonian", t, y)

    # LayerRHS passes the weights dict; the user's H gets the time instead.
    def layer(self, j, table=None, grid=None):
        return _AutogradLayer(self, j, {"J": self.J_matrix})

    def layer_from_local(self, j, local, grid=None):
        return _AutogradLayer(self, j, {"J": self.J_matrix})

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        return w["J"]


class _AutogradLayer:
    """Layer view of an [`AutogradHamiltonianField`][hamode.fields.AutogradHamiltonianField] (H is evaluated at the
    stage time)."""

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


class AutogradSeparableField(SeparableMixin, Field):
    """A separable user Hamiltonian ``H(t, p, q) = T(t, p) + V(t, q)`` on ``y = [p, q]`` (p the first half):

    ``dp/dt = -∂V/∂q``, ``dq/dt = ∂T/∂p``, structure ``J = [[0, -I], [I, 0]]``. Separable, so every splitting
    method applies (``leapfrog``, ``yoshida4``, ...) and, with them, ``gradient="reversible"``. The gradients
    of T and V are taken by autograd; T's and V's own parameters (if they are modules) are shared by all
    layers, and ``n_layers`` only sets the grid the integrators step on. Runs on the autograd reference path.

    Examples::

        pendulum = hamode.AutogradSeparableField(
            kinetic=lambda t, p: 0.5 * (p**2).sum(-1), potential=lambda t, q: (1 - torch.cos(q)).sum(-1), dim=2
        )
        henon_heiles = hamode.AutogradSeparableField(
            kinetic=lambda t, p: 0.5 * (p**2).sum(-1),
            potential=lambda t, q: 0.5 * (q**2).sum(-1) + q[..., 0] ** 2 * q[..., 1] - q[..., 1] ** 3 / 3,
            dim=4,
        )

    Args:
        kinetic: ``T(t, p)``, a callable or ``nn.Module`` returning one energy per sample (``p.shape[:-1]``).
        potential: ``V(t, q)``, likewise.
        dim: state size n (even): p and q have n/2 entries each.
        n_layers: number of layers of the grid (default 1).
    """

    default_integrator: ClassVar[str] = "leapfrog"

    def __init__(
        self,
        kinetic: Callable[[Tensor | float, Tensor], Tensor],
        potential: Callable[[Tensor | float, Tensor], Tensor],
        dim: int,
        n_layers: int = 1,
    ) -> None:
        for name, fn in (("kinetic", kinetic), ("potential", potential)):
            if not callable(fn):
                raise TypeError(f"{name} must be callable {name[0].upper()}(t, x), got {type(fn).__name__}")
        if isinstance(dim, int) and not isinstance(dim, bool) and dim % 2:
            raise ValueError(f"AutogradSeparableField splits the state into p and q and needs an even dim, got {dim}")
        super().__init__(dim, n_layers)
        self.T = kinetic  # registered as submodules if they are nn.Modules
        self.V = potential
        self.register_buffer("J_matrix", -j1(dim))

    def weight_table(self) -> dict[str, Tensor]:
        return {}

    def direct_parameters(self) -> list[Tensor]:
        return list(self.parameters())

    def layer(self, j, table=None, grid=None):
        return _SeparableAutogradLayer(self, j)

    def layer_from_local(self, j, local, grid=None):
        return _SeparableAutogradLayer(self, j)

    def reference_tensor(self) -> Tensor | None:
        # J is a constant matrix; only T's and V's own parameters constrain the input
        for t in self.parameters():
            return t
        return None

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        return self.J_matrix

    @property
    def J(self) -> Tensor:
        """``[[0, -I], [I, 0]]``: ``dp/dt = -∂H/∂q``, ``dq/dt = ∂H/∂p`` for ``y = [p, q]``."""
        return self.J_matrix


class _SeparableAutogradLayer:
    """Layer view of an [`AutogradSeparableField`][hamode.fields.AutogradSeparableField]: the half-fields at the
    stage time."""

    __slots__ = ("field", "j")

    def __init__(self, field: AutogradSeparableField, j) -> None:
        self.field, self.j = field, j

    def dp(self, t, q: Tensor) -> Tensor:
        return -_gradient(self.field.V, "potential", t, q)

    def dq(self, t, p: Tensor) -> Tensor:
        return _gradient(self.field.T, "kinetic", t, p)

    def split(self, y: Tensor):
        return self.field.split(y)

    def join(self, p: Tensor, q: Tensor) -> Tensor:
        return self.field.join(p, q)

    def __call__(self, t, y: Tensor) -> Tensor:
        p, q = self.split(y)
        return self.join(self.dp(t, q), self.dq(t, p))

    def hamiltonian(self, t, y: Tensor) -> Tensor:
        p, q = self.split(y)
        return _energy(self.field.T, "kinetic", t, p) + _energy(self.field.V, "potential", t, q)

    def structure(self, t) -> Tensor:
        return self.field.J

    @property
    def J(self) -> Tensor:
        return self.field.J

    def lipschitz(self, t):
        raise NotImplementedError("AutogradSeparableField states no Lipschitz bound (T and V are the user's)")
