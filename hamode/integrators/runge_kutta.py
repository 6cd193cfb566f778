"""Explicit Runge-Kutta methods, declared by their Butcher tableau."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor

from .base import Bounds, Integrator, StepOps

__all__ = ["RungeKutta", "check_consistency"]

_OUT = -1  # the step's output, as a consumer of stages


class RungeKutta(Integrator):
    """An explicit Runge-Kutta method: ``a`` (strictly lower-triangular rows), ``b``, ``c``.

    ``k_i = f(t + c_i dt, y + dt Σ_{j<i} a_ij k_j)``, ``y_{k+1} = y + dt Σ_i b_i k_i``. Every
    stage uses the step's layer. Subclasses declare ``a``, ``b`` (``c`` defaults to the row
    sums of ``a``) and ``order`` and get, derived once: the step, the fused step and its
    vector-Jacobian product (stage cotangents ``ḡk_i = dt (b_i ḡ + Σ_{l>i} a_li ḡy_l)``), the
    evaluation count, the stage times and the growth bound. Works on every field.

    Example::

        @hamode.register_integrator("my_heun")
        class MyHeun(hamode.RungeKutta):
            \"\"\"Heun's method. Order 2.\"\"\"
            order = 2
            a = ((), (1.0,))
            b = (0.5, 0.5)
    """

    a: ClassVar[tuple[tuple[float, ...], ...]] = ()
    b: ClassVar[tuple[float, ...]] = ()
    c: ClassVar[tuple[float, ...] | None] = None
    consumers: ClassVar[tuple[tuple[tuple[int, float], ...], ...]] = ()
    _forward_plan: ClassVar[tuple] = ()
    _vjp_order: ClassVar[tuple] = ()
    _n_sums: ClassVar[int] = 1
    """Derived: per stage i, the ``(m, weight)`` that read ``k_i`` (``m = -1``: the output, weight ``b_i``)."""

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "b" not in cls.__dict__:
            return
        b = tuple(float(x) for x in cls.b)
        s = len(b)
        rows = [tuple(float(x) for x in row) for row in cls.a] if cls.a else [()]
        rows = rows + [()] * (s - len(rows))
        if len(rows) != s or any(len(row) > i for i, row in enumerate(rows)):
            raise ValueError(
                f"{cls.__name__}.a must have one row per stage ({s}), row i with at most i entries (explicit)"
            )
        A = [list(row) + [0.0] * (s - len(row)) for row in rows]
        c = tuple(sum(row) for row in A) if cls.c is None else tuple(float(x) for x in cls.c)
        if len(c) != s:
            raise ValueError(f"{cls.__name__}.c must have {s} entries, got {len(c)}")
        check_consistency(cls.__name__, A, b, c)
        consumers = []
        for i in range(s):
            used = [(m, A[m][i]) for m in range(i + 1, s) if A[m][i] != 0.0]
            if b[i] != 0.0:
                used.append((_OUT, b[i]))
            if not used:
                raise ValueError(f"{cls.__name__}: stage {i} is read by no later stage and has b = 0")
            consumers.append(tuple(used))
        cls.a, cls.b, cls.c = tuple(tuple(row) for row in A), b, c
        cls.consumers = tuple(consumers)
        # the fused engine's plans, fixed here so that a step does no bookkeeping: sums are slots 0..s-1 (stage
        # inputs) and s (the output); a VJP's cotangent is the lead term plus the others scaled by w / lead
        slot = {m: (s if m == _OUT else m) for m in range(-1, s)}
        cls._forward_plan = tuple(tuple((slot[m], w) for m, w in used) for used in consumers)
        vjp = []
        for used in consumers:
            used = sorted(used, key=lambda u: u[0] != _OUT)  # lead with the output's weight when there is one
            lead_w = used[0][1]
            vjp.append((slot[used[0][0]], lead_w, tuple((slot[m], w / lead_w) for m, w in used[1:])))
        cls._vjp_order = tuple((i, *vjp[i]) for i in reversed(range(s)))
        cls._n_sums = s + 1
        cls.evaluations = float(s)
        cls.stage_offsets = c

    # ---------------------------------------------------------------- reference (autograd) path
    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        ks: list[Tensor] = []
        for i, ci in enumerate(self.c):
            inc = _combination(self.a[i][:i], ks)
            ks.append(f(t + ci * dt, y if inc is None else y + dt * inc))
        return y + dt * _combination(self.b, ks)

    # ---------------------------------------------------------------- fused engine
    def fused_step(self, ops: StepOps, j, y, dt):
        if self._n_sums == 2:  # one stage (Euler): the plan below, written out (the deep nets' per-layer overhead)
            out, ctx = ops.f(j, y, self._forward_plan[0][0][1] * dt, y)
            return out, (y, ctx)
        f = ops.f
        acc = [y] * self._n_sums  # stage inputs and (last) the output, built as the k's arrive
        tape = []
        for i, used in enumerate(self._forward_plan):
            yi = acc[i]
            if len(used) == 1:  # k_i feeds one sum: add it in the evaluation itself
                m, w = used[0]
                acc[m], ctx = f(j, yi, w * dt, acc[m])
            else:
                k, ctx = f(j, yi)
                for m, w in used:
                    acc[m] = torch.add(acc[m], k, alpha=w * dt)
            tape += (yi, ctx)
        return acc[-1], tuple(tape)

    def fused_vjp(self, ops: StepOps, j, tape, g, dt):
        if self._n_sums == 2:  # one stage: the order below, written out
            return ops.f_vjp(j, tape[0], tape[1], g, self._vjp_order[0][2] * dt, g)
        f_vjp = ops.f_vjp
        gys = [None] * self._n_sums  # stage-input cotangents; the last slot is the output's
        gys[-1] = g
        for i, lead, lead_w, others in self._vjp_order:
            c = gys[lead]
            for m, r in others:
                c = torch.add(c, gys[m], alpha=r)
            base = None
            if i == 0:
                base = g
                for m in range(1, self._n_sums - 1):
                    base = base + gys[m]
            gys[i] = f_vjp(j, tape[2 * i], tape[2 * i + 1], c, lead_w * dt, base)
        return gys[0]

    # ---------------------------------------------------------------- bounds
    def growth_bound(self, dt: float, bounds: Bounds | Sequence[Bounds]) -> Tensor:
        """``1 + |dt| Σ|b_i| L_i (1 + |dt| Σ_j |a_ij| K_j)`` with ``K_i`` the bound on ``‖∂k_i/∂y‖`` and ``L_i`` the
        Lipschitz bound at stage i's time (for RK4 with equal L this is ``Σ_{k<=4} (|dt| L)^k / k!``)."""
        stage = self._stage_bounds(bounds)
        h = abs(dt)
        K: list[Tensor] = []
        for i in range(len(self.b)):
            inner = 1 + h * sum(abs(self.a[i][j]) * K[j] for j in range(i))
            K.append(stage[i]["full"].to(torch.float64) * inner)
        return 1 + h * sum(abs(bi) * Ki for bi, Ki in zip(self.b, K))


def check_consistency(name: str, A: Sequence[Sequence[float]], b: Sequence[float], c: Sequence[float]) -> None:
    """A tableau's consistency conditions: ``c_i = Σ_j a_ij`` and ``Σ b_i = 1`` (explicit and implicit alike)."""
    for i, row in enumerate(A):
        if not math.isclose(c[i], sum(row), rel_tol=0, abs_tol=1e-12):
            raise ValueError(f"{name}: c[{i}] = {c[i]} must equal the row sum of a ({sum(row)})")
    if not math.isclose(sum(b), 1.0, rel_tol=0, abs_tol=1e-12):
        raise ValueError(f"{name}: the weights b must sum to 1 (consistency), got {sum(b)}")


def _combination(weights: Sequence[float], ks: Sequence[Tensor]) -> Tensor | None:
    """``Σ w_i k_i`` over the nonzero weights (None if all are zero)."""
    out = None
    for w, k in zip(weights, ks):
        if w == 0.0:
            continue
        term = k if w == 1.0 else w * k
        out = term if out is None else out + term
    return out
