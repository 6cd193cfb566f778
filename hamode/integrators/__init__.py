"""Step rules and their registry.

A rule is one declaration: a [`SplittingMethod`][hamode.integrators.SplittingMethod] (kick/drift coefficients, separable
fields), a [`RungeKutta`][hamode.integrators.RungeKutta] (an explicit Butcher tableau, any field) or an
[`ImplicitRungeKutta`][hamode.integrators.ImplicitRungeKutta] (a full tableau solved per step, e.g. Gauss-Legendre)
or a [`ReversibleRungeKutta`][hamode.integrators.ReversibleRungeKutta] (an explicit tableau made algebraically
reversible: exact gradients with memory flat in depth on every field),
registered with
``@register_integrator``. A hand-written [`Integrator`][hamode.integrators.Integrator] subclass with only a ``step``
runs on the autograd reference path.
"""

from .base import (
    Integrator,
    StepOps,
    get_integrator,
    list_integrators,
    register_integrator,
    set_declaration_check,
    unregister_integrator,
)
from .explicit import RK4, RK38, Euler, Heun, Midpoint, ReversibleEuler, ReversibleHeun, ReversibleRK4
from .implicit import GaussLegendre4, ImplicitMidpoint, ImplicitRungeKutta, ImplicitSolveError
from .reversible_rk import ReversibleRungeKutta
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
    "ReversibleEuler",
    "ReversibleHeun",
    "ReversibleRK4",
    "ReversibleRungeKutta",
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
    "set_declaration_check",
    "unregister_integrator",
]
