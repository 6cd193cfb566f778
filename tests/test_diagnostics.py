"""Gradient diagnostics: backward sensitivities, symplecticity, bounds, energy."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, example_state

import hamode
from hamode.diagnostics import (
    backward_sensitivity,
    energy_drift,
    sensitivity_norms,
    sensitivity_upper_bound,
    symplecticity_defect,
)


def test_h2_symplectic_euler_128_layers_no_vanishing():
    """TAC's main result: every ‖∂y_N/∂y_j‖₂ >= 1 at any depth, and Φ J Φᵀ = J."""
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=6, n_layers=128, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=12.8, integrator="symplectic_euler")
    y0 = torch.randn(8, 6, dtype=F64)
    S = backward_sensitivity(net, y0)
    assert S.shape == (129, 8, 6, 6)
    norms = sensitivity_norms(S)
    assert norms["norm"].min().item() >= 1 - 1e-9
    assert symplecticity_defect(S, field.J).max().item() <= 1e-9
    assert norms["sigma_min"].min().item() < 1  # single singular values can still shrink (TAC)


def test_forward_euler_h1_has_a_defect():
    torch.manual_seed(0)
    field = hamode.make_field("H1_J1", dim=4, n_layers=16, init="normal", dtype=F64)
    S = backward_sensitivity(hamode.HamiltonianNet(field, 3.2, "euler"), torch.randn(4, 4, dtype=F64), layers=[0])
    assert symplecticity_defect(S[0], field.J).min().item() > 1e-3


def test_backward_sensitivity_matches_autograd_jacobian():
    torch.manual_seed(0)
    field = hamode.make_field("MS1", dim=4, n_layers=5, dtype=F64)
    net = hamode.HamiltonianNet(field, 1.0, "leapfrog", substeps=2)
    y0 = torch.randn(3, 4, dtype=F64)
    S = backward_sensitivity(net, y0, layers=[0, 2, 5])
    for b in range(3):
        assert torch.allclose(S[0, b], torch.autograd.functional.jacobian(net, y0[b]), atol=1e-12)
        # from boundary 2: run the last 3 layers from the state at t_2
        y2 = net.trajectory(y0)[4, b]  # 2 substeps per layer
        tail = hamode.HamiltonianNet(
            hamode.make_field("MS1", dim=4, n_layers=3, dtype=F64), 0.6, "leapfrog", substeps=2
        )
        with torch.no_grad():
            tail.field.K0.copy_(field.K0[2:])
            tail.field.b1.copy_(field.b1[2:])
            tail.field.b2.copy_(field.b2[2:])
        assert torch.allclose(S[1, b], torch.autograd.functional.jacobian(tail, y2), atol=1e-12)
    assert torch.equal(S[2], torch.eye(4, dtype=F64).expand(3, 4, 4))


@pytest.mark.parametrize("arch", hamode.list_architectures())
def test_upper_bound_never_below_measured_norm(arch):
    integrators = [
        n
        for n in hamode.list_integrators()
        if not hamode.get_integrator(n).needs_separable or hamode.architecture_info(arch).field_class.separable
    ]
    image = hamode.architecture_info(arch).field_class.state_rank == 3
    # image fields: default init (N(0, 1) convolutions have Lip(f) ~ 100, beyond the contraction that the
    # implicit rules' fixed-point solve on them needs), one seed and a (1, 4, 3, 3) state (36 reverse passes each)
    for seed in range(1 if image else 3):
        torch.manual_seed(seed)
        field = hamode.make_field(arch, dim=4, n_layers=12, init="default" if image else "normal", dtype=F64)
        for name in integrators:
            net = hamode.HamiltonianNet(field, 2.4, name, substeps=2)
            bound = sensitivity_upper_bound(net)
            y0 = example_state(field, 1 if image else 16, size=(3, 3))
            measured = sensitivity_norms(backward_sensitivity(net, y0))["norm_max"]
            assert bound.shape == measured.shape == (13,)
            assert (bound >= measured * (1 - 1e-12)).all(), (arch, name, (bound / measured).min())


def test_upper_bound_forward_euler_formula():
    """The bound of TAC (Galimberti et al. 2023) written out: ∏_k (1 + h S ‖J‖₂ ‖K_k‖₂²)."""
    field = hamode.make_field("H1_J2", dim=4, n_layers=6, init="normal", dtype=F64)
    net = hamode.HamiltonianNet(field, 1.2, "euler")
    h, J = 0.2, field.J
    factors = [1 + h * torch.linalg.matrix_norm(J, 2) * torch.linalg.matrix_norm(field.K[k], 2) ** 2 for k in range(6)]
    expected = [torch.stack(factors[j:]).prod() if j < 6 else torch.tensor(1.0, dtype=F64) for j in range(7)]
    assert torch.allclose(sensitivity_upper_bound(net), torch.stack(expected).detach())


def test_energy_drift_constant_weights():
    field = hamode.make_field("H2", dim=4, n_layers=4, weights="constant", dtype=F64)
    H, drift = energy_drift(hamode.HamiltonianNet(field, 2.0, "yoshida4", substeps=8), torch.randn(3, 4, dtype=F64))
    assert H.shape == (33, 3)
    assert drift.max().item() < 1e-6


def test_diagnostics_bad_input():
    net = hamode.HamiltonianNet(hamode.make_field("H2", dim=4, n_layers=3), 1.0)
    with pytest.raises(ValueError, match=r"layers must lie in \[0, 3\], got 7"):
        backward_sensitivity(net, torch.randn(2, 4), layers=[7])
    with pytest.raises(ValueError, match=r"Phi .* and J .* must end in the same"):
        symplecticity_defect(torch.eye(3), torch.eye(4))


def test_saved_bytes_counts_what_backward_keeps():
    from hamode.diagnostics import SavedBytes

    x = torch.randn(10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(10, dtype=torch.float64, requires_grad=True)
    with SavedBytes() as all_saved:
        (x * w).sum().backward()  # mul saves both operands
    with SavedBytes(exclude=[w]) as activations:
        (x * w).sum().backward()
    assert all_saved.bytes == 2 * 10 * 8 and activations.bytes == 10 * 8
