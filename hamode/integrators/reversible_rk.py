"""Reversible Runge-Kutta: exact, O(1)-memory gradients for every explicit Runge-Kutta rule, on every field.

McCallum & Foster, *Efficient, accurate and stable gradients for neural ODEs* (2024, arXiv 2410.11648): any explicit
one-step method ``Φ_h`` (here a [`RungeKutta`][hamode.integrators.RungeKutta] tableau) is made algebraically
reversible by carrying a second state ``z`` beside ``y`` and coupling the two with a parameter ``λ`` in (0, 1):

    y_{n+1} = λ (y_n − z_n) + Φ_h(t_n, z_n)
    z_{n+1} = z_n + y_{n+1} − Φ_{−h}(t_{n+1}, y_{n+1})

whose inverse is closed-form, with the same two evaluations of ``Φ``:

    z_n = z_{n+1} − y_{n+1} + Φ_{−h}(t_{n+1}, y_{n+1})
    y_n = z_n + (y_{n+1} − Φ_h(t_n, z_n)) / λ

so the reversible gradient mode rebuilds every state from the last one and needs no stored activations. The scheme
has the base method's order (``z`` and ``y`` differ by ``O(h^{p+1})`` per step). The net's state is the pair:
``z_0 = y_0``; the net outputs ``y_N``; ``z`` is internal (``copies = 2``: the engines stack the pair along a new
leading axis, the fused engine along the rows).

Cost: each step evaluates the base method twice (forward from ``z`` with ``h``, backward from ``y_{n+1}`` with
``−h``); the reversible backward evaluates it twice more to rebuild the state (those evaluations are the step's
own, so they also give its tape) and takes two base VJPs.

Linear stability: for ``y' = a y`` one step multiplies ``(y, z)`` by

    M(ha) = [[λ,                 R(ha) − λ                  ],
             [λ (1 − R(−ha)),    1 + (1 − R(−ha)) (R(ha) − λ)]]

with ``R`` the base method's stability function; ``det M = λ``. The scheme is stable for ``(λ, h)`` where both
eigenvalues of ``M(ha)`` lie in the closed unit disc for every eigenvalue ``a`` of the field's Jacobian
([`ReversibleRungeKutta.is_stable()`][hamode.integrators.ReversibleRungeKutta.is_stable]). ``λ`` close to 1 (the
default 0.999, the paper's) keeps the inverse's amplification ``(1/λ)^N`` small; smaller ``λ`` damps the forward
pass more and the backward reconstruction less.
"""

from __future__ import annotations

import cmath
import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .base import Bounds, Integrator, StepOps
from .runge_kutta import RungeKutta

__all__ = ["DEFAULT_COUPLING", "ReversibleRungeKutta", "check_coupling"]

DEFAULT_COUPLING = 0.999
"""The coupling parameter λ of McCallum & Foster (2024)."""


def check_coupling(coupling: object) -> float:
    """``coupling`` as a float if it is a number in (0, 1), else a ValueError naming it."""
    if (
        isinstance(coupling, bool)
        or not isinstance(coupling, (int, float))
        or not math.isfinite(coupling)
        or not 0 < coupling < 1
    ):
        raise ValueError(
            f"coupling (λ) must be a number in (0, 1), got {coupling!r}: λ = 1 decouples the two states (the "
            "scheme is then unstable), λ <= 0 makes the inverse step divide by zero or flip the state"
        )
    return float(coupling)


class ReversibleRungeKutta(Integrator):
    """The reversible version of an explicit Runge-Kutta rule (McCallum & Foster 2024): the base rule's order,
    an exact inverse step, exact gradients with memory flat in depth (``gradient="reversible"``).

    A declaration names the base tableau; the order, the evaluation count, the stage times and the fused step
    and its VJP are derived from it::

        @hamode.register_integrator("reversible_ralston")
        class ReversibleRalston(hamode.ReversibleRungeKutta):
            \"\"\"Ralston's second-order method, made reversible. Order 2.\"\"\"
            base = Ralston   # a RungeKutta subclass (its tableau)

    Args:
        coupling: the coupling parameter λ in (0, 1) (None: the class's ``coupling``, by default 0.999).

    The state is the pair ``(y, z)`` (``copies = 2``): ``z_0 = y_0``, the net outputs ``y_N``.
    """

    base: ClassVar[type[RungeKutta]]
    coupling: ClassVar[float] = DEFAULT_COUPLING
    reversible = True
    symplectic = False
    needs_separable = False
    copies = 2

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "base" not in cls.__dict__:
            return
        base = cls.base
        if not (isinstance(base, type) and issubclass(base, RungeKutta) and base.b):
            raise TypeError(f"{cls.__name__}.base must be a RungeKutta subclass with its tableau, got {base!r}")
        check_coupling(cls.coupling)
        if "order" not in cls.__dict__:
            cls.order = base.order
        cls.evaluations = 2 * base.evaluations
        cls.stage_offsets = (*base.stage_offsets, *(1.0 - c for c in base.stage_offsets))

    def __init__(self, coupling: float | None = None) -> None:
        if not hasattr(type(self), "base"):
            raise TypeError(f"{type(self).__name__} declares no base Runge-Kutta rule (class attribute 'base')")
        self.coupling = check_coupling(type(self).coupling if coupling is None else coupling)
        self._base = type(self).base()

    def __repr__(self) -> str:
        return f"{type(self).__name__}(coupling={self.coupling})"

    # ---------------------------------------------------------------- the pair (y, z)
    def lift(self, y0: Tensor) -> Tensor:
        return torch.stack((y0, y0))

    def output(self, state: Tensor) -> Tensor:
        return state[0]

    def perturb(self, state: Tensor, y: Tensor) -> Tensor:
        return torch.stack((y, state[1] + (y - state[0])))

    # ---------------------------------------------------------------- reference (autograd) path
    def step(self, f, t, state: Tensor, dt: float) -> Tensor:
        y, z = state.unbind(0)
        base = self._base.step
        y1 = self.coupling * (y - z) + base(f, t, z, dt)
        z1 = z + y1 - base(f, t + dt, y1, -dt)
        return torch.stack((y1, z1))

    def inverse_step(self, f, t, state: Tensor, dt: float) -> Tensor:
        y1, z1 = state.unbind(0)
        base = self._base.step
        z = z1 - y1 + base(f, t + dt, y1, -dt)
        y = z + (y1 - base(f, t, z, dt)) / self.coupling
        return torch.stack((y, z))

    # ---------------------------------------------------------------- fused engine (the pair stacked on the rows)
    def fused_step(self, ops: StepOps, j, state: Tensor, dt):
        y, z = state.chunk(2)
        zs, forward = self._base.fused_step(ops, j, z, dt)
        y1 = torch.add(zs, y - z, alpha=self.coupling)
        ys, backward = self._base.fused_step(ops, j, y1, -dt)
        return torch.cat((y1, z + (y1 - ys))), (*forward, *backward)

    def fused_vjp(self, ops: StepOps, j, tape, g: Tensor, dt):
        gy1, gz1 = g.chunk(2)
        half = len(tape) // 2
        # z1 = z + y1 − Φ_{−h}(y1): the VJP of −Φ_{−h} is that of Φ_{−h} with the cotangent negated
        g_y1 = gy1 + gz1 + self._base.fused_vjp(ops, j, tape[half:], -gz1, -dt)
        # y1 = λ (y − z) + Φ_h(z)
        g_z = torch.add(gz1 + self._base.fused_vjp(ops, j, tape[:half], g_y1, dt), g_y1, alpha=-self.coupling)
        return torch.cat((self.coupling * g_y1, g_z))

    def fused_inverse_with_tape(self, ops: StepOps, j, state: Tensor, dt):
        """The previous pair and its step's tape, from the inverse's own evaluations (the same two the step made)."""
        y1, z1 = state.chunk(2)
        ys, backward = self._base.fused_step(ops, j, y1, -dt)
        z = z1 - y1 + ys
        zs, forward = self._base.fused_step(ops, j, z, dt)
        y = torch.add(z, y1 - zs, alpha=1.0 / self.coupling)
        return torch.cat((y, z)), (*forward, *backward)

    def fused_inverse(self, ops: StepOps, j, state: Tensor, dt):
        return self.fused_inverse_with_tape(ops, j, state, dt)[0]

    # ---------------------------------------------------------------- bounds and stability
    def growth_bound(self, dt: float, bounds: Bounds | Sequence[Bounds]) -> Tensor:
        """A Lipschitz bound of one step on the pair in the norm ``max(‖y‖, ‖z‖)``. With ``G_f`` the base rule's
        bound for its step from ``z`` and ``G_b`` for its step back from ``y_{n+1}`` (each at its own stage times,
        so ``Φ − I`` is ``(G − 1)``-Lipschitz): ``‖δy_{n+1}‖ <= (λ + (1 − λ) + G_f − 1) m = G_f m`` and
        ``‖δz_{n+1}‖ <= m + (G_b − 1) G_f m``, so the step grows by at most ``max(G_f, 1 + (G_b − 1) G_f)``. Lifting
        ``y_0 -> (y_0, y_0)`` and reading ``y_N`` have norm 1, so products of these bound ``‖∂y_N/∂y_j‖``."""
        stages = self._stage_bounds(bounds)
        half = len(stages) // 2
        forward = self._base.growth_bound(dt, stages[:half])
        backward = self._base.growth_bound(-dt, stages[half:])
        return torch.maximum(forward, 1 + (backward - 1) * forward)

    def stability_function(self, z: complex) -> complex:
        """``R(z)`` of the base tableau: ``1 + z bᵀ (I − z A)⁻¹ 1`` (explicit: a polynomial in ``z``)."""
        base = self._base
        s = len(base.b)
        stages: list[complex] = []
        for i in range(s):
            stages.append(1 + z * sum(base.a[i][m] * stages[m] for m in range(i)))
        return 1 + z * sum(bi * si for bi, si in zip(base.b, stages))

    def amplification(self, ha: complex) -> tuple[complex, complex]:
        """The eigenvalues of the one-step matrix ``M(ha)`` of ``y' = a y`` (module docstring)."""
        lam, r, s = self.coupling, self.stability_function(ha), self.stability_function(-ha)
        trace = lam + 1 + (1 - s) * (r - lam)
        root = cmath.sqrt(trace * trace - 4 * lam)
        return (trace + root) / 2, (trace - root) / 2

    def is_stable(self, ha: complex, tol: float = 1e-12) -> bool:
        """Whether a step ``h`` is linearly stable for the eigenvalue ``a`` (both eigenvalues of ``M(ha)`` in the
        closed unit disc, to ``tol``)."""
        return max(abs(mu) for mu in self.amplification(ha)) <= 1 + tol
