"""Step rules and their registry.

A rule is one declaration: a :class:`SplittingMethod` (kick/drift coefficients, separable
fields), a :class:`RungeKutta` (an explicit Butcher tableau, any field) or an
:class:`ImplicitRungeKutta` (a full tableau solved per step, e.g. Gauss-Legendre), registered with
``@register_integrator``. A hand-written :class:`Integrator` subclass with only a ``step``
runs on the autograd reference path.
"""

from .base import (
    Integrator,
    StepOps,
    get_integrator,
    list_integrators,
    register_integrator,
    unregister_integrator,
)
from .explicit import RK4, RK38, Euler, Heun, Midpoint
from .implicit import GaussLegendre4, ImplicitMidpoint, ImplicitRungeKutta, ImplicitSolveError
from .runge_kutta import RungeKutta
from .splitting import SplittingMethod, compose
from .symplectic import BlanesMoan4, Leapfrog, Suzuki4, SymplecticEuler, SymplecticEulerQP, Yoshida4, Yoshida6

__all__ = [
    "RK4",
    "RK38",
    "BlanesMoan4",
    "Euler",
    "GaussLegendre4",
    "Heun",
    "ImplicitMidpoint",
    "ImplicitRungeKutta",
    "ImplicitSolveError",
    "Integrator",
    "Leapfrog",
    "Midpoint",
    "RungeKutta",
    "SplittingMethod",
    "StepOps",
    "Suzuki4",
    "SymplecticEuler",
    "SymplecticEulerQP",
    "Yoshida4",
    "Yoshida6",
    "compose",
    "get_integrator",
    "list_integrators",
    "register_integrator",
    "unregister_integrator",
]
