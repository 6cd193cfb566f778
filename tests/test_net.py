"""HamiltonianNet: the paper's layer equations, gradients, gradient modes, bad input."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, field_for, reversible_integrators, separable_architectures

import hamode
from hamode.fields import j1, j2

tanh = torch.tanh


def _col(v):
    return v.unsqueeze(-1)


@pytest.mark.parametrize("arch,J", [("H1_J1", j1), ("H1_J2", j2)])
def test_h1_equals_paper_layer_equation(arch, J):
    """y_{j+1} = y_j + h J K_jᵀ σ(K_j y_j + b_j), column vectors, one sample at a time."""
    field = hamode.make_field(arch, dim=4, n_layers=5, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=1.0, integrator="euler")
    y0 = torch.randn(3, 4, dtype=F64)
    Jm, h = J(4, dtype=F64), 0.2
    for i in range(3):
        y = _col(y0[i])
        for j in range(5):
            K, b = field.K[j].detach(), _col(field.b[j].detach())
            y = y + h * Jm @ K.T @ tanh(K @ y + b)
        assert torch.allclose(net(y0)[i], y.squeeze(-1), atol=1e-13)


def test_h2_equals_paper_layer_equation():
    """p_{j+1} = p_j - h Xᵀ K_qᵀ σ(K_q q_j + b_q); q_{j+1} = q_j + h X K_pᵀ σ(K_p p_{j+1} + b_p)."""
    torch.manual_seed(0)
    X = torch.randn(3, 3, dtype=F64)
    field = hamode.SeparableField(6, 4, X=X, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=1.2, integrator="symplectic_euler")
    y0 = torch.randn(2, 6, dtype=F64)
    h = 0.3
    for i in range(2):
        p, q = _col(y0[i, :3]), _col(y0[i, 3:])
        for j in range(4):
            Kp, bp, Kq, bq = (
                field.Kp[j].detach(),
                _col(field.bp[j].detach()),
                field.Kq[j].detach(),
                _col(field.bq[j].detach()),
            )
            p = p - h * X.T @ Kq.T @ tanh(Kq @ q + bq)
            q = q + h * X @ Kp.T @ tanh(Kp @ p + bp)
        assert torch.allclose(net(y0)[i], torch.cat([p, q]).squeeze(-1), atol=1e-13)


def test_ms1_ms2_ms3_equal_paper_layer_equations():
    torch.manual_seed(0)
    h, y0 = 0.25, torch.randn(2, 4, dtype=F64)
    ms1 = hamode.make_field("MS1", dim=4, n_layers=3, init="normal", dtype=F64)
    ms2 = hamode.make_field("MS2", dim=4, n_layers=3, init="normal", dtype=F64)
    ms3 = hamode.make_field("MS3", dim=4, n_layers=3, init="normal", dtype=F64)
    outs = [hamode.HamiltonianNet(f, 0.75)(y0) for f in (ms1, ms2, ms3)]
    for i in range(2):
        # MS1: z first with y_j, then y with z_{j+1}
        y, z = _col(y0[i, :2]), _col(y0[i, 2:])
        for j in range(3):
            K0, b1, b2 = ms1.K0[j].detach(), _col(ms1.b1[j].detach()), _col(ms1.b2[j].detach())
            z = z - h * tanh(K0.T @ y + b1)
            y = y + h * tanh(K0 @ z + b2)
        assert torch.allclose(outs[0][i], torch.cat([y, z]).squeeze(-1), atol=1e-13)
        # MS2: forward Euler with skew K
        y = _col(y0[i])
        for j in range(3):
            K = ms2.K[j].detach()
            assert torch.equal(K, -K.T)
            y = y + h * tanh(K @ y + _col(ms2.b[j].detach()))
        assert torch.allclose(outs[1][i], y.squeeze(-1), atol=1e-13)
        # MS3: y first with z_j, then z with y_{j+1}
        y, z = _col(y0[i, :2]), _col(y0[i, 2:])
        for j in range(3):
            K1, b1, K2, b2 = ms3.K1[j].detach(), _col(ms3.b1[j].detach()), ms3.K2[j].detach(), _col(ms3.b2[j].detach())
            y = y + h * K1.T @ tanh(K1 @ z + b1)
            z = z - h * K2.T @ tanh(K2 @ y + b2)
        assert torch.allclose(outs[2][i], torch.cat([y, z]).squeeze(-1), atol=1e-13)


def test_symplectic_euler_qp_is_the_authors_half_step_order():
    """The authors' code (L4DC/TAC) runs MS3 and H2 with the other half first: z (q) from y (p), then y (p)
    from the new z (q). That is `symplectic_euler_qp` on the same fields (used by the Table 1 script)."""
    torch.manual_seed(0)
    h, y0 = 0.25, torch.randn(2, 4, dtype=F64)
    ms3 = hamode.make_field("MS3", dim=4, n_layers=3, init="normal", dtype=F64)
    h2 = hamode.make_field("H2", dim=4, n_layers=3, init="normal", dtype=F64)
    outs = [hamode.HamiltonianNet(f, 0.75, integrator="symplectic_euler_qp")(y0) for f in (ms3, h2)]
    for i in range(2):
        y, z = _col(y0[i, :2]), _col(y0[i, 2:])
        for j in range(3):
            K1, b1, K2, b2 = ms3.K1[j].detach(), _col(ms3.b1[j].detach()), ms3.K2[j].detach(), _col(ms3.b2[j].detach())
            z = z - h * K2.T @ tanh(K2 @ y + b2)
            y = y + h * K1.T @ tanh(K1 @ z + b1)
        assert torch.allclose(outs[0][i], torch.cat([y, z]).squeeze(-1), atol=1e-13)
        p, q = _col(y0[i, :2]), _col(y0[i, 2:])  # X = I
        for j in range(3):
            Kp, bp, Kq, bq = h2.Kp[j].detach(), _col(h2.bp[j].detach()), h2.Kq[j].detach(), _col(h2.bq[j].detach())
            q = q + h * Kp.T @ tanh(Kp @ p + bp)
            p = p - h * Kq.T @ tanh(Kq @ q + bq)
        assert torch.allclose(outs[1][i], torch.cat([p, q]).squeeze(-1), atol=1e-13)
        assert not torch.allclose(outs[1][i], hamode.HamiltonianNet(h2, 0.75)(y0)[i])  # the order matters


def _gradcheck(net, y0):
    names, params = zip(*net.named_parameters())

    def fn(y, *ps):
        return torch.func.functional_call(net, dict(zip(names, ps)), (y,))

    return torch.autograd.gradcheck(fn, (y0, *params), eps=1e-6, atol=1e-7)


@pytest.mark.parametrize("name", hamode.list_integrators())
def test_gradcheck_every_integrator(name):
    field = field_for(name, n_layers=2, weights="linear")
    net = hamode.HamiltonianNet(field, t_end=0.8, integrator=name, substeps=2)
    assert _gradcheck(net, torch.randn(2, 4, dtype=F64, requires_grad=True))


@pytest.mark.parametrize("name", reversible_integrators())
def test_gradcheck_reversible_mode(name):
    field = field_for(name, n_layers=3, weights="piecewise")
    net = hamode.HamiltonianNet(field, t_end=0.9, integrator=name, substeps=2, gradient="reversible")
    assert _gradcheck(net, torch.randn(2, 4, dtype=F64, requires_grad=True))


@pytest.mark.parametrize("weights", ["piecewise", "linear"])
@pytest.mark.parametrize("arch", [*separable_architectures(), "sparse"])
@pytest.mark.parametrize("name", reversible_integrators())
def test_reversible_matches_backprop(name, arch, weights):
    torch.manual_seed(0)
    if arch == "sparse":
        field = hamode.SparseSeparableField(
            8, 16, graph=[(0, 1), (1, 2), (2, 3), (3, 0)], n_nodes=4, X="learnable", weights=weights, dtype=F64
        )
    else:
        field = hamode.make_field(arch, dim=8, n_layers=16, weights=weights, dtype=F64)
    y0 = torch.randn(5, 8, dtype=F64)
    grads = {}
    for mode in ("backprop", "reversible"):
        net = hamode.HamiltonianNet(field, t_end=4.0, integrator=name, substeps=2, gradient=mode)
        y = y0.clone().requires_grad_(True)
        field.zero_grad()
        out = net(y)
        (out.pow(2).sum() + net.regularization(0.1)).backward()
        grads[mode] = [y.grad.clone()] + [p.grad.clone() for p in field.parameters()]
        grads[mode + "_out"] = out.detach()
    assert torch.equal(grads["backprop_out"], grads["reversible_out"])
    for a, b in zip(grads["backprop"], grads["reversible"]):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-12)


def test_trajectory_shapes_and_consistency():
    field = hamode.make_field("H2", dim=4, n_layers=3, dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=1.0, integrator="leapfrog", substeps=4)
    y0 = torch.randn(2, 5, 4, dtype=F64)  # any leading batch shape
    ys = net.trajectory(y0)
    assert ys.shape == (13, 2, 5, 4)
    assert torch.equal(ys[0], y0) and torch.allclose(ys[-1], net(y0), rtol=0, atol=1e-13)  # fused vs autograd order


def test_float32_runs_and_set_integrator():
    field = hamode.make_field("H2", dim=4, n_layers=4)
    net = hamode.HamiltonianNet(field, t_end=1.0)
    y0 = torch.randn(3, 4)
    assert net(y0).dtype == torch.float32
    a = net(y0)
    net.set_integrator("yoshida4", substeps=2)
    assert net.integrator_name == "yoshida4" and net.substeps == 2
    assert not torch.equal(a, net(y0)) and torch.allclose(a, net(y0), atol=0.1)


def test_function_evaluations_count():
    net = hamode.HamiltonianNet(field_for("rk4"), 1.0, integrator="rk4", substeps=3)
    assert net.function_evaluations() == 4 * 4 * 3


# ---------------------------------------------------------------- bad input
def test_unknown_architecture_lists_valid():
    with pytest.raises(ValueError, match=r"unknown architecture 'H3'.*H1_J1.*H2.*MS3"):
        hamode.make_field("H3", dim=4, n_layers=2)


def test_unknown_integrator_lists_valid():
    with pytest.raises(ValueError, match=r"unknown integrator 'rk5'.*euler.*yoshida4"):
        hamode.HamiltonianNet(field_for("euler"), 1.0, integrator="rk5")


@pytest.mark.parametrize("arch", separable_architectures())
def test_odd_state_size_for_separable_fields(arch):
    with pytest.raises(ValueError, match=r"even dim.*dim=5"):
        hamode.make_field(arch, dim=5, n_layers=2)


def test_odd_dim_ms2_and_j1():
    with pytest.raises(ValueError, match="even dim"):
        hamode.make_field("MS2", dim=3, n_layers=2)
    with pytest.raises(ValueError, match="J='J1' needs an even dim"):
        hamode.make_field("H1_J1", dim=3, n_layers=2)
    assert hamode.make_field("H1_J2", dim=3, n_layers=2).dim == 3


@pytest.mark.parametrize("name", [n for n in hamode.list_integrators() if hamode.get_integrator(n).needs_separable])
def test_separable_integrator_on_nonseparable_field(name):
    with pytest.raises(
        ValueError,
        match=r"needs a separable field.*use one of euler, gauss_legendre4, heun, implicit_midpoint, midpoint, "
        r"reversible_euler, reversible_heun, reversible_rk4, rk38, rk4 \(symplectic on every field: gauss_legendre4, "
        r"implicit_midpoint\)",
    ):
        hamode.HamiltonianNet(hamode.make_field("H1_J1", dim=4, n_layers=2), 1.0, integrator=name)


def test_non_skew_J():
    with pytest.raises(ValueError, match="J must be skew-symmetric"):
        hamode.H1Field(3, 2, J=torch.eye(3))
    with pytest.raises(ValueError, match=r"J must have shape \(3, 3\)"):
        hamode.H1Field(3, 2, J=torch.zeros(2, 2))
    with pytest.raises(ValueError, match="J must be 'J1', 'J2', 'learnable'"):
        hamode.H1Field(4, 2, J="J3")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_layers": 0}, "n_layers must be >= 1, got 0"),
        ({"n_layers": 2.5}, "n_layers must be an int"),
        ({"dim": 0}, "dim must be >= 1"),
        ({"width": 0}, "width must be >= 1"),
        ({"activation": "gelu"}, "unknown activation 'gelu'; valid: relu, sigmoid, tanh"),
        ({"weights": "smooth"}, "weights must be one of piecewise, constant, linear"),
        ({"init": "xavier"}, "init must be one of default, normal"),
    ],
)
def test_bad_field_arguments(kwargs, match):
    args = {"dim": 4, "n_layers": 2, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        hamode.make_field("H1_J2", **args)


def test_bad_make_field_keywords():
    with pytest.raises(TypeError, match=r"architecture 'MS1'.*takes no argument 'width'"):
        hamode.make_field("MS1", dim=4, n_layers=2, width=3)
    with pytest.raises(TypeError, match="architecture 'H1_J1' fixes J='J1'"):
        hamode.make_field("H1_J1", dim=4, n_layers=2, J="J2")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"t_end": 0.0}, "t_end must be a finite number > 0, got 0.0"),
        ({"t_end": -1}, "t_end must be a finite number > 0"),
        ({"t_end": float("nan")}, "t_end must be a finite number > 0"),
        ({"t_end": "1"}, "t_end must be a positive number"),
        ({"substeps": 0}, "substeps must be >= 1, got 0"),
        ({"gradient": "checkpoint"}, "gradient must be one of backprop, reversible, adjoint"),
        (
            {"gradient": "reversible", "integrator": "rk4"},
            "'rk4' has none. Reversible: blanes_moan4, gauss_legendre4, implicit_midpoint, leapfrog",
        ),
        ({"gradient": "adjoint", "integrator": "euler"}, "gradient='adjoint' is the continuous adjoint"),
        ({"solver_options": [1]}, "solver_options must be a dict"),
    ],
)
def test_bad_net_arguments(kwargs, match):
    args = {"t_end": 1.0, **kwargs}
    with pytest.raises((ValueError, TypeError), match=match):
        hamode.HamiltonianNet(hamode.make_field("H1_J2", dim=4, n_layers=2), **args)


def test_bad_field_type():
    with pytest.raises(TypeError, match="field must be a hamode Field"):
        hamode.HamiltonianNet(torch.nn.Linear(2, 2), 1.0)


def test_bad_input_shape_dtype_device():
    net = hamode.HamiltonianNet(hamode.make_field("H2", dim=4, n_layers=2), 1.0)
    with pytest.raises(
        ValueError, match=r"y0 must have the state in its last dimension, of size dim=4; got shape \(3, 5\)"
    ):
        net(torch.zeros(3, 5))
    with pytest.raises(TypeError, match=r"y0 has dtype torch.float64.*parameters have dtype torch.float32"):
        net(torch.zeros(3, 4, dtype=F64))
    with pytest.raises(TypeError, match="y0 must be a floating-point tensor"):
        net(torch.zeros(3, 4, dtype=torch.long))
    with pytest.raises(TypeError, match=r"y0 must be a torch\.Tensor"):
        net([[0.0] * 4])
    with pytest.raises(TypeError, match="on meta"):
        net(torch.zeros(3, 4, device="meta"))
