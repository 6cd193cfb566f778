"""Convolutional fields on (B, C, H, W) states, generic over the image architectures and every integrator:
the adjoint convolution, fused == reference, reversible == backprop, symplecticity of the whole flow, orders,
locality, shapes, TAC's lower bound, refusals."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, image_architectures, log_slope

import hamode
from hamode.diagnostics import (
    backward_sensitivity,
    energy_drift,
    sensitivity_norm_estimate,
    sensitivity_norms,
    symplecticity_defect,
)
from hamode.engines import fused_applies
from hamode.fields.conv import Convolution

IMAGE = image_architectures()


def rules_for(field) -> list[str]:
    return [n for n in hamode.list_integrators() if field.separable or not hamode.get_integrator(n).needs_separable]


def conv_field(arch: str, n_layers: int, seed: int = 0, scale: float = 1.0, **kw):
    torch.manual_seed(seed)
    field = hamode.make_field(arch, dim=4, n_layers=n_layers, dtype=F64, **kw)
    if scale != 1.0:
        with torch.no_grad():
            for p in field.parameters():
                p.mul_(scale)
    return field


def test_the_image_architectures_are_registered():
    assert IMAGE == ["ConvH1_J1", "ConvH1_J2", "ConvH2"]
    assert hamode.architecture_info("ConvH2").field_class.separable
    assert not hamode.architecture_info("ConvH1_J1").field_class.row_local


@pytest.mark.parametrize("padding", ["zeros", "circular"])
@pytest.mark.parametrize("kernel_size, dilation", [(3, 1), (3, 2), (5, 1), (1, 1)])
def test_adjoint_identity(kernel_size, dilation, padding):
    conv = Convolution(kernel_size, dilation, padding)
    W = torch.randn(5, 4, kernel_size, kernel_size, dtype=F64)
    y = torch.randn(3, 4, 7, 6, dtype=F64)
    z = torch.randn(3, 5, 7, 6, dtype=F64)
    Ky = conv.apply(y, W)
    assert Ky.shape == z.shape  # size-preserving
    lhs, rhs = (Ky * z).sum(), (y * conv.adjoint(z, W)).sum()
    assert abs(float(lhs - rhs)) <= 1e-12 * max(1.0, abs(float(lhs)))
    # the weight gradient against autograd
    Wg = W.clone().requires_grad_(True)
    (want,) = torch.autograd.grad((conv.apply(y, Wg) * z).sum(), Wg)
    assert torch.allclose(conv.weight_grad(y, z, W.shape), want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch", IMAGE)
def test_rhs_is_J_grad_H_and_output_keeps_any_image_size(arch):
    field = conv_field(arch, 2, init="normal")
    net = hamode.HamiltonianNet(field, 1.0)
    for shape in ((2, 4, 5, 7), (1, 4, 1, 1), (3, 4, 28, 28)):
        y = torch.randn(*shape, dtype=F64)
        assert net(y).shape == shape
    y = torch.randn(2, 4, 5, 3, dtype=F64, requires_grad=True)
    layer = field.layer(1, grid=net.grid)
    (g,) = torch.autograd.grad(layer.hamiltonian(0.7, y).sum(), y)
    want = torch.einsum("cd,bdhw->bchw", layer.structure(0.7), g)
    assert torch.allclose(layer(0.7, y), want, rtol=1e-10, atol=1e-12)
    assert layer.hamiltonian(0.7, y).shape == (2,)


def test_one_3x3_layer_couples_a_pixel_only_to_pixels_within_2():
    field = conv_field("ConvH1_J1", 1, init="normal")
    net = hamode.HamiltonianNet(field, 0.5, "euler")
    y0 = torch.randn(1, 4, 9, 9, dtype=F64)
    Jac = torch.autograd.functional.jacobian(net, y0).reshape(4, 9, 9, 4, 9, 9)
    centre = Jac[:, 4, 4].abs().amax(dim=(0, 1))  # ∂ y_N[:, 4, 4] / ∂ y_0[:, k, l]
    for k in range(9):
        for ell in range(9):
            near = max(abs(k - 4), abs(ell - 4)) <= 2
            assert (centre[k, ell] > 1e-8) == near, (k, ell, float(centre[k, ell]))


@pytest.mark.parametrize("arch", IMAGE)
def test_fused_equals_reference_and_reversible_equals_backprop_for_every_rule(arch):
    field = conv_field(arch, 3)
    assert field.supports_fused
    y0 = torch.randn(2, 4, 5, 4, dtype=F64)
    for name in rules_for(field):
        rule = hamode.get_integrator(name)
        assert fused_applies(field, rule)
        modes = ["backprop", "reversible"] if rule.reversible else ["backprop"]
        results = {}
        for fast in (True, False):
            for mode in modes:
                net = hamode.HamiltonianNet(field, 0.6, name, fast=fast, gradient=mode)
                y = y0.clone().requires_grad_(True)
                out = net(y)
                grads = torch.autograd.grad(out.sin().sum(), [y, *field.parameters()])
                results[(fast, mode)] = [out, *grads]
        want = results[(False, "backprop")]
        for key, got in results.items():
            for a, b in zip(got, want):
                assert torch.allclose(a, b, rtol=1e-9, atol=1e-11), (arch, name, key)


@pytest.mark.parametrize("arch", IMAGE)
def test_whole_flow_is_symplectic_for_every_symplectic_rule(arch):
    """Φ = ∂y_N/∂y_0 on a (1, 4, 4, 4) state keeps J ⊗ I (64 x 64) to 1e-10; forward Euler does not."""
    field = conv_field(arch, 6, scale=1.5)
    y0 = torch.randn(1, 4, 4, 4, dtype=F64)
    Jflat = field.flat_structure(4, 4)
    for name in rules_for(field):
        rule = hamode.get_integrator(name)
        net = hamode.HamiltonianNet(field, 1.2, name)
        S = backward_sensitivity(net, y0, layers=[0])[0]
        defect = float(symplecticity_defect(S, Jflat).max())
        if rule.symplectic:
            assert defect <= 1e-10, (arch, name, defect)
        elif name == "euler":
            assert defect > 1e-4, (arch, name, defect)


@pytest.mark.parametrize("arch", ["ConvH1_J1", "ConvH2"])
def test_order_of_every_integrator(arch):
    field = conv_field(arch, 3, scale=0.7)
    y0 = torch.randn(2, 4, 4, 4, dtype=F64)
    T = 1.2
    with torch.no_grad():
        ref = hamode.HamiltonianNet(field, T, "rk4", substeps=256)(y0)
        for name in rules_for(field):
            order = hamode.get_integrator(name).order
            substeps = [1, 2, 4] if order >= 6 else [2, 4, 8]
            errors = [float((hamode.HamiltonianNet(field, T, name, substeps=k)(y0) - ref).norm()) for k in substeps]
            slope = log_slope([T / 3 / k for k in substeps], errors)
            assert abs(slope - order) <= 0.3, (arch, name, slope, errors)


def test_tac_lower_bound_at_depth_32_for_conv_h2_with_symplectic_euler():
    field = conv_field("ConvH2", 32, init="normal", scale=0.5)
    net = hamode.HamiltonianNet(field, 3.2, "symplectic_euler")
    S = backward_sensitivity(net, torch.randn(2, 4, 3, 3, dtype=F64), layers=range(0, 33, 4))
    norms = sensitivity_norms(S)
    assert float(norms["norm_min"].min()) >= 1 - 1e-9
    assert float(norms["norm_max"].max()) > 1.5  # a nontrivial map


def test_energy_is_conserved_by_leapfrog_on_time_invariant_conv_h2():
    field = conv_field("ConvH2", 1, weights="constant")
    net = hamode.HamiltonianNet(field, 20.0, "leapfrog", substeps=400)
    H, drift = energy_drift(net, torch.randn(2, 4, 5, 5, dtype=F64))
    assert float(drift.max()) < 1e-3 * float(H[0].abs().max())


def test_implicit_rules_solve_image_states_matrix_free():
    """'auto' uses fixed-point iteration on fields whose rows are coupled; per-row Newton is refused there."""
    field = conv_field("ConvH1_J1", 2)
    y0 = torch.randn(2, 4, 4, 4, dtype=F64)
    net = hamode.HamiltonianNet(field, 0.4, "implicit_midpoint")
    y1 = net(y0)
    assert net.stats["iterations"] >= 2
    with torch.no_grad():  # the implicit midpoint equation of layer 0 holds at the solution
        one = hamode.HamiltonianNet(conv_field("ConvH1_J1", 1), 0.2, "implicit_midpoint")
        z = one(y0)
        layer = one.field.layer(0, grid=one.grid)
        assert float((z - y0 - 0.2 * layer(0.1, 0.5 * (y0 + z))).abs().max()) < 1e-13
    assert y1.shape == y0.shape
    newton = hamode.HamiltonianNet(field, 0.4, hamode.ImplicitMidpoint(solver="newton"))
    refusal = r"solver='newton' .* but ConvH1Field couples the rows .* use solver='fixed_point' or 'auto'"
    with pytest.raises(ValueError, match=refusal):
        newton(y0)


def test_bad_arguments_and_states_are_refused():
    with pytest.raises(ValueError, match="kernel_size must be odd"):
        hamode.make_field("ConvH2", dim=4, n_layers=2, kernel_size=4)
    with pytest.raises(ValueError, match="dilation must be >= 1, got 0"):
        hamode.make_field("ConvH1_J1", dim=4, n_layers=2, dilation=0)
    with pytest.raises(ValueError, match="J must be 'J1', 'J2' or a skew-symmetric"):
        hamode.ConvH1Field(4, 2, J="J3")
    with pytest.raises(ValueError, match="padding must be 'zeros' or 'circular', got 'reflect'"):
        hamode.make_field("ConvH1_J1", dim=4, n_layers=2, padding="reflect")
    with pytest.raises(ValueError, match="needs an even dim, got dim=3"):
        hamode.make_field("ConvH2", dim=3, n_layers=2)
    with pytest.raises(ValueError, match="a learnable X is not offered"):
        hamode.make_field("ConvH2", dim=4, n_layers=2, X="learnable")
    x, W = torch.randn(1, 2, 5, 5), torch.randn(2, 2, 3, 3)
    assert Convolution(dtype="bfloat16").apply(x, W, dtype=torch.float32).dtype == torch.float32
    with pytest.raises(TypeError, match=r"Convolution\.apply: dtype must be a torch\.dtype or None, got 'float32'"):
        Convolution().apply(x, W, dtype="float32")
    net = hamode.HamiltonianNet(hamode.make_field("ConvH2", dim=4, n_layers=2), 1.0)
    with pytest.raises(ValueError, match=r"image batch \(B, C, H, W\) with C = dim = 4 channels; got shape \(3, 4\)"):
        net(torch.randn(3, 4))
    with pytest.raises(ValueError, match=r"got shape \(3, 2, 5, 5\)"):
        net(torch.randn(3, 2, 5, 5))


def test_the_dense_models_refuse_image_architectures_by_name():
    from hamode.models import MNISTHDNN, Toy2DClassifier

    for build in (lambda: Toy2DClassifier("ConvH2", dim=4, n_layers=2), lambda: MNISTHDNN("ConvH2", channels=4)):
        with pytest.raises(ValueError, match=r"'ConvH2' acts on image states .* choose one of H1_J1, H1_J2, H2"):
            build()


@pytest.mark.parametrize("arch, name", [("ConvH2", "symplectic_euler"), ("ConvH1_J1", "rk4"), ("H2", "leapfrog")])
def test_matrix_free_norm_estimate_matches_the_exact_bsm(arch, name):
    torch.manual_seed(1)
    field = hamode.make_field(arch, dim=4, n_layers=8, dtype=F64, init="normal")
    with torch.no_grad():
        for p in field.parameters():
            p.mul_(0.5)
    net = hamode.HamiltonianNet(field, 1.6, name)
    y0 = torch.randn(2, 4, 3, 3, dtype=F64) if field.state_rank == 3 else torch.randn(3, 4, dtype=F64)
    est = sensitivity_norm_estimate(net, y0, layer=2)
    exact = sensitivity_norms(backward_sensitivity(net, y0, layers=[2]))
    assert torch.allclose(est["norm"], exact["norm"][0], rtol=1e-6, atol=0)
    assert torch.allclose(est["sigma_min"], exact["sigma_min"][0], rtol=1e-6, atol=0)
    assert float(exact["norm"][0].max()) > 1.2  # a nontrivial map
    with pytest.raises(ValueError, match="layer must lie in"):
        sensitivity_norm_estimate(net, y0, layer=9)
    with pytest.raises(ValueError, match="max_iter must be >= 1, got 0"):
        sensitivity_norm_estimate(net, y0, max_iter=0)
    with pytest.raises(ValueError, match=r"rtol must be a number in \(0, 1\), got -1"):
        sensitivity_norm_estimate(net, y0, rtol=-1)
    implicit = hamode.HamiltonianNet(field, 1.6, hamode.ImplicitMidpoint(solver="fixed_point"))
    with pytest.raises(ValueError, match=r"needs JVPs .* implicit_midpoint"):
        sensitivity_norm_estimate(implicit, y0)


def test_hamiltonian_cnn_shapes_gradient_modes_and_refusals():
    from hamode.models import HamiltonianCNN

    torch.manual_seed(0)
    images = torch.randn(3, 1, 28, 28, dtype=F64)
    grads = {}
    for mode in ("backprop", "reversible"):
        torch.manual_seed(0)
        model = HamiltonianCNN(channels=(4, 8), layers=(2, 3), gradient=mode).to(F64)
        assert [type(net.field).__name__ for net in model.stages] == ["ConvH2Field", "ConvH2Field"]
        assert model.features(images).shape == (3, 8, 14, 14)
        logits = model(images)
        assert logits.shape == (3, 10)
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([1, 2, 3])) + model.regularization(1e-3)
        grads[mode] = torch.autograd.grad(loss, list(model.parameters()))
    for a, b in zip(grads["backprop"], grads["reversible"]):
        assert torch.allclose(a, b, rtol=1e-8, atol=1e-12)
    pooled = HamiltonianCNN(3, 5, channels=(4, 6, 8), layers=(1, 1, 1), architecture="ConvH1_J1", transition="pool")
    assert pooled(torch.randn(2, 3, 16, 12)).shape == (2, 5)
    assert pooled.features(torch.randn(2, 3, 16, 12)).shape == (2, 8, 4, 3)
    with pytest.raises(ValueError, match="channels and layers must name the same stages"):
        HamiltonianCNN(channels=(4, 8), layers=(2,))
    with pytest.raises(
        ValueError,
        match=r"'H2' acts on \(\.\.\., dim\) states, .* needs an image field: choose one of "
        "ConvH1_J1, ConvH1_J2, ConvH2",
    ):
        HamiltonianCNN(architecture="H2")
    for bad in ({"in_channels": 0}, {"n_classes": 0}, {"channels": (4, 0), "layers": (1, 1)}):
        with pytest.raises(ValueError, match=f"{next(iter(bad))} must be"):
            HamiltonianCNN(**bad)
    with pytest.raises(ValueError, match="transition must be 'conv' or 'pool', got 'stride'"):
        HamiltonianCNN(transition="stride")


def test_conv_h2_with_a_fixed_channel_mixing_x():
    torch.manual_seed(2)
    X = torch.randn(2, 2, dtype=F64)
    field = hamode.ConvH2Field(4, 3, X=X, dtype=F64)
    assert torch.equal(field.X, X) and "X_matrix" in dict(field.named_buffers())
    assert "X_matrix" not in dict(conv_field("ConvH2", 3).named_buffers())  # identity: nothing to mix, no buffer
    y0 = torch.randn(2, 4, 5, 4, dtype=F64, requires_grad=True)
    layer = field.layer(0)
    (g,) = torch.autograd.grad(layer.hamiltonian(0.0, y0).sum(), y0)
    assert torch.allclose(layer(0.0, y0), torch.einsum("cd,bdhw->bchw", layer.structure(0.0), g), atol=1e-12)
    results = []
    for fast in (True, False):
        net = hamode.HamiltonianNet(field, 0.6, "leapfrog", fast=fast)
        out = net(y0)
        results.append([out, *torch.autograd.grad(out.sin().sum(), [y0, *field.parameters()])])
    for a, b in zip(*results):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-11)


def _relative(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).detach().norm() / b.detach().norm())


@pytest.mark.parametrize("conv_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("arch", IMAGE)
def test_reduced_precision_convolutions_keep_the_state_and_its_gradients_in_float32(arch, conv_dtype):
    """conv_dtype="bfloat16" / "float16": the convolutions run in that precision (the results differ from float32's
    by its rounding, not by float32's), the state, its update and every gradient stay float32, and the fused and the
    reference paths compute the same thing to that precision, in both gradient modes."""
    torch.manual_seed(0)
    exact = hamode.make_field(arch, dim=4, n_layers=3)
    reduced = hamode.make_field(arch, dim=4, n_layers=3, conv_dtype=conv_dtype)
    reduced.load_state_dict(exact.state_dict())
    assert (exact.conv_dtype, reduced.conv_dtype) == ("state", conv_dtype)
    y0 = torch.randn(2, 4, 6, 5)
    results = {}
    for field in (exact, reduced):
        rule = "symplectic_euler" if field.separable else "reversible_heun"  # reversible rules, both kinds of field
        for fast in (True, False):
            for mode in ("backprop", "reversible"):
                net = hamode.HamiltonianNet(field, 0.9, rule, fast=fast, gradient=mode)
                y = y0.clone().requires_grad_(True)
                out = net(y)
                assert out.dtype == torch.float32 and out.shape == y0.shape
                grads = torch.autograd.grad(out.sin().sum(), [y, *field.parameters()])
                assert all(g.dtype == torch.float32 for g in grads)
                results[(field.conv_dtype, fast, mode)] = [out, *grads]
    want = results[("state", False, "backprop")]
    for key, got in results.items():
        for a, b in zip(got, want):
            if key[0] == "state":
                assert _relative(a, b) < 1e-5, key
            else:  # the reduced precision's rounding (2^-8 relative per product in bfloat16), visible and small
                assert _relative(a, b) < 3e-2, key
        if key[0] == conv_dtype:
            assert _relative(got[0], want[0]) > 1e-6, f"the convolutions did not run in {conv_dtype}"
    # fused and reference run the same reduced-precision products: closer to each other than to float32
    fused, ref = results[(conv_dtype, True, "backprop")], results[(conv_dtype, False, "backprop")]
    assert _relative(fused[0], ref[0]) < 0.1 * _relative(fused[0], want[0])


@pytest.mark.parametrize("arch, rule", [("ConvH2", "rk4"), ("ConvH2", "leapfrog"), ("ConvH1_J1", "rk4")])
def test_reduced_precision_contexts_reach_every_kind_of_rule(arch, rule):
    """With bfloat16 convolutions an evaluation's context holds σ and the rounded copies the backward's weight
    gradients take (nested in a Runge-Kutta rule's tape of a separable field, whose stages evaluate both halves): the
    fused gradients agree with the reference path's to bfloat16's rounding."""
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=4, n_layers=2, conv_dtype="bfloat16")
    y0 = torch.randn(2, 4, 6, 5)
    results = []
    for fast in (True, False):
        net = hamode.HamiltonianNet(field, 0.6, rule, fast=fast)
        y = y0.clone().requires_grad_(True)
        out = net(y)
        results.append([out, *torch.autograd.grad(out.sin().sum(), [y, *field.parameters()])])
    for a, b in zip(*results):
        assert _relative(a, b) < 3e-2


def test_reduced_precision_is_refused_unless_named_and_reaches_the_cnn():
    from hamode.models import HamiltonianCNN

    for bad in ("half", "bf16", torch.bfloat16, None):
        with pytest.raises(ValueError, match=r"conv_dtype must be one of \['bfloat16', 'float16', 'state'\]"):
            hamode.make_field("ConvH2", dim=4, n_layers=2, conv_dtype=bad)
    torch.manual_seed(0)
    exact = HamiltonianCNN(channels=(4, 8), layers=(1, 1))
    reduced = HamiltonianCNN(channels=(4, 8), layers=(1, 1), conv_dtype="bfloat16")
    reduced.load_state_dict(exact.state_dict())
    assert [net.field.conv_dtype for net in reduced.stages] == ["bfloat16", "bfloat16"]
    assert reduced.init_config["init_args"]["conv_dtype"] == "bfloat16"
    images = torch.randn(3, 1, 12, 12)
    exact.eval(), reduced.eval()
    a, b = exact(images), reduced(images)
    assert b.dtype == torch.float32 and 1e-6 < _relative(b, a) < 3e-2
    with torch.autocast("cpu", dtype=torch.bfloat16):  # bf16-mixed: the frame in bfloat16, the stages as set
        c = reduced(images)
    assert torch.isfinite(c).all() and _relative(c.float(), a) < 5e-2


def test_image_states_in_either_memory_format_give_the_same_flow():
    """The fused engine runs image states channels_last (a ConvH2 split of such a state is two channels_last
    halves); a contiguous state gives the same values, and so does the reference path."""
    field = conv_field("ConvH2", 2)
    y = torch.randn(3, 4, 6, 5, dtype=F64)
    p, q = field.split(y.contiguous(memory_format=torch.channels_last))
    assert p.is_contiguous(memory_format=torch.channels_last) and q.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(p, y[:, :2]) and torch.equal(q, y[:, 2:])
    outs = []
    for fast in (True, False):
        net = hamode.HamiltonianNet(field, 0.5, fast=fast)
        for state in (y, y.contiguous(memory_format=torch.channels_last)):
            outs.append(net(state))
    for out in outs[1:]:
        assert torch.allclose(out, outs[0], rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("conv_dtype", ["bfloat16", "float16"])
def test_a_reduced_precision_vjp_rounds_the_convolutions_operands_and_nothing_else(conv_dtype):
    """The fused VJP of ``Kᵀ σ(K y + b)`` with reduced-precision convolutions: the products take their operands rounded
    to that precision, their results come back in float32, and σ', the cotangent ``gz``, the bias gradient's sum
    and the update stay float32 (exactly: the same calls written out here). The weight gradients' factors ``s`` and
    ``y`` are the copies the forward rounded (kept in its context), equal to rounding ``s`` and ``y``."""
    torch.manual_seed(0)
    field = hamode.make_field("ConvH1_J1", dim=4, n_layers=1, conv_dtype=conv_dtype)
    act, low = field.activation, getattr(torch, conv_dtype)
    w = {
        key: value[0] if key in ("K", "Kt", "b") else value
        for key, value in field.fused_weights(field.weight_table()).items()
    }
    shape = (2, 4, 96, 96)  # past IN_PLACE_FROM: σ's backward writes over the product it is given
    y, c, base = (torch.randn(shape).contiguous(memory_format=torch.channels_last) for _ in range(3))
    with torch.no_grad():
        _, ctx = field.fused_f(w, y)
        s, s_low, y_low = ctx
        g, (s_, cj, gz, y_, gz_sum) = field.fused_f_vjp(w, y, ctx, c, 0.5, base)
        cj_want = hamode.fields.conv.channel_mix(w["Jt"], c)
        gz_want = act.backprop_through_output(torch.nn.functional.conv2d(cj_want.to(low), w["K"], padding=1).float(), s)
        back = torch.nn.functional.conv2d(gz_want.to(low), w["Kt"], padding=1).float()
    assert (cj.dtype, gz.dtype, gz_sum.dtype, g.dtype) == (low, low, torch.float32, torch.float32)
    assert s.dtype == torch.float32
    assert s_ is s_low and y_ is y_low and torch.equal(s_low, s.to(low)) and torch.equal(y_low, y.to(low))
    assert torch.equal(cj, cj_want.to(low))
    assert torch.equal(gz, gz_want.to(low))  # rounded once, from the float32 gz
    assert torch.equal(gz_sum, gz_want.sum((0, 2, 3)))  # the bias gradient from the float32 gz
    assert torch.equal(g, base + 0.5 * back)
