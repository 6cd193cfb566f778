"""Continuous depth: torchdiffeq solves aligned with the layers, and the adjoint method."""

from __future__ import annotations

import copy

import pytest
import torch
import torchdiffeq
from helpers import F64, log_slope

import hamode
from hamode.diagnostics import SavedBytes, backward_sensitivity


def _h1(n_layers=16, seed=0, scale=0.5, weights="piecewise"):
    torch.manual_seed(seed)
    field = hamode.make_field("H1_J2", dim=4, n_layers=n_layers, init="normal", weights=weights, dtype=F64)
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(scale)
    return field


def _grads(net, y0):
    y = y0.clone().requires_grad_(True)
    net.field.zero_grad()
    out = net(y)
    (out.pow(2).sum() + out.sum()).backward()
    return out.detach(), [y.grad] + [p.grad.clone() for p in net.field.parameters()]


@pytest.mark.parametrize("substeps", [1, 3])
def test_torchdiffeq_euler_equals_hamode_euler(substeps):
    field = _h1(16)
    y0 = torch.randn(5, 4, dtype=F64)
    out_h, g_h = _grads(hamode.HamiltonianNet(field, 2.0, "euler", substeps=substeps), y0)
    out_t, g_t = _grads(hamode.HamiltonianNet(field, 2.0, "torchdiffeq:euler", substeps=substeps), y0)
    assert torch.allclose(out_h, out_t, rtol=0, atol=1e-14)
    for a, b in zip(g_h, g_t):
        assert torch.allclose(a, b, rtol=1e-13, atol=1e-14)


def test_trajectory_is_boundary_states():
    field = _h1(8)
    y0 = torch.randn(3, 4, dtype=F64)
    a = hamode.HamiltonianNet(field, 1.0, "euler", substeps=2).trajectory(y0)[::2]
    b = hamode.HamiltonianNet(field, 1.0, "torchdiffeq:euler", substeps=2).trajectory(y0)
    assert b.shape == (9, 3, 4)
    assert torch.allclose(a, b, atol=1e-14)


def _errors(solve, ref, substeps):
    return [(solve(k) - ref).norm().item() for k in substeps]


def test_torchdiffeq_rk4_order_4_on_layer_grid():
    field = _h1(4, weights="piecewise")
    y0 = torch.randn(3, 4, dtype=F64)
    T, ks = 1.6, [2, 4, 8, 16]
    ref = hamode.HamiltonianNet(field, T, "rk4", substeps=512)(y0)
    errs = _errors(lambda k: hamode.HamiltonianNet(field, T, "torchdiffeq:rk4", substeps=k)(y0), ref, ks)
    assert abs(log_slope([T / 4 / k for k in ks], errs) - 4) <= 0.3, errs

    # negative control: the same grid without perturb evaluates the last stage in the next layer
    net = hamode.HamiltonianNet(field, T)

    def naive(k):
        grid = net.grid.time_grid(k, F64)
        return torchdiffeq.odeint(net.rhs, y0, grid, method="rk4")[-1]

    naive_errs = _errors(naive, ref, ks)
    assert abs(log_slope([T / 4 / k for k in ks], naive_errs) - 1) <= 0.3, naive_errs


class _Counter(torch.nn.Module):
    def __init__(self, f):
        super().__init__()
        self.f, self.n = f, 0

    def forward(self, t, y):
        self.n += 1
        return self.f(t, y)


def test_dopri5_agrees_with_rk4_and_jump_t_saves_evaluations():
    field = _h1(16)
    y0 = torch.randn(4, 4, dtype=F64)
    T = 4.0
    net = hamode.HamiltonianNet(field, T, "torchdiffeq:dopri5", solver_options={"rtol": 1e-10, "atol": 1e-10})
    out = net(y0)
    ref = hamode.HamiltonianNet(field, T, "rk4", substeps=64)(y0)
    assert (out - ref).abs().max().item() <= 1e-8
    stats = dict(net.stats)
    assert stats["accepted_steps"] >= 16
    without = _Counter(net.rhs)
    out_nojump = torchdiffeq.odeint(
        without, y0, torch.tensor([0.0, T], dtype=F64), rtol=1e-10, atol=1e-10, method="dopri5"
    )[-1]
    assert stats["nfe"] < without.n, (stats, without.n)
    assert (out_nojump - ref).abs().max().item() < 1e-6


def test_solver_statistics():
    field = _h1(8)
    net = hamode.HamiltonianNet(field, 2.0, "torchdiffeq:dopri5", solver_options={"rtol": 1e-6, "atol": 1e-6})
    net(torch.randn(2, 4, dtype=F64))
    assert net.stats["nfe"] == net.function_evaluations() > 0
    assert net.stats["accepted_steps"] >= 8  # at least one step per layer with jump_t
    total = net.stats["accepted_steps"] + net.stats.get("rejected_steps", 0)
    assert 6 * total <= net.stats["nfe"] <= 6 * total + 2 * 8 + 2


def test_adjoint_matches_backprop_through_same_solve():
    field = _h1(8)
    y0 = torch.randn(3, 4, dtype=F64)
    opts = {"rtol": 1e-9, "atol": 1e-9}
    out_b, g_b = _grads(hamode.HamiltonianNet(field, 2.0, "torchdiffeq:dopri5", solver_options=opts), y0)
    net_a = hamode.HamiltonianNet(field, 2.0, "torchdiffeq:dopri5", gradient="adjoint", solver_options=opts)
    out_a, g_a = _grads(net_a, y0)
    assert torch.allclose(out_a, out_b, atol=1e-12)
    for a, b in zip(g_a, g_b):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-6), (a - b).abs().max()
    assert net_a.stats["nfe_backward"] > 0


@pytest.mark.parametrize("method", ["rk4", "dopri5"])
def test_adjoint_saved_bytes_do_not_grow_with_depth(method):
    def saved_bytes(n_layers, gradient):
        field = _h1(n_layers, scale=0.2)
        net = hamode.HamiltonianNet(
            field,
            2.0,
            f"torchdiffeq:{method}",
            gradient=gradient,
            solver_options={"rtol": 1e-5, "atol": 1e-5} if method == "dopri5" else {},
        )
        with SavedBytes(exclude=field.parameters()) as saved:  # parameters exist anyway; count activations
            out = net(torch.randn(8, 4, dtype=F64))
        out.sum().backward()
        return saved.bytes

    adj16, adj256 = saved_bytes(16, "adjoint"), saved_bytes(256, "adjoint")
    assert adj256 <= adj16, (adj16, adj256)
    assert saved_bytes(256, "backprop") > 8 * saved_bytes(16, "backprop")  # control: backprop grows


def test_continuous_float32_and_linear_weights():
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=4, n_layers=8, weights="linear")
    net = hamode.HamiltonianNet(field, 2.0, "torchdiffeq:dopri5", solver_options={"rtol": 1e-6, "atol": 1e-7})
    y0 = torch.randn(6, 4)
    out = net(y0)
    assert out.dtype == torch.float32
    ref = hamode.HamiltonianNet(copy.deepcopy(field).double(), 2.0, "rk4", substeps=64)(y0.double())
    assert (out.double() - ref).abs().max() < 1e-4
    # linear weights are continuous in t: the field does not jump at a boundary
    grid = net.grid
    t = grid.boundaries(torch.float64)[3]
    y = torch.randn(2, 4)
    eps = 1e-7
    assert torch.allclose(field(t - eps, y, grid), field(t + eps, y, grid), atol=1e-5)


def test_constant_weights_solve_without_jumps():
    field = hamode.make_field("H1_J1", dim=4, n_layers=5, weights="constant", dtype=F64)
    net = hamode.HamiltonianNet(field, 1.0, "torchdiffeq:dopri8", solver_options={"rtol": 1e-11, "atol": 1e-11})
    ref = hamode.HamiltonianNet(field, 1.0, "rk4", substeps=40)(torch.ones(1, 4, dtype=F64))
    assert torch.allclose(net(torch.ones(1, 4, dtype=F64)), ref, atol=1e-9)


def test_backward_sensitivity_of_continuous_net():
    field = _h1(6)
    y0 = torch.randn(3, 4, dtype=F64)
    a = backward_sensitivity(hamode.HamiltonianNet(field, 1.2, "euler", substeps=2), y0)
    b = backward_sensitivity(hamode.HamiltonianNet(field, 1.2, "torchdiffeq:euler", substeps=2), y0)
    assert torch.allclose(a, b, atol=1e-13)


# ---------------------------------------------------------------- bad input
def test_unknown_torchdiffeq_method_lists_them():
    with pytest.raises(
        ValueError,
        match=r"unknown torchdiffeq method 'rk45'; valid: torchdiffeq:euler.*torchdiffeq:rk4.*torchdiffeq:dopri5",
    ):
        hamode.HamiltonianNet(_h1(2), 1.0, "torchdiffeq:rk45")


@pytest.mark.parametrize(
    "options,error,match",
    [
        ({"rtol": "1e-6"}, TypeError, r"solver_options\['rtol'\] must be a finite number > 0, got '1e-6'"),
        ({"atol": -1.0}, TypeError, r"solver_options\['atol'\] must be a finite number > 0"),
        ({"max_num_steps": 2.5}, TypeError, r"max_num_steps'\] must be an int >= 1"),
        (
            {"tolerance": 1e-3},
            ValueError,
            r"unknown solver option 'tolerance' for torchdiffeq:dopri5; valid: adjoint_atol, adjoint_rtol, atol",
        ),
        ({"step_size": 0.1}, ValueError, r"solver_options\['step_size'\] is set by hamode"),
        ({"jump_t": [0.5]}, ValueError, r"solver_options\['jump_t'\] is set by hamode"),
    ],
)
def test_bad_solver_options(options, error, match):
    with pytest.raises(error, match=match):
        hamode.HamiltonianNet(_h1(2), 1.0, "torchdiffeq:dopri5", solver_options=options)


def test_fixed_method_refuses_adaptive_options_and_reversible_mode():
    with pytest.raises(ValueError, match="unknown solver option 'first_step' for torchdiffeq:rk4"):
        hamode.HamiltonianNet(_h1(2), 1.0, "torchdiffeq:rk4", solver_options={"first_step": 0.1})
    with pytest.raises(ValueError, match="gradient='reversible' needs a reversible hamode integrator"):
        hamode.HamiltonianNet(_h1(2), 1.0, "torchdiffeq:rk4", gradient="reversible")
