"""Splitting (partitioned) methods for separable fields, declared by their coefficients.

A separable field has ``y = [p, q]``, ``dp/dt = a(t, q)`` and ``dq/dt = b(t, p)``. A
*kick* of weight ``α`` is the exact flow of the p-part for time ``α dt``
(``p += α dt a(q)``); a *drift* of weight ``β`` is that of the q-part
(``q += β dt b(p)``). Each is a shear, so every composition is symplectic and has an
exact inverse (the reversed sequence with ``-dt``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .base import Bounds, Integrator, StepOps

__all__ = ["SplittingMethod", "compose"]

_KICK, _DRIFT = 0, 1


def compose(coefficients: Sequence[tuple[float, float]], weights: Sequence[float]) -> tuple[tuple[float, float], ...]:
    """The coefficients of the composition of a method with steps ``w_1 dt, w_2 dt, ...``.

    Adjacent kicks (a drift of weight 0 between them) are merged into one, so a composition of
    leapfrog steps costs one kick per junction (Yoshida's triple jump: 4 kicks, 3 drifts).
    """
    out: list[list[float]] = []
    for w in weights:
        for a, b in coefficients:
            if out and out[-1][1] == 0.0:
                out[-1][0] += w * a
                out[-1][1] = w * b
            else:
                out.append([w * a, w * b])
    return tuple((a, b) for a, b in out)


class SplittingMethod(Integrator):
    """An explicit splitting method: ``coefficients = ((α_1, β_1), ..., (α_s, β_s))``.

    One step is kick ``α_1``, drift ``β_1``, kick ``α_2``, drift ``β_2``, ... (zero weights
    are skipped: no evaluation). Subclasses declare ``coefficients`` and ``order`` and get,
    derived once from them: the step, the exact inverse, the fused step and its
    vector-Jacobian product, the evaluation count, the stage times and the growth bound.

    Stage times: a kick reads q, so it is evaluated at the time q has reached
    (``t + dt Σ β`` of the drifts before it); a drift at ``t + dt Σ α`` of the kicks before
    it. A declaration may state other times in ``stage_times`` (one per nonzero weight, in
    step order, as multiples of dt); they matter only for weights that change inside a layer.

    Example (a user method, registered like hamode's own)::

        @hamode.register_integrator("my_leapfrog")
        class MyLeapfrog(hamode.SplittingMethod):
            \"\"\"Störmer-Verlet, kick-drift-kick. Order 2 (Hairer, Lubich & Wanner 2003).\"\"\"
            order = 2
            coefficients = ((0.5, 1.0), (0.5, 0.0))
    """

    symplectic = True
    reversible = True
    needs_separable = True
    coefficients: ClassVar[tuple[tuple[float, float], ...]] = ()
    stage_times: ClassVar[tuple[float, ...] | None] = None
    operations: ClassVar[tuple[tuple[int, float, float], ...]] = ()
    """Derived: ``(kind, weight, time offset)`` per nonzero weight, kind 0 = kick (p from q), 1 = drift."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "coefficients" not in cls.__dict__ and "stage_times" not in cls.__dict__:
            return
        coefficients = tuple((float(a), float(b)) for a, b in cls.coefficients)
        if not coefficients:
            raise TypeError(f"{cls.__name__}.coefficients must be a non-empty sequence of (kick, drift) pairs")
        for name, total in (("kick", sum(a for a, _ in coefficients)), ("drift", sum(b for _, b in coefficients))):
            if not math.isclose(total, 1.0, rel_tol=0, abs_tol=1e-12):
                raise ValueError(f"{cls.__name__}: the {name} weights must sum to 1 (consistency), got {total!r}")
        ops, clock = [], [0.0, 0.0]  # time reached by p (kicks) and by q (drifts)
        for a, b in coefficients:
            if a != 0.0:
                ops.append((_KICK, a, clock[1]))
                clock[0] += a
            if b != 0.0:
                ops.append((_DRIFT, b, clock[0]))
                clock[1] += b
        if cls.stage_times is not None:
            if len(cls.stage_times) != len(ops):
                raise ValueError(f"{cls.__name__}.stage_times needs one time per nonzero weight ({len(ops)})")
            ops = [(k, w, float(c)) for (k, w, _), c in zip(ops, cls.stage_times)]
        cls.coefficients = coefficients
        cls.operations = tuple(ops)
        cls.evaluations = 0.5 * len(ops)
        cls.stage_offsets = tuple(c for _, _, c in ops)

    # ---------------------------------------------------------------- reference (autograd) path
    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        p, q = f.split(y)
        for kind, w, c in self.operations:
            if kind == _KICK:
                p = p + (w * dt) * f.dp(t + c * dt, q)
            else:
                q = q + (w * dt) * f.dq(t + c * dt, p)
        return f.join(p, q)

    def inverse_step(self, f, t, y_next: Tensor, dt: float) -> Tensor:
        p, q = f.split(y_next)
        for kind, w, c in reversed(self.operations):
            if kind == _KICK:
                p = p - (w * dt) * f.dp(t + c * dt, q)
            else:
                q = q - (w * dt) * f.dq(t + c * dt, p)
        return f.join(p, q)

    # ---------------------------------------------------------------- fused engine
    def fused_step(self, ops: StepOps, j, state, dt):
        p, q = state
        tape: list[Tensor] = []
        for kind, w, _ in self.operations:
            if kind == _KICK:
                tape.append(q)
                p, s = ops.dp(j, q, w * dt, p)
            else:
                tape.append(p)
                q, s = ops.dq(j, p, w * dt, q)
            tape.append(s)
        return (p, q), tuple(tape)

    def fused_vjp(self, ops: StepOps, j, tape, g, dt):
        gp, gq = g
        for i in reversed(range(len(self.operations))):
            kind, w, _ = self.operations[i]
            x, s = tape[2 * i], tape[2 * i + 1]
            if kind == _KICK:  # p' = p + w dt a(q): gq += w dt (∂a/∂q)ᵀ gp
                gq = ops.dp_vjp(j, x, s, gp, w * dt, gq)
            else:
                gp = ops.dq_vjp(j, x, s, gq, w * dt, gp)
        return gp, gq

    def fused_inverse(self, ops: StepOps, j, state, dt):
        p, q = state
        for kind, w, _ in reversed(self.operations):
            if kind == _KICK:
                p = ops.dp(j, q, -w * dt, p)[0]
            else:
                q = ops.dq(j, p, -w * dt, q)[0]
        return p, q

    def fused_inverse_with_tape(self, ops: StepOps, j, state, dt):
        # undoing the operations in reverse order, operation i finds the half-state it was applied with: its kick
        # (drift) evaluates dp at the q (dq at the p) the step evaluated, so these evaluations are the step's tape
        p, q = state
        n = len(self.operations)
        tape: list = [None] * (2 * n)
        for i in reversed(range(n)):
            kind, w, _ = self.operations[i]
            if kind == _KICK:
                tape[2 * i] = q
                p, tape[2 * i + 1] = ops.dp(j, q, -w * dt, p)
            else:
                tape[2 * i] = p
                q, tape[2 * i + 1] = ops.dq(j, p, -w * dt, q)
        return (p, q), tuple(tape)

    # ---------------------------------------------------------------- bounds
    def growth_bound(self, dt: float, bounds: Bounds | Sequence[Bounds]) -> Tensor:
        """Each kick/drift ``[[I, w dt A], [0, I]]`` has norm ``<= 1 + |w dt| ‖A‖``; the product bounds the step."""
        out = torch.ones((), dtype=torch.float64)
        for (kind, w, _), b in zip(self.operations, self._stage_bounds(bounds)):
            out = out * (1 + abs(w * dt) * b["dp" if kind == _KICK else "dq"].to(torch.float64))
        return out
