"""Explicit Runge-Kutta rules, each a Butcher tableau: they work on any field."""

from __future__ import annotations

from .base import register_integrator
from .reversible_rk import ReversibleRungeKutta
from .runge_kutta import RungeKutta

__all__ = ["RK4", "RK38", "Euler", "Heun", "Midpoint", "ReversibleEuler", "ReversibleHeun", "ReversibleRK4"]


@register_integrator("euler")
class Euler(RungeKutta):
    """Forward Euler: ``y_{k+1} = y_k + dt f(t_k, y_k)``.

    Order 1, not symplectic, not reversible. With one step per layer this is the H1
    layer of the papers (Haber & Ruthotto 2017; TAC eq. 6).
    """

    order = 1
    a = ((),)
    b = (1.0,)


@register_integrator("midpoint")
class Midpoint(RungeKutta):
    """Explicit midpoint: ``k = f(t, y)``, ``y_{k+1} = y + dt f(t + dt/2, y + dt/2 k)``.

    Order 2, not symplectic, not reversible (Hairer, Nørsett & Wanner, Solving ODEs I, II.1).
    """

    order = 2
    a = ((), (0.5,))
    b = (0.0, 1.0)


@register_integrator("heun")
class Heun(RungeKutta):
    """Heun's method (explicit trapezoidal rule): ``k_1 = f(t, y)``, ``k_2 = f(t + dt, y + dt k_1)``,
    ``y_{k+1} = y + dt/2 (k_1 + k_2)``.

    Order 2, not symplectic, not reversible (Heun 1900; Hairer, Nørsett & Wanner, Solving ODEs I, II.1).
    """

    order = 2
    a = ((), (1.0,))
    b = (0.5, 0.5)


@register_integrator("rk4")
class RK4(RungeKutta):
    """Classic Runge-Kutta: weights 1/6, 1/3, 1/3, 1/6 at t, t + dt/2, t + dt/2, t + dt.

    Order 4, not symplectic, not reversible (Kutta 1901; Hairer, Nørsett & Wanner, Solving ODEs I, II.1).
    """

    order = 4
    a = ((), (0.5,), (0.0, 0.5), (0.0, 0.0, 1.0))
    b = (1 / 6, 1 / 3, 1 / 3, 1 / 6)


@register_integrator("rk38")
class RK38(RungeKutta):
    """Kutta's 3/8 rule: stages at t, t + dt/3, t + 2dt/3, t + dt with weights 1/8, 3/8, 3/8, 1/8.

    ``a = [[1/3], [-1/3, 1], [1, -1, 1]]``. Order 4, not symplectic, not reversible (Kutta 1901;
    Hairer, Nørsett & Wanner, Solving ODEs I, Table II.1.2). This is the method torchdiffeq calls ``rk4``.
    """

    order = 4
    a = ((), (1 / 3,), (-1 / 3, 1.0), (1.0, -1.0, 1.0))
    b = (1 / 8, 3 / 8, 3 / 8, 1 / 8)


@register_integrator("reversible_euler")
class ReversibleEuler(ReversibleRungeKutta):
    """Forward Euler made algebraically reversible (McCallum & Foster 2024): exact gradients with memory flat in
    depth on every field. Order 1; two Euler evaluations per step."""

    base = Euler


@register_integrator("reversible_heun")
class ReversibleHeun(ReversibleRungeKutta):
    """Heun's method made algebraically reversible (McCallum & Foster 2024). Order 2; four evaluations per step.
    (Not Kidger et al.'s reversible Heun for SDEs, which couples the states differently.)"""

    base = Heun


@register_integrator("reversible_rk4")
class ReversibleRK4(ReversibleRungeKutta):
    """The classical RK4 made algebraically reversible (McCallum & Foster 2024). Order 4; eight evaluations per
    step."""

    base = RK4
