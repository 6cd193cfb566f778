"""Explicit symplectic rules for separable fields (``dp/dt = a(t, q)``, ``dq/dt = b(t, p)``)."""

from __future__ import annotations

from torch import Tensor

from .base import Integrator, register_integrator

__all__ = ["Leapfrog", "SymplecticEuler", "SymplecticEulerQP", "Yoshida4"]


class _Separable(Integrator):
    symplectic = True
    reversible = True
    needs_separable = True

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        # each kick/drift [[I, dt A], [0, I]] has norm <= 1 + |dt| ‖A‖
        return (1 + abs(dt) * bounds["dp"]) * (1 + abs(dt) * bounds["dq"])


@register_integrator("symplectic_euler")
class SymplecticEuler(_Separable):
    """Semi-implicit (symplectic) Euler, p first:

    ``p_{k+1} = p_k + dt a(t, q_k)``, then ``q_{k+1} = q_k + dt b(t, p_{k+1})``.

    Order 1, symplectic, reversible (each half is a shear). This is the H2-DNN layer
    of TAC (Galimberti et al. 2023, eq. 14) whose backward sensitivities cannot vanish.
    """

    order = 1

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        p, q = f.split(y)
        p = p + dt * f.dp(t, q)
        return f.join(p, q + dt * f.dq(t, p))

    supports_fused = True

    def fused_step(self, ops, j, state, dt):
        p, q = state
        p1, sq = ops.dp(j, q, dt, p)
        q1, sp = ops.dq(j, p1, dt, q)
        return (p1, q1), (q, sq, p1, sp)

    def fused_vjp(self, ops, j, tape, g, dt):
        q, sq, p1, sp = tape
        gp1, gq1 = g
        gp = ops.dq_vjp(j, p1, sp, gq1, dt, gp1)
        return gp, ops.dp_vjp(j, q, sq, gp, dt, gq1)

    def fused_inverse(self, ops, j, state, dt):
        p1, q1 = state
        q, _ = ops.dq(j, p1, -dt, q1)
        p, _ = ops.dp(j, q, -dt, p1)
        return p, q

    def inverse_step(self, f, t, y_next: Tensor, dt: float) -> Tensor:
        p, q = f.split(y_next)
        q = q - dt * f.dq(t, p)
        return f.join(p - dt * f.dp(t, q), q)


@register_integrator("symplectic_euler_qp")
class SymplecticEulerQP(_Separable):
    """Semi-implicit (symplectic) Euler, q first:

    ``q_{k+1} = q_k + dt b(t, p_k)``, then ``p_{k+1} = p_k + dt a(t, q_{k+1})``.

    Order 1, symplectic, reversible; the adjoint of ``symplectic_euler`` (Hairer,
    Lubich & Wanner, Geometric Numerical Integration, VI.3).
    """

    order = 1

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        p, q = f.split(y)
        q = q + dt * f.dq(t, p)
        return f.join(p + dt * f.dp(t, q), q)

    supports_fused = True

    def fused_step(self, ops, j, state, dt):
        p, q = state
        q1, sp = ops.dq(j, p, dt, q)
        p1, sq = ops.dp(j, q1, dt, p)
        return (p1, q1), (p, sp, q1, sq)

    def fused_vjp(self, ops, j, tape, g, dt):
        p, sp, q1, sq = tape
        gp1, gq1 = g
        gq = ops.dp_vjp(j, q1, sq, gp1, dt, gq1)
        return ops.dq_vjp(j, p, sp, gq, dt, gp1), gq

    def fused_inverse(self, ops, j, state, dt):
        p1, q1 = state
        p, _ = ops.dp(j, q1, -dt, p1)
        q, _ = ops.dq(j, p, -dt, q1)
        return p, q

    def inverse_step(self, f, t, y_next: Tensor, dt: float) -> Tensor:
        p, q = f.split(y_next)
        p = p - dt * f.dp(t, q)
        return f.join(p, q - dt * f.dq(t, p))


def _fused_leapfrog(ops, j, p, q, dt):
    ph, sq0 = ops.dp(j, q, 0.5 * dt, p)
    q1, sph = ops.dq(j, ph, dt, q)
    p1, sq1 = ops.dp(j, q1, 0.5 * dt, ph)
    return (p1, q1), (q, sq0, ph, sph, q1, sq1)


def _fused_leapfrog_vjp(ops, j, tape, gp1, gq1, dt):
    q, sq0, ph, sph, q1, sq1 = tape
    gq1 = ops.dp_vjp(j, q1, sq1, gp1, 0.5 * dt, gq1)
    gph = ops.dq_vjp(j, ph, sph, gq1, dt, gp1)
    return gph, ops.dp_vjp(j, q, sq0, gph, 0.5 * dt, gq1)


def _leapfrog(f, t, p: Tensor, q: Tensor, dt: float) -> tuple[Tensor, Tensor]:
    p = p + (0.5 * dt) * f.dp(t, q)
    q = q + dt * f.dq(t + 0.5 * dt, p)
    return p + (0.5 * dt) * f.dp(t + dt, q), q


@register_integrator("leapfrog")
class Leapfrog(_Separable):
    """Störmer-Verlet, kick-drift-kick:

    ``p_{1/2} = p + dt/2 a(t, q)``, ``q_{k+1} = q + dt b(t + dt/2, p_{1/2})``,
    ``p_{k+1} = p_{1/2} + dt/2 a(t + dt, q_{k+1})``.

    Order 2, symplectic, symmetric, reversible (its inverse is the step with -dt)
    (Hairer, Lubich & Wanner 2003, "Geometric numerical integration illustrated by the
    Störmer-Verlet method").
    """

    order = 2
    evaluations = 1.5

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        return f.join(*_leapfrog(f, t, *f.split(y), dt))

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        return (1 + 0.5 * abs(dt) * bounds["dp"]) ** 2 * (1 + abs(dt) * bounds["dq"])

    def inverse_step(self, f, t, y_next: Tensor, dt: float) -> Tensor:
        return f.join(*_leapfrog(f, t + dt, *f.split(y_next), -dt))

    supports_fused = True

    def fused_step(self, ops, j, state, dt):
        return _fused_leapfrog(ops, j, *state, dt)

    def fused_vjp(self, ops, j, tape, g, dt):
        return _fused_leapfrog_vjp(ops, j, tape, *g, dt)

    def fused_inverse(self, ops, j, state, dt):
        return _fused_leapfrog(ops, j, *state, -dt)[0]


_CBRT2 = 2.0 ** (1.0 / 3.0)
_W1 = 1.0 / (2.0 - _CBRT2)
_W0 = -_CBRT2 / (2.0 - _CBRT2)


@register_integrator("yoshida4")
class Yoshida4(_Separable):
    """Yoshida's 4th-order triple jump: leapfrog steps of sizes ``w1 dt, w0 dt, w1 dt`` with

    ``w1 = 1 / (2 - 2^{1/3})``, ``w0 = -2^{1/3} / (2 - 2^{1/3})``.

    Order 4, symplectic, symmetric, reversible (Yoshida 1990, Phys. Lett. A 150).
    The middle stage steps backwards in time; all stages use the current layer's weights.
    """

    order = 4
    evaluations = 4.5
    weights = (_W1, _W0, _W1)

    def step(self, f, t, y: Tensor, dt: float) -> Tensor:
        p, q = f.split(y)
        for w in self.weights:
            p, q = _leapfrog(f, t, p, q, w * dt)
            t = t + w * dt
        return f.join(p, q)

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        out = 1.0
        for w in self.weights:
            out = out * Leapfrog.growth_bound(self, w * dt, bounds)
        return out

    def inverse_step(self, f, t, y_next: Tensor, dt: float) -> Tensor:
        p, q = f.split(y_next)
        t = t + dt
        for w in reversed(self.weights):
            p, q = _leapfrog(f, t, p, q, -w * dt)
            t = t - w * dt
        return f.join(p, q)

    supports_fused = True

    def fused_step(self, ops, j, state, dt):
        tape: tuple = ()
        for w in self.weights:
            state, t = _fused_leapfrog(ops, j, *state, w * dt)
            tape += t
        return state, tape

    def fused_vjp(self, ops, j, tape, g, dt):
        for k, w in reversed(list(enumerate(self.weights))):
            g = _fused_leapfrog_vjp(ops, j, tape[6 * k : 6 * k + 6], *g, w * dt)
        return g

    def fused_inverse(self, ops, j, state, dt):
        for w in reversed(self.weights):
            state = _fused_leapfrog(ops, j, *state, -w * dt)[0]
        return state
