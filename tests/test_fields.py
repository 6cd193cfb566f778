"""Field correctness, generic over list_architectures(), plus the sparse and autograd fields."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, example_state

import hamode
from hamode.fields import AutogradHamiltonianField, SparseSeparableField

PAPER_PARAMS_PER_LAYER = {  # the papers' parameter counts, n = dim, default width: a check of the formulas
    "H1_J1": lambda n: n * n + n,
    "H1_J2": lambda n: n * n + n,
    "H2": lambda n: n * n // 2 + n,
    "MS1": lambda n: n * n // 4 + n,
    "MS2": lambda n: (n * n + n) // 2,
    "MS3": lambda n: n * n // 2 + n,
    "ConvH1_J1": lambda n: 9 * n * n + n,  # K: (C, C, 3, 3), b: (C,)
    "ConvH1_J2": lambda n: 9 * n * n + n,
    "ConvH2": lambda n: 2 * (9 * (n // 2) ** 2 + n // 2),  # K_p, K_q: (C/2, C/2, 3, 3), b_p, b_q
}
PAPER_DEFAULT_INTEGRATORS = {  # the discretisations the papers train these architectures with
    "H1_J1": "euler",
    "H1_J2": "euler",
    "MS2": "euler",
    "ConvH1_J1": "euler",
    "ConvH1_J2": "euler",
    "H2": "symplectic_euler",
    "MS1": "symplectic_euler",
    "MS3": "symplectic_euler",
    "ConvH2": "symplectic_euler",
}


def _autograd_rhs(layer, t, y):
    y = y.detach().requires_grad_(True)
    (g,) = torch.autograd.grad(layer.hamiltonian(t, y).sum(), y)
    if layer.field.state_rank == 3:  # J acts on the channels of every pixel
        return torch.einsum("cd,bdhw->bchw", layer.structure(t), g)
    return g @ layer.structure(t).mT


@pytest.mark.parametrize("weights", ["piecewise", "linear", "constant"])
@pytest.mark.parametrize("activation", hamode.list_activations())
@pytest.mark.parametrize("arch", hamode.list_architectures())
def test_rhs_equals_J_grad_H(arch, activation, weights):
    field = hamode.make_field(arch, dim=6, n_layers=3, activation=activation, weights=weights, init="normal", dtype=F64)
    grid = hamode.HamiltonianNet(field, t_end=1.5).grid
    y = example_state(field, 4, size=(5, 3))
    for j in range(3):
        t = grid.start(j) + 0.23
        layer = field.layer(j, grid=grid)
        assert torch.allclose(layer(t, y), _autograd_rhs(layer, t, y), atol=1e-12, rtol=1e-10)
        J = layer.structure(t)
        assert torch.allclose(J, -J.mT, atol=1e-12)
        # the continuous interface looks the layer up from t
        assert torch.allclose(field(torch.tensor(t, dtype=F64), y, grid), layer(t, y), atol=0, rtol=0)


@pytest.mark.parametrize("arch", hamode.list_architectures())
def test_parameter_count_per_layer(arch):
    """The count the field states (its formula) is the count of its stacked tensors, for any registered field."""
    for n, width in ((4, None), (8, None), (8, 3)):
        try:
            field = hamode.make_field(arch, dim=n, n_layers=5, width=width)
        except TypeError:  # an architecture without a width
            continue
        counted = sum(p.numel() for p in field.stacked_parameters().values())
        assert counted == 5 * field.parameters_per_layer(), (arch, n, width, counted)


@pytest.mark.parametrize("arch", sorted(PAPER_PARAMS_PER_LAYER))
def test_parameter_counts_are_the_papers(arch):
    for n in (4, 8):
        assert hamode.make_field(arch, dim=n, n_layers=5).parameters_per_layer() == PAPER_PARAMS_PER_LAYER[arch](n)


@pytest.mark.parametrize("arch", hamode.list_architectures())
def test_weight_paths_node_counts_and_default_integrator(arch):
    for weights, nodes in (("piecewise", 7), ("constant", 1), ("linear", 8)):
        field = hamode.make_field(arch, dim=4, n_layers=7, weights=weights)
        assert all(p.shape[0] == nodes for p in field.stacked_parameters().values())
    default = hamode.architecture_info(arch).default_integrator
    rule = hamode.get_integrator(default)  # registered
    assert field.separable or not rule.needs_separable  # and it runs on the field
    net = hamode.HamiltonianNet(hamode.make_field(arch, dim=4, n_layers=2), t_end=1.0)
    assert net.integrator_name == default
    if arch in PAPER_DEFAULT_INTEGRATORS:
        assert default == PAPER_DEFAULT_INTEGRATORS[arch]


def test_contract_parameter_names_and_shapes():
    f = hamode.make_field("H1_J2", dim=4, n_layers=16, width=6)
    assert f.K.shape == (16, 6, 4) and f.b.shape == (16, 6) and f.J.shape == (4, 4)
    assert torch.equal(f.J, hamode.fields.j2(4))
    g = hamode.make_field("H2", dim=4, n_layers=16, width=3)
    assert g.Kp.shape == (16, 3, 2) and g.bp.shape == (16, 3) and g.Kq.shape == (16, 3, 2) and g.bq.shape == (16, 3)
    assert torch.equal(g.X, torch.eye(2))
    assert torch.equal(hamode.make_field("H1_J1", dim=4, n_layers=1).J, hamode.fields.j1(4))


def test_layer_returns_views_not_copies():
    f = hamode.make_field("H2", dim=4, n_layers=3)
    w = f.layer(1).weights(0.0)
    assert w["Kp"].data_ptr() == f.Kp[1].data_ptr()


def test_learnable_J_and_X_are_skew_and_trainable():
    f = hamode.H1Field(4, 2, J="learnable", dtype=F64)
    J = f.J
    assert torch.allclose(J, -J.mT) and J.requires_grad
    g = hamode.SeparableField(4, 2, X="learnable", dtype=F64)
    net = hamode.HamiltonianNet(g, 1.0)
    net(torch.randn(2, 4, dtype=F64)).sum().backward()
    assert g.X_param.grad is not None and g.X_param.grad.abs().sum() > 0


def test_log_cosh_is_stable():
    act = hamode.get_activation("tanh")
    x = torch.tensor([-1e4, -50.0, 0.0, 3.0, 1e4], dtype=F64)
    ref = torch.log(torch.cosh(torch.tensor([0.0, 3.0], dtype=F64)))
    out = act.antiderivative(x)
    assert torch.isfinite(out).all()
    assert torch.allclose(out[2:4], ref, atol=1e-15)
    assert torch.allclose(out[[0, 4]], torch.tensor([1e4, 1e4], dtype=F64) - torch.log(torch.tensor(2.0, dtype=F64)))


def _ring(n_nodes):
    return [(i, (i + 1) % n_nodes) for i in range(n_nodes)]


def test_sparse_field_keeps_pattern_after_optimizer_steps():
    torch.manual_seed(0)
    field = SparseSeparableField(16, 4, graph=_ring(8), n_nodes=8, X="learnable", init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=2.0)
    mask = field.adjacency  # 8 nodes, block size 1
    ring = torch.zeros(8, 8, dtype=torch.bool)
    for i in range(8):
        ring[i, i] = ring[i, (i + 1) % 8] = ring[i, (i - 1) % 8] = True
    assert torch.equal(mask, ring)
    opt = torch.optim.AdamW(field.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(3):
        opt.zero_grad()
        (net(torch.randn(32, 16, dtype=F64)).pow(2).mean() + net.regularization(1e-2)).backward()
        opt.step()
    for K in (field.Kp, field.Kq):
        assert (K[:, ~mask] == 0).all() and (K[:, mask] != 0).all()
    X = field.X
    assert (X[~torch.eye(8, dtype=torch.bool)] == 0).all()


def test_sparse_layer_jacobian_follows_graph():
    """A layer is two rounds of neighbour-only messages (σ(K q) at node l reads l's neighbours, then Kᵀ sends
    back to neighbours), so the one-layer Jacobian has exactly the sparsity of the 2-hop graph A²."""
    torch.manual_seed(0)
    field = SparseSeparableField(16, 1, graph=_ring(8), n_nodes=8, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=0.5, integrator="euler")
    y = torch.randn(16, dtype=F64)
    Jac = torch.autograd.functional.jacobian(net, y)
    node = torch.arange(16) % 8  # p_i = y[i], q_i = y[8 + i]
    A = field.adjacency.to(F64)
    two_hop = (A @ A) > 0
    assert two_hop.sum(1).eq(5).all()  # ring: i-2..i+2, far from dense
    allowed = two_hop[node][:, node]
    assert (Jac[~allowed] == 0).all()
    assert (Jac[allowed].abs() > 0).float().mean() > 0.5


def test_sparse_field_bad_graph():
    with pytest.raises(ValueError, match="divisible by the number of graph nodes"):
        SparseSeparableField(12, 2, graph=_ring(4), n_nodes=4)
    with pytest.raises(ValueError, match="outside"):
        SparseSeparableField(16, 2, graph=[(0, 9)], n_nodes=8)
    with pytest.raises(ValueError, match="square adjacency"):
        SparseSeparableField(16, 2, graph=torch.ones(8, 4))


def test_autograd_field_matches_analytic_h1():
    torch.manual_seed(0)
    h1 = hamode.make_field("H1_J2", dim=4, n_layers=1, weights="constant", dtype=F64)
    K, b = h1.K[0].detach(), h1.b[0].detach()

    def H(t, y):
        return hamode.get_activation("tanh").antiderivative(y @ K.T + b).sum(-1)

    auto = AutogradHamiltonianField(H, "J2", dim=4, n_layers=3)
    y0 = torch.randn(5, 4, dtype=F64)
    a = hamode.HamiltonianNet(auto, 1.0, integrator="rk4", substeps=2)(y0)
    e = hamode.HamiltonianNet(h1, 1.0, integrator="rk4", substeps=6)(y0)
    assert torch.allclose(a, e, atol=1e-13)


def test_autograd_field_with_mlp_trains():
    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1)).double()
    field = AutogradHamiltonianField(lambda t, y: mlp(y).squeeze(-1), "J1", dim=4, n_layers=4)
    net = hamode.HamiltonianNet(field, t_end=1.0)
    assert net.integrator_name == "rk4"
    y0 = torch.randn(8, 4, dtype=F64, requires_grad=True)
    net(y0).pow(2).sum().backward()
    assert mlp[0].weight.grad is not None and y0.grad is not None
    bad = hamode.HamiltonianNet(AutogradHamiltonianField(lambda t, y: y, "J1", dim=4), 1.0)
    with pytest.raises(ValueError, match="one energy per sample"):
        bad(torch.zeros(2, 4))
