"""User separable Hamiltonians H = T(t, p) + V(t, q): every splitting method, exact structure, module parameters."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F64, log_slope, symplectic_integrators

import hamode
from hamode.diagnostics import backward_sensitivity, energy_drift, symplecticity_defect
from hamode.engines import fused_applies


def pendulum() -> hamode.AutogradSeparableField:
    return hamode.AutogradSeparableField(
        kinetic=lambda t, p: 0.5 * (p**2).sum(-1), potential=lambda t, q: (1 - torch.cos(q)).sum(-1), dim=2
    )


def henon_heiles(n_layers: int = 1) -> hamode.AutogradSeparableField:
    return hamode.AutogradSeparableField(
        kinetic=lambda t, p: 0.5 * (p**2).sum(-1),
        potential=lambda t, q: 0.5 * (q**2).sum(-1) + q[..., 0] ** 2 * q[..., 1] - q[..., 1] ** 3 / 3,
        dim=4,
        n_layers=n_layers,
    )


def _pendulum_reference(y0: torch.Tensor, T: float, steps: int = 20_000) -> torch.Tensor:
    """An independent solution: classic RK4 written out on dp/dt = -sin q, dq/dt = p (no hamode code)."""
    p, q = y0[..., 0].clone(), y0[..., 1].clone()
    h = T / steps

    def f(p, q):
        return -torch.sin(q), p

    for _ in range(steps):
        k1 = f(p, q)
        k2 = f(p + h / 2 * k1[0], q + h / 2 * k1[1])
        k3 = f(p + h / 2 * k2[0], q + h / 2 * k2[1])
        k4 = f(p + h * k3[0], q + h * k3[1])
        p = p + h / 6 * (k1[0] + 2 * k2[0] + 2 * k3[0] + k4[0])
        q = q + h / 6 * (k1[1] + 2 * k2[1] + 2 * k3[1] + k4[1])
    return torch.stack([p, q], -1)


def test_pendulum_leapfrog_converges_at_order_2():
    y0 = torch.tensor([[0.3, 1.2], [-0.5, 2.5]], dtype=F64)
    T = 3.0
    ref = _pendulum_reference(y0, T)
    ks = [8, 16, 32, 64]
    errors = [(hamode.HamiltonianNet(pendulum(), T, "leapfrog", substeps=k)(y0) - ref).abs().max().item() for k in ks]
    assert abs(log_slope([T / k for k in ks], errors) - 2) <= 0.2, errors


def test_rhs_is_the_canonical_hamiltonian_vector_field():
    field = henon_heiles()
    net = hamode.HamiltonianNet(field, 1.0)
    assert field.separable and net.integrator_name == "leapfrog" and not fused_applies(net.field, net.integrator)
    y = torch.randn(5, 4, dtype=F64, requires_grad=True)
    (grad_H,) = torch.autograd.grad(net.hamiltonian(0.0, y).sum(), y)
    assert torch.allclose(net.rhs(0.0, y), grad_H @ field.J.to(y).mT, atol=1e-14)
    px, py, x, yy = y.detach().unbind(-1)
    expected = torch.stack([-(x + 2 * x * yy), -(yy + x**2 - yy**2), px, py], -1)
    assert torch.allclose(net.rhs(0.0, y.detach()), expected, atol=1e-14)


@pytest.mark.parametrize("name", symplectic_integrators())
def test_every_splitting_method_is_symplectic_on_henon_heiles(name):
    field = henon_heiles(n_layers=8)
    net = hamode.HamiltonianNet(field, 4.0, name, substeps=2)
    y0 = 0.3 * torch.randn(4, 4, dtype=F64)
    S = backward_sensitivity(net, y0, layers=[0])[0]
    assert (S - torch.eye(4, dtype=F64)).abs().max() > 0.1  # a nontrivial map
    assert symplecticity_defect(S, field.J).max().item() <= 1e-10


def test_henon_heiles_energy_is_bounded_over_ten_thousand_steps():
    field = henon_heiles()
    y0 = torch.tensor([[0.1, 0.2, 0.1, -0.2], [0.3, 0.0, 0.0, 0.2]], dtype=F64)  # bounded orbits (E < 1/6)
    steps = 10_000
    H, drift = energy_drift(hamode.HamiltonianNet(field, 500.0, "leapfrog", substeps=steps), y0)
    first = (H[: steps // 2] - H[0]).abs().amax(0)
    second = (H[steps // 2 :] - H[0]).abs().amax(0)
    assert (drift < 1e-3).all(), drift
    assert (second <= 1.5 * first).all()  # no secular growth
    _, euler = energy_drift(hamode.HamiltonianNet(field, 500.0, "euler", substeps=steps), y0)
    assert (euler.nan_to_num(nan=math.inf) > 10 * drift).all()  # forward Euler drifts off (here: escapes to NaN)


class _MLPPotential(torch.nn.Module):
    def __init__(self, n: int) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(n, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))

    def forward(self, t, q):
        return self.net(q).squeeze(-1) + 0.5 * (q**2).sum(-1)


@pytest.mark.parametrize("name", ["leapfrog", "yoshida4", "symplectic_euler"])
def test_module_parameters_reversible_equals_backprop(name):
    torch.manual_seed(0)
    field = hamode.AutogradSeparableField(lambda t, p: 0.5 * (p**2).sum(-1), _MLPPotential(2), dim=4, n_layers=6)
    field = field.double()
    y0 = torch.randn(3, 4, dtype=F64)
    grads = {}
    for gradient in ("backprop", "reversible"):
        net = hamode.HamiltonianNet(field, 1.5, name, substeps=2, gradient=gradient)
        y = y0.clone().requires_grad_(True)
        field.zero_grad()
        net(y).sin().sum().backward()
        # the MLP's last bias does not enter dV/dq: no gradient there, in both modes
        grads[gradient] = [
            y.grad,
            *(torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in field.parameters()),
        ]
    assert sum(g.abs().max() > 0 for g in grads["reversible"]) == len(grads["reversible"]) - 1
    for a, b in zip(grads["reversible"], grads["backprop"]):
        if b.abs().max() == 0:  # the last bias: zero in both
            assert torch.equal(a, b)
            continue
        assert ((a - b).abs().max() / b.abs().max()).item() <= 1e-8


def test_bad_user_hamiltonians_are_refused():
    T = lambda t, p: 0.5 * (p**2).sum(-1)
    with pytest.raises(TypeError, match="kinetic must be callable"):
        hamode.AutogradSeparableField(3.0, T, dim=2)
    with pytest.raises(TypeError, match="potential must be callable"):
        hamode.AutogradSeparableField(T, None, dim=2)
    with pytest.raises(ValueError, match="needs an even dim, got 3"):
        hamode.AutogradSeparableField(T, T, dim=3)
    field = hamode.AutogradSeparableField(T, lambda t, q: q, dim=2)  # V returns a vector, not an energy
    with pytest.raises(ValueError, match=r"potential\(t, x\) must return one energy per sample, shape \(5,\)"):
        hamode.HamiltonianNet(field, 1.0)(torch.randn(5, 2))
    with pytest.raises(NotImplementedError, match="states no Lipschitz bound"):
        hamode.diagnostics.sensitivity_upper_bound(hamode.HamiltonianNet(pendulum(), 1.0))


def test_pendulum_small_angle_period():
    """A physical check: small oscillations of the pendulum have period 2π."""
    y0 = torch.tensor([[0.0, 1e-3]], dtype=F64)
    out = hamode.HamiltonianNet(pendulum(), 2 * math.pi, "yoshida4", substeps=200)(y0)
    assert torch.allclose(out, y0, atol=1e-9)
