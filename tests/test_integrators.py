"""Generic integrator tests: every registered step rule gets order, symplecticity, reversibility, energy."""

from __future__ import annotations

import pytest
import torch
from helpers import (
    F64,
    HarmonicOscillator,
    applicable,
    dense_architectures,
    field_for,
    log_slope,
    reversible_integrators,
    separable_architectures,
    symplectic_integrators,
)

import hamode
from hamode.diagnostics import backward_sensitivity, energy_drift, symplecticity_defect

SUBSTEPS = [2, 4, 8, 16]


@pytest.mark.parametrize("name", hamode.list_integrators())
def test_order_harmonic_oscillator(name):
    order = hamode.get_integrator(name).order
    y0 = torch.tensor([[0.3, -1.1], [1.0, 0.5]], dtype=F64)
    T = 2.0
    exact = HarmonicOscillator.exact(y0, T)
    errors = []
    for k in SUBSTEPS:
        net = hamode.HamiltonianNet(HarmonicOscillator(2, n_layers=1), t_end=T, integrator=name, substeps=k)
        errors.append((net(y0) - exact).abs().max().item())
    slope = log_slope([T / k for k in SUBSTEPS], errors)
    assert abs(slope - order) <= 0.3, (name, slope, errors)


@pytest.mark.parametrize("weights", ["piecewise", "linear"])
@pytest.mark.parametrize("name", hamode.list_integrators())
def test_order_multilayer_time_varying(name, weights):
    """On 4 layers with different weights, a stage that crossed a boundary would drop the order to ~1."""
    order = hamode.get_integrator(name).order
    field = field_for(name, n_layers=4, weights=weights)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(0.5)  # mild enough that 2 substeps are already asymptotic
            if weights == "linear":  # nodes still differ, but the path inside a layer is not an O(1) swing
                mean = p.mean(0, keepdim=True)
                p.copy_(mean + 0.4 * (p - mean))
    y0 = torch.randn(3, 4, dtype=F64)
    T = 1.6
    ref = hamode.HamiltonianNet(field, T, integrator="rk4", substeps=512)(y0)
    errors = []
    for k in SUBSTEPS:
        net = hamode.HamiltonianNet(field, T, integrator=name, substeps=k)
        errors.append((net(y0) - ref).norm().item())
    slope = log_slope([T / 4 / k for k in SUBSTEPS], errors)
    assert abs(slope - order) <= 0.3, (name, weights, slope, errors)


def _architecture_cases(rules, *, constant_structure: bool = False):
    for arch in dense_architectures():
        cls = hamode.architecture_info(arch).field_class
        if constant_structure and not cls.constant_structure:
            continue  # J changes from layer to layer (MS1, MS2): the layer maps keep their own (tested apart)
        for name in rules:
            if applicable(cls, name):
                yield arch, name


@pytest.mark.parametrize(
    "arch,name",
    [
        (a, n)
        for a in dense_architectures()
        for n in dict.fromkeys([hamode.architecture_info(a).default_integrator, "rk4"])
    ],
)
def test_order_every_architecture(arch, name):
    """Every registered architecture, under its default rule and RK4, converges with the rule's order."""
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=4, n_layers=4, dtype=F64)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(0.5)
    y0 = torch.randn(3, 4, dtype=F64)
    T = 1.6
    ref = hamode.HamiltonianNet(field, T, integrator="rk4", substeps=512)(y0)
    errors = [(hamode.HamiltonianNet(field, T, name, substeps=k)(y0) - ref).norm().item() for k in SUBSTEPS]
    slope = log_slope([T / 4 / k for k in SUBSTEPS], errors)
    assert abs(slope - hamode.get_integrator(name).order) <= 0.3, (arch, name, slope, errors)


@pytest.mark.parametrize("arch,name", list(_architecture_cases(symplectic_integrators(), constant_structure=True)))
def test_symplectic_64_layers(name, arch):
    """Φ = ∂y_N/∂y_0 of a 64-layer net with random weights keeps J (TAC's main result), for every registered
    architecture with a constant J under every symplectic rule that runs on it (implicit ones on H1)."""
    torch.manual_seed(3)
    field = hamode.make_field(arch, dim=4, n_layers=64, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=6.4, integrator=name)
    y0 = torch.randn(4, 4, dtype=F64)
    S = backward_sensitivity(net, y0, layers=[0])[0]
    assert S.abs().max() > 1.5  # a nontrivial map
    defect = symplecticity_defect(S, field.J)
    assert defect.max().item() <= 1e-10, defect


def test_forward_euler_is_not_symplectic():
    torch.manual_seed(3)
    field = hamode.make_field("H2", dim=4, n_layers=64, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=6.4, integrator="euler")
    S = backward_sensitivity(net, torch.randn(4, 4, dtype=F64), layers=[0])[0]
    assert symplecticity_defect(S, field.J).min().item() > 1e-3


def _forward_euler_field(kind: str):
    if kind == "H1_learnJ":
        return hamode.H1Field(4, 64, J="learnable", init="normal", dtype=F64)
    return hamode.make_field(kind, dim=4, n_layers=64, init="normal", dtype=F64)


@pytest.mark.parametrize("kind", ["H1_J1", "H1_J2", "H1_learnJ", "MS1", "MS2", "MS3", "H2"])
def test_forward_euler_never_contracts_the_volume(kind):
    """Each forward-Euler layer's Jacobian is I + h J M with M ⪰ 0 and J skew: eigenvalues 1 ± i h ω, so
    det(∂y_N/∂y_j) >= 1 and ‖∂y_N/∂y_j‖₂ >= 1 at any depth (docs/mathematics.md), symplectic or not."""
    torch.manual_seed(5)
    field = _forward_euler_field(kind)
    if kind == "H1_learnJ":
        with torch.no_grad():
            for p in field.parameters():
                if p.dim() == 2 and p.shape == (4, 4):
                    p.normal_()  # a non-trivial learnable skew J
    net = hamode.HamiltonianNet(field, t_end=6.4, integrator="euler")
    S = backward_sensitivity(net, torch.randn(6, 4, dtype=F64), layers=[0, 16, 48, 63])
    det = torch.linalg.det(S)
    norm = torch.linalg.matrix_norm(S, 2)
    assert det.min().item() >= 1 - 1e-10, det.min()
    assert norm.min().item() >= 1 - 1e-10, norm.min()
    if field.constant_structure:  # and yet not symplectic
        assert symplecticity_defect(S[0], field.J).max().item() > 1e-6


def test_rk4_gradients_vanish_on_a_constructed_net_where_euler_and_midpoint_do_not():
    """RK4 on eigenvalues ±i h: |R(2.5 i)| ≈ 0.51 per layer; orthogonal K, b = 0, inputs near 0, 64 layers."""
    n, depth, h = 4, 64, 2.5
    field = hamode.make_field("H1_J1", dim=n, n_layers=depth, dtype=F64)
    with torch.no_grad():
        q, _ = torch.linalg.qr(torch.randn(depth, n, n, dtype=F64, generator=torch.Generator().manual_seed(0)))
        field.K.copy_(q)
        field.b.zero_()
    y0 = 1e-3 * torch.randn(3, n, dtype=F64, generator=torch.Generator().manual_seed(1))
    norms = {}
    for rule in ("rk4", "euler", "implicit_midpoint"):
        net = hamode.HamiltonianNet(field, t_end=h * depth, integrator=rule)
        S = backward_sensitivity(net, y0, layers=[0])[0]
        norms[rule] = torch.linalg.matrix_norm(S, 2).min().item()
    assert norms["rk4"] < 1e-6, norms
    assert norms["euler"] >= 1 - 1e-10 and norms["implicit_midpoint"] >= 1 - 1e-10, norms


@pytest.mark.parametrize("name", symplectic_integrators())
def test_ms1_layer_map_preserves_its_layer_structure(name):
    """MS1's J = [[0, K0⁻ᵀ], [-K0⁻¹, 0]] changes per layer; each layer's map preserves its own J."""
    torch.manual_seed(0)
    field = hamode.make_field("MS1", dim=4, n_layers=1, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=0.4, integrator=name, substeps=3)
    S = backward_sensitivity(net, torch.randn(3, 4, dtype=F64), layers=[0])[0]
    J = field.layer(0).J
    assert symplecticity_defect(S, J).max() <= 1e-12
    # ...but not the canonical J1: MS1's kicks are not gradients in (y, z)
    assert symplecticity_defect(S, hamode.fields.j1(4, dtype=F64)).max() > 1e-3


def _reversible_cases():
    """Every reversible rule on every dense architecture it runs on (separable ones only for splitting rules)."""
    dense = [a for a in hamode.list_architectures() if hamode.architecture_info(a).field_class.state_rank == 1]
    for name in reversible_integrators():
        rule = hamode.get_integrator(name)
        for arch in separable_architectures() if rule.needs_separable else dense:
            yield name, arch


@pytest.mark.parametrize("weights", ["piecewise", "linear", "constant"])
@pytest.mark.parametrize("name,arch", list(_reversible_cases()))
def test_inverse_step_recovers_input(name, arch, weights):
    torch.manual_seed(1)
    field = hamode.make_field(arch, dim=6, n_layers=3, init="normal", weights=weights, dtype=F64)
    grid = hamode.HamiltonianNet(field, t_end=1.5).grid
    step = hamode.get_integrator(name)
    state = step.lift(torch.randn(5, 6, dtype=F64))  # the rule's state (the pair (y, z) for two-state rules)
    state = step.step(field.layer(0, grid=grid), 0.0, state, 0.2)  # after a step: z != y for two-state rules
    for j in range(3):
        f = field.layer(j, grid=grid)
        t = grid.start(j) + 0.1
        back = step.inverse_step(f, t, step.step(f, t, state, 0.37), 0.37)
        assert (back - state).abs().max().item() <= 1e-12


def test_non_reversible_integrators_say_so():
    for name in hamode.list_integrators():
        step = hamode.get_integrator(name)
        if not step.reversible:
            with pytest.raises(NotImplementedError, match="not reversible"):
                step.inverse_step(None, 0.0, torch.zeros(1), 0.1)


def test_energy_leapfrog_bounded_euler_drifts():
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=2, n_layers=1, weights="constant", dtype=F64)
    y0 = torch.tensor([[1.0, 0.5], [-0.3, 0.8]], dtype=F64)
    steps, T = 10_000, 200.0
    Hlf, lf = energy_drift(hamode.HamiltonianNet(field, T, "leapfrog", substeps=steps), y0)
    H, eu = energy_drift(hamode.HamiltonianNet(field, T, "euler", substeps=steps), y0)
    first = (Hlf[: steps // 2] - Hlf[0]).abs().amax(0)
    second = (Hlf[steps // 2 :] - Hlf[0]).abs().amax(0)
    assert (lf < 1e-3).all(), lf
    assert (second <= 1.5 * first).all()  # bounded oscillation, no secular growth
    assert (eu > 100 * lf).all(), (eu, lf)
    assert ((H[-1] - H[0]).abs() > 0.5 * eu).all()  # euler's error is a drift, still there at the end


def test_registry_lookup_by_name_or_instance():
    step = hamode.get_integrator("leapfrog")
    assert hamode.get_integrator(step) is step
    assert hamode.get_integrator(type(step)).name == "leapfrog"
    with pytest.raises(ValueError, match=r"unknown integrator 'verlet'.*euler.*leapfrog"):
        hamode.get_integrator("verlet")
    with pytest.raises(TypeError, match="integrator must be"):
        hamode.get_integrator(3)
    for name in hamode.list_integrators():
        s = hamode.get_integrator(name)
        assert isinstance(s.order, int) and s.order >= 1
        assert isinstance(s.symplectic, bool) and isinstance(s.reversible, bool)
        assert isinstance(s.needs_separable, bool)
        assert s.__doc__ and "rder" in s.__doc__


def test_register_new_integrator_is_picked_up():
    @hamode.register_integrator("_test_heun")
    class Heun(hamode.Integrator):
        """Heun. Order 2."""

        order = 2

        def step(self, f, t, y, dt):
            k1 = f(t, y)
            return y + 0.5 * dt * (k1 + f(t + dt, y + dt * k1))

    try:
        assert "_test_heun" in hamode.list_integrators()
        net = hamode.HamiltonianNet(field_for("euler"), 1.0, integrator="_test_heun")
        assert net(torch.randn(2, 4, dtype=F64)).shape == (2, 4)
        with pytest.raises(ValueError, match=r"already registered.*replace=True.*unregister_integrator"):
            hamode.register_integrator("_test_heun")(type("Other", (hamode.Integrator,), {"order": 1}))
        again = type("Again", (Heun,), {"__doc__": "Heun re-declared (a re-run notebook cell). Order 2."})
        assert hamode.register_integrator("_test_heun", replace=True)(again) is type(
            hamode.get_integrator("_test_heun")
        )
        with pytest.raises(ValueError, match=r"built-in integrators.*another name"):
            hamode.register_integrator("rk4", replace=True)(type("MyRK4", (Heun,), {}))
        assert type(hamode.get_integrator("rk4")).__name__ == "RK4"
        with pytest.raises(TypeError, match="replace must be True or False"):
            hamode.register_integrator("_test_heun", replace="yes")
        with pytest.raises(TypeError, match="check must be True or False"):
            hamode.register_integrator("_test_heun", check=1)
    finally:
        from hamode.integrators import base

        base._REGISTRY.pop("_test_heun")
