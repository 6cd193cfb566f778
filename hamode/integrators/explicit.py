"""Explicit Runge-Kutta rules: they work on any field."""

from __future__ import annotations

import math

from torch import Tensor

from .base import Integrator, register_integrator

__all__ = ["RK4", "Euler", "Midpoint"]


@register_integrator("euler")
class Euler(Integrator):
    """Forward Euler: ``y_{k+1} = y_k + dt f(t_k, y_k)``.

    Order 1, not symplectic, not reversible. With one step per layer this is the H1
    layer of the papers (Haber & Ruthotto 2017; TAC eq. 6).
    """

    order = 1

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        return y + dt * f(t, y)

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        return _taylor(abs(dt) * bounds["full"], 1)


@register_integrator("midpoint")
class Midpoint(Integrator):
    """Explicit midpoint: ``k = f(t, y)``, ``y_{k+1} = y + dt f(t + dt/2, y + dt/2 k)``.

    Order 2, not symplectic, not reversible (Hairer, Nørsett & Wanner, Solving ODEs I, II.1).
    """

    order = 2
    evaluations = 2.0

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        k1 = f(t, y)
        return y + dt * f(t + 0.5 * dt, y + (0.5 * dt) * k1)

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        return _taylor(abs(dt) * bounds["full"], 2)


@register_integrator("rk4")
class RK4(Integrator):
    """Classic Runge-Kutta: weights 1/6, 1/3, 1/3, 1/6 at t, t + dt/2, t + dt/2, t + dt.

    Order 4, not symplectic, not reversible (Hairer, Nørsett & Wanner, Solving ODEs I, II.1).
    """

    order = 4
    evaluations = 4.0

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        half = 0.5 * dt
        k1 = f(t, y)
        k2 = f(t + half, y + half * k1)
        k3 = f(t + half, y + half * k2)
        k4 = f(t + dt, y + dt * k3)
        return y + (dt / 6.0) * (k1 + 2.0 * (k2 + k3) + k4)

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        return _taylor(abs(dt) * bounds["full"], 4)


def _taylor(x: Tensor, order: int) -> Tensor:
    """``Σ_{k<=order} x^k / k!``: bounds ‖∂y_{k+1}/∂y_k‖ for these explicit RK methods
    (nested stages with nonnegative coefficients), with x = dt times the Lipschitz bound."""
    return sum(x**k / math.factorial(k) for k in range(order + 1))
