"""Explicit Runge-Kutta rules: they work on any field."""

from __future__ import annotations

import math

import torch
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

    supports_fused = True

    def fused_step(self, ops, j, y, dt):
        y1, s = ops.f(j, y, dt, y)
        return y1, (y, s)

    def fused_vjp(self, ops, j, tape, g, dt):
        y, s = tape
        return ops.f_vjp(j, y, s, g, dt, g)

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

    supports_fused = True

    def fused_step(self, ops, j, y, dt):
        ym, s1 = ops.f(j, y, 0.5 * dt, y)
        y1, s2 = ops.f(j, ym, dt, y)
        return y1, (y, s1, ym, s2)

    def fused_vjp(self, ops, j, tape, g, dt):
        y, s1, ym, s2 = tape
        gym = ops.f_vjp(j, ym, s2, g, dt)
        return ops.f_vjp(j, y, s1, gym, 0.5 * dt, g + gym)

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

    supports_fused = True

    def fused_step(self, ops, j, y, dt):
        half = 0.5 * dt
        k1, s1 = ops.f(j, y)
        y2 = torch.add(y, k1, alpha=half)
        k2, s2 = ops.f(j, y2)
        y3 = torch.add(y, k2, alpha=half)
        k3, s3 = ops.f(j, y3)
        y4 = torch.add(y, k3, alpha=dt)
        k4, s4 = ops.f(j, y4)
        y1 = torch.add(y, torch.add(k1, k2 + k3, alpha=2.0) + k4, alpha=dt / 6.0)  # the reference's order
        return y1, (y, s1, y2, s2, y3, s3, y4, s4)

    def fused_vjp(self, ops, j, tape, g, dt):
        y, s1, y2, s2, y3, s3, y4, s4 = tape
        # stage cotangents: k4: dt/6 g; k3: dt/3 g + dt gy4; k2: dt/3 g + dt/2 gy3; k1: dt/6 g + dt/2 gy2
        gy4 = ops.f_vjp(j, y4, s4, g, dt / 6.0)
        gy3 = ops.f_vjp(j, y3, s3, torch.add(g, gy4, alpha=3.0), dt / 3.0)
        gy2 = ops.f_vjp(j, y2, s2, torch.add(g, gy3, alpha=1.5), dt / 3.0)
        return ops.f_vjp(j, y, s1, torch.add(g, gy2, alpha=3.0), dt / 6.0, g + gy4 + gy3 + gy2)

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        return _taylor(abs(dt) * bounds["full"], 4)


def _taylor(x: Tensor, order: int) -> Tensor:
    """``Σ_{k<=order} x^k / k!``: bounds ‖∂y_{k+1}/∂y_k‖ for these explicit RK methods
    (nested stages with nonnegative coefficients), with x = dt times the Lipschitz bound."""
    return sum(x**k / math.factorial(k) for k in range(order + 1))
