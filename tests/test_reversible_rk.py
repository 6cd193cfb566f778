"""Reversible Runge-Kutta (McCallum & Foster 2024): what the generic tests do not cover.

The generic tests run the registered ``reversible_*`` rules with every other rule: observed order against a fine
reference (test_integrators), inverse step exact to 1e-12 on every dense architecture, reversible == backprop and
fused == reference to 1e-10 in float64 (test_net, test_fused), every image field (test_conv). Here: the coupling
parameter, the pair's semantics, the stability condition, the growth bound, memory flat in depth, a user's own
tableau made reversible by one declaration.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F64

import hamode
from hamode.diagnostics import SavedBytes, backward_sensitivity, sensitivity_norms, sensitivity_upper_bound
from hamode.integrators import RK4, ReversibleRK4, ReversibleRungeKutta, RungeKutta

REVERSIBLE_RK = [n for n in hamode.list_integrators() if isinstance(hamode.get_integrator(n), ReversibleRungeKutta)]


def test_the_three_rules_are_registered_with_their_base_order():
    assert REVERSIBLE_RK == ["reversible_euler", "reversible_heun", "reversible_rk4"]
    for name, order in zip(REVERSIBLE_RK, (1, 2, 4)):
        rule = hamode.get_integrator(name)
        assert rule.order == order and rule.reversible and not rule.symplectic and not rule.needs_separable
        assert rule.copies == 2 and rule.coupling == 0.999 and rule.evaluations == 2 * rule.base.evaluations
        assert rule.supports_fused


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, math.nan, math.inf, True, "0.9"])
def test_a_bad_coupling_is_refused_naming_it(bad):
    with pytest.raises(ValueError, match=r"coupling \(λ\) must be a number in \(0, 1\)"):
        ReversibleRK4(coupling=bad)
    with pytest.raises(ValueError, match=r"coupling \(λ\)"):

        class Bad(ReversibleRungeKutta):
            """Order 4."""

            base = RK4
            coupling = bad


def test_the_net_runs_the_pair_from_z0_equal_y0_and_outputs_y():
    torch.manual_seed(0)
    field = hamode.make_field("H1_J1", dim=4, n_layers=2, dtype=F64)
    y0 = torch.randn(3, 4, dtype=F64)
    rule = ReversibleRK4(coupling=0.9)
    net = hamode.HamiltonianNet(field, 1.0, rule)
    f0, f1 = field.layer(0, grid=net.grid), field.layer(1, grid=net.grid)
    state = rule.step(f1, 0.5, rule.step(f0, 0.0, torch.stack((y0, y0)), 0.5), 0.5)
    assert torch.allclose(net(y0), state[0], rtol=0, atol=1e-14)  # fused (rows) and reference (stack) alike
    # by hand, one step: y1 = λ (y0 − z0) + Φ_h(z0) = Φ_h(y0) since z0 = y0
    base = RK4()
    assert torch.allclose(rule.step(f0, 0.0, torch.stack((y0, y0)), 0.5)[0], base.step(f0, 0.0, y0, 0.5), atol=1e-15)
    assert net.trajectory(y0).shape == (3, 3, 4)  # the net's y at every step, not the pair


def test_a_users_own_tableau_is_made_reversible_by_one_declaration():
    class Ralston(RungeKutta):
        """Ralston's method. Order 2."""

        order = 2
        a = ((), (2 / 3,))
        b = (0.25, 0.75)

    @hamode.register_integrator("_test_reversible_ralston")
    class ReversibleRalston(ReversibleRungeKutta):
        """Ralston's method made reversible. Order 2."""

        base = Ralston

    try:
        torch.manual_seed(1)
        field = hamode.make_field("H1_J2", dim=4, n_layers=3, dtype=F64)
        y0 = torch.randn(5, 4, dtype=F64, requires_grad=True)
        grads = []
        for gradient, fast in (("backprop", False), ("reversible", True)):
            net = hamode.HamiltonianNet(field, 1.2, "_test_reversible_ralston", gradient=gradient, fast=fast)
            grads.append(torch.autograd.grad(net(y0).square().sum(), [y0, *field.parameters()]))
        for a, b in zip(*grads):
            assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    finally:
        hamode.integrators.unregister_integrator("_test_reversible_ralston")
    with pytest.raises(TypeError, match="must be a RungeKutta subclass"):

        class NotATableau(ReversibleRungeKutta):
            """Order 2."""

            base = hamode.integrators.Leapfrog


def test_the_stability_condition_on_lambda_and_h():
    rule = ReversibleRK4()
    assert abs(rule.stability_function(1.0) - sum(1 / math.factorial(k) for k in range(5))) < 1e-15
    for ha in (0.1, 1.0, 2.0):
        mu = rule.amplification(complex(0.3 * ha, 0.0))
        assert abs(mu[0] * mu[1] - rule.coupling) < 1e-12  # det M = λ
    # Hamiltonian fields: the Jacobian's eigenvalues are imaginary; stable up to RK4's own limit (2√2)
    assert all(rule.is_stable(1j * w) for w in (0.01, 0.5, 1.0, 2.0, 2.8))
    assert not rule.is_stable(3.0j)
    # a damped mode: the second state follows Φ_{−h}, so λ must not exceed R(ha) for a stable pair
    assert not rule.is_stable(-0.1)
    assert ReversibleRK4(coupling=0.9).is_stable(-0.1) and not ReversibleRK4(coupling=0.91).is_stable(-0.1)
    # forward Euler is unstable on the imaginary axis, so is its reversible version
    assert not hamode.get_integrator("reversible_euler").is_stable(0.1j)


@pytest.mark.parametrize("name", REVERSIBLE_RK)
def test_the_growth_bound_bounds_the_sensitivities(name):
    torch.manual_seed(2)
    field = hamode.make_field("H1_J1", dim=4, n_layers=6, dtype=F64)
    net = hamode.HamiltonianNet(field, 1.2, name)
    S = backward_sensitivity(net, torch.randn(8, 4, dtype=F64))
    exact = sensitivity_norms(S)["norm"].amax(-1)  # per layer j, max over samples
    bound = sensitivity_upper_bound(net)
    assert (exact <= bound * (1 + 1e-12)).all()
    # j = 0: the input-to-output Jacobian of the net (the lifting puts the same y0 in both copies)
    y0 = torch.randn(4, dtype=F64)
    J = torch.autograd.functional.jacobian(net, y0)
    assert torch.allclose(backward_sensitivity(net, y0[None])[0, 0], J, atol=1e-12)


@pytest.mark.parametrize("name", REVERSIBLE_RK)
def test_saved_memory_is_flat_in_depth(name):
    saved = {}
    for n_layers in (8, 64):
        torch.manual_seed(0)
        field = hamode.make_field("H1_J1", dim=8, n_layers=n_layers)
        for gradient in ("backprop", "reversible"):
            net = hamode.HamiltonianNet(field, 0.1 * n_layers, name, gradient=gradient)
            y0 = torch.randn(32, 8, requires_grad=True)
            with SavedBytes(exclude=field.parameters()) as counter:
                out = net(y0)
            out.sum().backward()
            saved[(gradient, n_layers)] = counter.bytes
    assert saved[("reversible", 64)] == saved[("reversible", 8)]
    assert saved[("backprop", 64)] > 6 * saved[("backprop", 8)]
