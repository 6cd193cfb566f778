"""Step rules and their registry.

One small module per family; a new rule is one class with ``@register_integrator``.
"""

from .base import Integrator, get_integrator, list_integrators, register_integrator
from .explicit import RK4, Euler, Midpoint
from .symplectic import Leapfrog, SymplecticEuler, SymplecticEulerQP, Yoshida4

__all__ = [
    "RK4",
    "Euler",
    "Integrator",
    "Leapfrog",
    "Midpoint",
    "SymplecticEuler",
    "SymplecticEulerQP",
    "Yoshida4",
    "get_integrator",
    "list_integrators",
    "register_integrator",
]
