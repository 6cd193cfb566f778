"""Implicit Gauss-Legendre rules: order, symplecticity on non-separable fields, bounded energy, exact (IFT)
gradients of the discrete map, reversibility, TAC's lower bound for H1, and the refusals."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, log_slope

import hamode
from hamode.diagnostics import backward_sensitivity, energy_drift, sensitivity_norms, symplecticity_defect
from hamode.engines import fused_applies

IMPLICIT = [n for n in hamode.list_integrators() if hamode.get_integrator(n).implicit]


def test_the_gauss_legendre_rules_are_registered_with_their_properties():
    assert IMPLICIT == ["gauss_legendre4", "implicit_midpoint"]
    for name, order in (("implicit_midpoint", 2), ("gauss_legendre4", 4)):
        rule = hamode.get_integrator(name)
        assert rule.order == order and rule.symplectic and rule.reversible and not rule.needs_separable


def nonseparable_user_field(n_layers: int = 1) -> hamode.AutogradHamiltonianField:
    """H = |y|²/2 + (p·q)²/4 + cos(q_0): nonlinear and not separable."""

    def H(t, y):
        p, q = y[..., :2], y[..., 2:]
        return 0.5 * (y**2).sum(-1) + 0.25 * (p * q).sum(-1) ** 2 + torch.cos(q[..., 0])

    return hamode.AutogradHamiltonianField(H, "J1", dim=4, n_layers=n_layers)


def field(arch: str, n_layers: int, seed: int = 0, **kw):
    torch.manual_seed(seed)
    if arch == "user":
        return nonseparable_user_field(n_layers)
    return hamode.make_field(arch, dim=4, n_layers=n_layers, dtype=F64, **kw)


@pytest.mark.parametrize("name", IMPLICIT)
def test_order_on_a_nonseparable_nonlinear_field(name):
    f = field("H1_J1", 4, init="normal")
    y0 = torch.randn(8, 4, dtype=F64)
    with torch.no_grad():
        ref = hamode.HamiltonianNet(f, 1.6, "rk4", substeps=400)(y0)
        hs, errs = [], []
        for k in (4, 8, 16):
            net = hamode.HamiltonianNet(f, 1.6, name, substeps=k)
            errs.append(float((net(y0) - ref).abs().max()))
            hs.append(0.4 / k)
    assert log_slope(hs, errs) == pytest.approx(hamode.get_integrator(name).order, abs=0.15), errs


@pytest.mark.parametrize("arch", ["H1_J1", "H1_J2", "user"])
@pytest.mark.parametrize("name", IMPLICIT)
def test_symplectic_on_nonseparable_fields_one_step_and_whole_flow(name, arch):
    y0 = torch.randn(6, 4, dtype=F64)
    for n_layers, substeps in ((1, 1), (8, 2)):
        f = field(arch, n_layers)
        net = hamode.HamiltonianNet(f, 0.3 * n_layers, name, substeps=substeps)
        M = backward_sensitivity(net, y0, layers=[0])[0]
        J = f.J if arch != "user" else f.J_matrix
        assert symplecticity_defect(M, J).max() < 1e-10, (n_layers, substeps)


def test_energy_is_bounded_over_ten_thousand_steps_of_a_nonseparable_hamiltonian():
    """H1_J1 with one constant weight set: a time-invariant, non-separable H = Σ log cosh(K y + b), conserved by the
    exact flow. 10⁴ implicit-midpoint steps of h = 0.1 (fixed-point solve: the fastest here)."""
    torch.manual_seed(0)
    f = hamode.make_field("H1_J1", dim=2, n_layers=1, weights="constant", dtype=F64)
    y0 = torch.tensor([[0.4, -0.3]], dtype=F64)
    rule = hamode.ImplicitMidpoint(solver="fixed_point")
    H, drift = energy_drift(hamode.HamiltonianNet(f, 1000.0, rule, substeps=10_000), y0)
    err = (H - H[0]).abs()[:, 0]
    assert float(drift) < 1e-5  # O(h²), oscillating
    assert err[-2000:].max() <= 2 * err[:2000].max() + 1e-12  # no drift: the last steps as the first ones
    euler = hamode.HamiltonianNet(f, 1000.0, "euler", substeps=10_000)
    assert float(energy_drift(euler, y0)[1]) > 1000 * float(drift)  # forward Euler on the same problem


def _loss(net, y0):
    return net(y0).sin().sum()


@pytest.mark.parametrize("name", IMPLICIT)
def test_gradients_match_central_finite_differences(name):
    f = field("H1_J1", 2, init="normal")
    net = hamode.HamiltonianNet(f, 0.8, name, substeps=2)
    y0 = torch.randn(3, 4, dtype=F64, requires_grad=True)
    _loss(net, y0).backward()
    eps = 1e-6
    with torch.no_grad():
        checks = [(y0, (1, 2)), (f.K, (1, 0, 2)), (f.b, (0, 3))]
        for tensor, index in checks:
            grad = (y0.grad if tensor is y0 else tensor.grad)[index]
            old = tensor[index].item()
            tensor[index] = old + eps
            up = _loss(net, y0)
            tensor[index] = old - eps
            down = _loss(net, y0)
            tensor[index] = old
            fd = (up - down) / (2 * eps)
            assert abs(float(grad) - float(fd)) <= 1e-6 * max(abs(float(fd)), 1e-3), (index, float(grad), float(fd))


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "reference"])
@pytest.mark.parametrize("solver", ["newton", "fixed_point"])
@pytest.mark.parametrize("name", IMPLICIT)
def test_gradients_equal_autograd_through_a_fully_converged_iteration(name, solver, fast):
    """One step: IFT gradients (fused engine and autograd reference) against backpropagation through 200 plain
    fixed-point iterations."""
    rule = type(hamode.get_integrator(name))(solver=solver)
    f = field("H1_J2", 1)
    net = hamode.HamiltonianNet(f, 0.2, rule, fast=fast)
    y0 = torch.randn(5, 4, dtype=F64, requires_grad=True)
    gy, *gp = torch.autograd.grad(_loss(net, y0), [y0, *f.parameters()])

    layer = f.layer(0, f.weight_table(), net.grid)
    dt, A, b, c = 0.2, rule.a, rule.b, rule.c
    K = [layer(0.0, y0)] * len(b)
    for _ in range(200):  # contracts: dt * Lip * |A| << 1
        K = [layer(ci * dt, y0 + dt * sum(aij * kj for aij, kj in zip(row, K))) for row, ci in zip(A, c)]
    out = y0 + dt * sum(bi * ki for bi, ki in zip(b, K))
    ry, *rp = torch.autograd.grad(out.sin().sum(), [y0, *f.parameters()])
    for got, want in zip([gy, *gp], [ry, *rp]):
        assert torch.allclose(got, want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("arch", ["H1_J1", "H2", "user"])
@pytest.mark.parametrize("name", IMPLICIT)
def test_reversible_equals_backprop(name, arch):
    f = field(arch, 16)
    y0 = torch.randn(4, 4, dtype=F64)
    grads = {}
    for mode in ("backprop", "reversible"):
        net = hamode.HamiltonianNet(f, 3.2, name, gradient=mode)
        y = y0.clone().requires_grad_(True)
        f.zero_grad()
        net(y).pow(2).sum().backward()
        grads[mode] = [y.grad.clone()] + [p.grad.clone() for p in f.parameters()]
    for a, b in zip(grads["backprop"], grads["reversible"]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)


@pytest.mark.parametrize("name", IMPLICIT)
def test_h1_gradients_cannot_vanish_at_depth_64(name):
    """TAC's lower bound ‖∂y_N/∂y_j‖ >= 1 now holds for H1_J1, which forward Euler does not guarantee."""
    f = field("H1_J1", 64, init="normal")
    net = hamode.HamiltonianNet(f, 6.4, name)
    norms = sensitivity_norms(backward_sensitivity(net, torch.randn(16, 4, dtype=F64)))
    assert float(norms["norm_min"].min()) >= 1 - 1e-9


def test_iterations_are_in_the_statistics():
    f = field("H1_J1", 3)
    net = hamode.HamiltonianNet(f, 1.2, "gauss_legendre4", substeps=2)
    net(torch.randn(4, 4, dtype=F64))
    stats = net.stats
    assert stats["steps"] == 6 and stats["iterations"] >= 6 and 1 <= stats["max_iterations"] <= 20
    assert net.function_evaluations() == stats["nfe"] > 2 * stats["iterations"]


def test_fused_and_reference_solves_count_the_same_iterations():
    f = field("H1_J2", 4)
    y0 = torch.randn(6, 4, dtype=F64)
    stats = {}
    for path in (True, False):
        net = hamode.HamiltonianNet(f, 1.6, "gauss_legendre4", fast=path)
        net(y0.clone().requires_grad_(True)).sum().backward()
        stats[path] = dict(net.stats)
    assert stats[True] == stats[False] and stats[True]["iterations"] >= 4
    assert fused_applies(f, hamode.get_integrator("gauss_legendre4"), reversible=True)


@pytest.mark.parametrize("fast", [True, False], ids=["fused", "reference"])
def test_damped_newton_converges_where_the_undamped_iteration_diverges(fast, monkeypatch):
    """Large steps on strong weights (dt Lip(f) ~ 20): plain Newton from f(y) wanders off for some rows; halving
    their steps while the residual grows finds the solution of the stage equation."""
    import hamode.integrators.implicit as implicit

    torch.manual_seed(3)
    f = hamode.make_field("H1_J1", dim=4, n_layers=1, dtype=F64, init="normal")
    with torch.no_grad():
        for p in f.parameters():
            p.mul_(3.0)
    y0 = torch.randn(400, 4, dtype=F64) * 2
    net = hamode.HamiltonianNet(f, 0.4, "implicit_midpoint", fast=fast)
    monkeypatch.setattr(implicit, "MAX_HALVINGS", 0)
    with pytest.raises(hamode.ImplicitSolveError, match="did not converge"):
        net(y0)
    monkeypatch.undo()
    with torch.no_grad():
        y1 = net(y0)
        layer = f.layer(0, f.weight_table(), net.grid)
        residual = y1 - y0 - 0.4 * layer(0.2, 0.5 * (y0 + y1))  # the implicit midpoint equation itself
    assert float(residual.abs().max()) < 1e-12


def test_non_convergence_names_the_layer_and_what_to_change():
    f = field("H1_J1", 2, init="normal")
    rule = hamode.ImplicitMidpoint(solver="fixed_point", max_iter=5)
    net = hamode.HamiltonianNet(f, 8.0, rule)  # h = 4: the fixed-point map does not contract
    with pytest.raises(
        hamode.ImplicitSolveError,
        match=r"layer 0 .*did not converge in 5 fixed_point iterations.*"
        r"smaller h.*solver='newton'",
    ):
        net(torch.randn(3, 4, dtype=F64))


def test_newton_and_fixed_point_agree_and_settings_are_checked():
    f = field("H1_J1", 2)
    y0 = torch.randn(3, 4, dtype=F64)
    with torch.no_grad():
        a = hamode.HamiltonianNet(f, 0.4, hamode.GaussLegendre4(solver="newton"))(y0)
        b = hamode.HamiltonianNet(f, 0.4, hamode.GaussLegendre4(solver="fixed_point"))(y0)
    assert torch.allclose(a, b, rtol=0, atol=1e-13)
    with pytest.raises(ValueError, match="solver must be 'auto', 'newton' or 'fixed_point', got 'gmres'"):
        hamode.GaussLegendre4(solver="gmres")
    with pytest.raises(ValueError, match="max_iter must be an int >= 1, got 0"):
        hamode.GaussLegendre4(max_iter=0)
    with pytest.raises(ValueError, match=r"rtol must be a number > 0 or None"):
        hamode.GaussLegendre4(rtol=-1.0)


def test_what_the_implicit_gradient_does_not_cover_is_refused():
    f = field("H1_J1", 2)
    net = hamode.HamiltonianNet(f, 0.4, "implicit_midpoint")
    y0 = torch.randn(3, 4, dtype=F64, requires_grad=True)
    (g,) = torch.autograd.grad(net(y0).pow(2).sum(), y0)
    assert torch.isfinite(g).all()  # first derivatives work; second ones are refused
    with pytest.raises(RuntimeError, match=r"create_graph=True .* not supported"):
        torch.autograd.grad(net(y0).pow(2).sum(), y0, create_graph=True)
    with pytest.raises(RuntimeError, match=r"torch\.func transforms"):
        torch.func.grad(lambda y: net(y).sum())(y0.detach())


# ---------------------------------------------------------------- every sample solved on its own terms
F32 = torch.float32


def _state(arch: str, batch: int, scale: float, dtype, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    shape = (batch, 4) if arch == "H1_J1" else (batch, 4, 5, 5)
    return scale * torch.randn(*shape, generator=g).to(dtype)


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("dtype", [F32, F64], ids=["float32", "float64"])
@pytest.mark.parametrize("arch", ["H1_J1", "ConvH1_J1"])  # dense Newton, conv fixed point
def test_a_samples_solution_does_not_depend_on_its_batch(arch, dtype, fast):
    """The stopping test compared the batch's largest change with rtol x the batch's largest stage value: a sample
    of amplitude 1e-3 beside one of amplitude 3 was under-solved (1.2e-7 alone, 1.2e-5 batched, float32)."""
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=4, n_layers=4, width=4, dtype=dtype)
    net = hamode.HamiltonianNet(field, 0.8, "implicit_midpoint", fast=fast)
    small, large = _state(arch, 1, 1e-3, dtype, 1), _state(arch, 1, 3.0, dtype, 2)
    with torch.no_grad():
        alone = net(small)
        batched = net(torch.cat([small, large]))[:1]
        reference = hamode.HamiltonianNet(field.to(F64), 0.8, "implicit_midpoint")(small.to(F64))
        field.to(dtype)
    eps = torch.finfo(dtype).eps
    assert ((alone - batched).abs().max() / alone.abs().max()).item() <= 10 * eps
    assert ((alone.to(F64) - reference).abs().max() / reference.abs().max()).item() <= 100 * eps


def test_float32_solves_are_accepted_only_when_accurate():
    """A seeded scan of hard cases (a conv field, Gauss-Legendre 4 by fixed-point iteration, h in steps of 0.01 up
    to where the float64 iteration stops converging): a float32 solve either raises ImplicitSolveError or is within
    100 eps of the float64 solution. The stall rule accepted changes below sqrt(eps) (3.4e-4 in float32): 165 eps
    at the edge of this scan (seed 5, h = 0.24)."""
    accepted = 0
    for seed in range(6):
        torch.manual_seed(seed)
        field = hamode.make_field("ConvH1_J1", dim=4, n_layers=1, width=4, init="normal", dtype=F64)
        y = _state("ConvH1_J1", 2, 1.0, F64, seed)
        for i in range(1, 60):
            h = 0.01 * i
            try:
                with torch.no_grad():
                    exact = hamode.HamiltonianNet(field, h, "gauss_legendre4")(y)
            except hamode.ImplicitSolveError:
                break  # beyond the fixed-point iteration's reach in float64 too
            try:
                with torch.no_grad():
                    got = hamode.HamiltonianNet(field.to(F32), h, "gauss_legendre4")(y.to(F32)).to(F64)
            except hamode.ImplicitSolveError:
                continue
            finally:
                field.to(F64)
            accepted += 1
            error = ((got - exact).abs().max() / exact.abs().max()).item()
            assert error <= 100 * torch.finfo(F32).eps, (seed, h, error / torch.finfo(F32).eps)
    assert accepted >= 60, accepted  # the scan is of solves that converge, not of refusals
