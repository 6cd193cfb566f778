"""Explicit symplectic rules for separable fields (``dp/dt = a(t, q)``, ``dq/dt = b(t, p)``), each a
coefficient sequence (see [`SplittingMethod`][hamode.integrators.SplittingMethod])."""

from __future__ import annotations

from .base import register_integrator
from .splitting import SplittingMethod, compose

__all__ = ["BlanesMoan4", "Leapfrog", "Suzuki4", "SymplecticEuler", "SymplecticEulerQP", "Yoshida4", "Yoshida6"]

LEAPFROG = ((0.5, 1.0), (0.5, 0.0))


@register_integrator("symplectic_euler")
class SymplecticEuler(SplittingMethod):
    """Semi-implicit (symplectic) Euler, p first:

    ``p_{k+1} = p_k + dt a(t, q_k)``, then ``q_{k+1} = q_k + dt b(t, p_{k+1})``.

    Order 1, symplectic, reversible (each half is a shear). This is the H2-DNN layer
    of TAC (Galimberti et al. 2023, eq. 14) whose backward sensitivities cannot vanish.
    Both halves read the weights at the step's start, as in TAC's layer equation.
    """

    order = 1
    coefficients = ((1.0, 1.0),)
    stage_times = (0.0, 0.0)


@register_integrator("symplectic_euler_qp")
class SymplecticEulerQP(SplittingMethod):
    """Semi-implicit (symplectic) Euler, q first:

    ``q_{k+1} = q_k + dt b(t, p_k)``, then ``p_{k+1} = p_k + dt a(t, q_{k+1})``.

    Order 1, symplectic, reversible; the adjoint of ``symplectic_euler`` (Hairer,
    Lubich & Wanner, Geometric Numerical Integration, VI.3).
    """

    order = 1
    coefficients = ((0.0, 1.0), (1.0, 0.0))
    stage_times = (0.0, 0.0)


@register_integrator("leapfrog")
class Leapfrog(SplittingMethod):
    """Störmer-Verlet, kick-drift-kick:

    ``p_{1/2} = p + dt/2 a(t, q)``, ``q_{k+1} = q + dt b(t + dt/2, p_{1/2})``,
    ``p_{k+1} = p_{1/2} + dt/2 a(t + dt, q_{k+1})``.

    Order 2, symplectic, symmetric, reversible (its inverse is the step with -dt)
    (Hairer, Lubich & Wanner 2003, "Geometric numerical integration illustrated by the
    Störmer-Verlet method").
    """

    order = 2
    coefficients = LEAPFROG


_CBRT2 = 2.0 ** (1.0 / 3.0)
_Y4 = (1.0 / (2.0 - _CBRT2), -_CBRT2 / (2.0 - _CBRT2), 1.0 / (2.0 - _CBRT2))


@register_integrator("yoshida4")
class Yoshida4(SplittingMethod):
    """Yoshida's 4th-order triple jump: leapfrog steps of sizes ``w1 dt, w0 dt, w1 dt`` with

    ``w1 = 1 / (2 - 2^{1/3})``, ``w0 = -2^{1/3} / (2 - 2^{1/3})`` (adjacent half-kicks merged: 4 kicks, 3 drifts).

    Order 4, symplectic, symmetric, reversible (Yoshida 1990, Phys. Lett. A 150, 262).
    The middle stage steps backwards in time; all stages use the current layer's weights.
    """

    order = 4
    coefficients = compose(LEAPFROG, _Y4)


_P = 1.0 / (4.0 - 4.0 ** (1.0 / 3.0))


@register_integrator("suzuki4")
class Suzuki4(SplittingMethod):
    """Suzuki's 5-stage fractal: leapfrog steps of sizes ``p, p, 1 - 4p, p, p`` (times dt) with
    ``p = 1 / (4 - 4^{1/3})``.

    Order 4, symplectic, symmetric, reversible (Suzuki 1990, Phys. Lett. A 146, 319). Smaller error
    constant than Yoshida's triple jump for one more leapfrog step (6 kicks, 5 drifts).
    """

    order = 4
    coefficients = compose(LEAPFROG, (_P, _P, 1.0 - 4.0 * _P, _P, _P))


_BM_A = (0.0792036964311957, 0.353172906049774, -0.0420650803577195)
_BM_B = (0.209515106613362, -0.143851773179818)


@register_integrator("blanes_moan4")
class BlanesMoan4(SplittingMethod):
    """Blanes & Moan's optimised 6-stage symmetric partitioned method (S6, order 4):

    ``e^{a_1 dt B} e^{b_1 dt A} e^{a_2 dt B} ... e^{b_6 dt A} e^{a_7 dt B}`` with B the kick, A the drift,
    ``a = (a_1, a_2, a_3, a_4, a_3, a_2, a_1)``, ``a_1 = 0.0792036964311957``, ``a_2 = 0.353172906049774``,
    ``a_3 = -0.0420650803577195``, ``a_4 = 1 - 2(a_1 + a_2 + a_3)``;
    ``b = (b_1, b_2, b_3, b_3, b_2, b_1)``, ``b_1 = 0.209515106613362``, ``b_2 = -0.143851773179818``,
    ``b_3 = 1/2 - (b_1 + b_2)``.

    Order 4, symplectic, symmetric, reversible (Blanes & Moan 2002, "Practical symplectic partitioned
    Runge-Kutta and Runge-Kutta-Nyström methods", J. Comput. Appl. Math. 142, 313, Table 2).
    7 kicks and 6 drifts; its error constant is about 1/20 of Yoshida's triple jump.
    """

    order = 4
    coefficients = (
        (_BM_A[0], _BM_B[0]),
        (_BM_A[1], _BM_B[1]),
        (_BM_A[2], 0.5 - _BM_B[0] - _BM_B[1]),
        (1.0 - 2.0 * sum(_BM_A), 0.5 - _BM_B[0] - _BM_B[1]),
        (_BM_A[2], _BM_B[1]),
        (_BM_A[1], _BM_B[0]),
        (_BM_A[0], 0.0),
    )


_Y6 = (-1.17767998417887100695, 0.235573213359358133684, 0.784513610477557263820)
_Y6_0 = 1.0 - 2.0 * sum(_Y6)


@register_integrator("yoshida6")
class Yoshida6(SplittingMethod):
    """Yoshida's 6th-order composition (solution A): leapfrog steps of sizes
    ``w3, w2, w1, w0, w1, w2, w3`` (times dt) with ``w1 = -1.17767998417887``, ``w2 = 0.235573213359357``,
    ``w3 = 0.784513610477560``, ``w0 = 1 - 2(w1 + w2 + w3)``.

    Order 6, symplectic, symmetric, reversible (Yoshida 1990, Phys. Lett. A 150, 262, Table 1).
    8 kicks and 7 drifts.
    """

    order = 6
    coefficients = compose(LEAPFROG, (_Y6[2], _Y6[1], _Y6[0], _Y6_0, _Y6[0], _Y6[1], _Y6[2]))
