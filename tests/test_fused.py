"""The fused engine against the autograd reference; reversible against backprop; memory."""

from __future__ import annotations

import pytest
import torch
from helpers import F64, dense_architectures, reversible_integrators

import hamode
from hamode.diagnostics import SavedBytes
from hamode.engines import fused_applies, reconstruct

RING4 = [(0, 1), (1, 2), (2, 3), (3, 0)]
VARIANTS = ["H1_learnJ", "H2_learnX", "sparse"]  # options of the registered fields worth their own cases
FIELDS = [*dense_architectures(), *VARIANTS]  # every registered dense architecture, found in the registry
WIDTH_HINTS = {"H1_J1": 6, "H2": 3}  # a test-size hint where the default width is not what a case needs


def make(kind: str, n_layers: int, dtype=F64, weights="piecewise", seed=0):
    # default init: a well-conditioned net, so that two correct evaluation orders agree to ~1e-13
    # (N(0, 1) weights over 64 layers amplify rounding differences by ~100x)
    torch.manual_seed(seed)
    kw = dict(weights=weights, dtype=dtype)
    if kind == "H1_learnJ":
        return hamode.H1Field(8, n_layers, width=5, J="learnable", **kw)
    if kind == "H2_learnX":
        return hamode.SeparableField(8, n_layers, width=6, X="learnable", **kw)
    if kind == "sparse":
        return hamode.SparseSeparableField(8, n_layers, graph=RING4, n_nodes=4, X="learnable", **kw)
    if kind in WIDTH_HINTS:
        kw["width"] = WIDTH_HINTS[kind]
    return hamode.make_field(kind, dim=8, n_layers=n_layers, **kw)


def fused_rules() -> list[str]:
    """The rules the fused engine runs (every hamode declaration, explicit and implicit)."""
    return [n for n in hamode.list_integrators() if hamode.get_integrator(n).supports_fused]


def fused_reversible_rules() -> list[str]:
    return [n for n in reversible_integrators() if n in fused_rules()]


def cases(rules=None):
    for kind in FIELDS:
        separable = make(kind, 1).separable
        for name in fused_rules() if rules is None else rules:
            if separable or not hamode.get_integrator(name).needs_separable:
                yield kind, name


def _run(field, name, y0, fast, gradient="backprop", substeps=2):
    net = hamode.HamiltonianNet(
        field, t_end=0.1 * field.n_layers, integrator=name, substeps=substeps, gradient=gradient, fast=fast
    )
    y = y0.clone().requires_grad_(True)
    field.zero_grad()
    out = net(y)
    (out.sin().sum() + net.regularization(0.1)).backward()
    return out.detach(), [y.grad] + [p.grad.clone() for p in field.parameters()]


def _assert_close(a_list, b_list, rtol):
    for a, b in zip(a_list, b_list):
        scale = a.abs().max().clamp_min(1e-300)
        assert ((a - b).abs().max() / scale).item() <= rtol


@pytest.mark.parametrize("depth", [1, 7, 64])
@pytest.mark.parametrize("kind,name", list(cases()))
def test_fused_matches_reference(kind, name, depth):
    field = make(kind, depth)
    shape = (3, 8) if depth != 7 else (2, 3, 2, 8)  # any leading batch shape, e.g. (B, 28, 28, C)
    y0 = torch.randn(*shape, dtype=F64)
    net = hamode.HamiltonianNet(field, 1.0, integrator=name)
    assert fused_applies(net.field, net.integrator)
    out_r, g_r = _run(field, name, y0, fast=False)
    out_f, g_f = _run(field, name, y0, fast=True)
    assert ((out_r - out_f).abs().max() / out_r.abs().max()).item() <= 1e-12
    _assert_close(g_r, g_f, 1e-10)


@pytest.mark.parametrize("name", ["euler", "leapfrog"])
def test_fused_constant_weights_and_inference(name):
    field = make("H2", 9, weights="constant")
    y0 = torch.randn(4, 8, dtype=F64)
    out_r, g_r = _run(field, name, y0, fast=False, substeps=3)
    out_f, g_f = _run(field, name, y0, fast=True, substeps=3)
    assert torch.allclose(out_r, out_f, rtol=1e-12, atol=1e-14)
    _assert_close(g_r, g_f, 1e-10)
    net = hamode.HamiltonianNet(field, 0.9, name)
    with torch.no_grad():
        assert torch.allclose(net(y0), hamode.HamiltonianNet(field, 0.9, name, fast=False)(y0), atol=1e-14)


def test_linear_weights_fall_back_to_reference():
    field = make("H2", 4, weights="linear")
    net = hamode.HamiltonianNet(field, 1.0)
    assert not fused_applies(net.field, net.integrator)


@pytest.mark.parametrize("kind,name", list(cases(fused_reversible_rules())))
def test_reversible_matches_backprop_64_layers(kind, name):
    field = make(kind, 64)
    y0 = torch.randn(5, 8, dtype=F64)
    out_b, g_b = _run(field, name, y0, fast=True, gradient="backprop", substeps=1)
    out_r, g_r = _run(field, name, y0, fast=True, gradient="reversible", substeps=1)
    assert torch.equal(out_b, out_r)
    _assert_close(g_b, g_r, 1e-9)


@pytest.mark.parametrize("name", fused_reversible_rules())
def test_reconstruction_error_256_layers_float64(name):
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=8, n_layers=256, dtype=F64)
    net = hamode.HamiltonianNet(field, t_end=25.6, integrator=name)
    y0 = torch.randn(16, 8, dtype=F64)
    rule = net.integrator
    if rule.copies == 1:
        assert (reconstruct(net, net(y0)) - y0).abs().max().item() <= 1e-10
    else:  # the rule's whole state (the pair (y, z)) is rebuilt from the whole final state
        end = hamode.engines.fused_forward(hamode.engines.FusedSpec(field, rule, net.schedule, True), rule.lift(y0))
        assert (reconstruct(net, end) - rule.lift(y0)).abs().max().item() <= 1e-10
        with pytest.raises(ValueError, match="carries a second state"):
            reconstruct(net, net(y0))


def test_reconstruction_error_float32_growth():
    """float32 drift of the reversible reconstruction (H2, h = 0.1, default init; README table):
    measured ~6e-7 at 16 layers, 1.4e-6 at 64, 1.8e-5 at 256, 7e-3 at 1024 (the inverse flow amplifies
    rounding, so it grows faster than linearly). Bounds: 1e-5 at 64 layers, 5e-2 at 1024."""
    torch.manual_seed(0)
    errors = {}
    for L in (64, 1024):
        field = hamode.make_field("H2", dim=8, n_layers=L)
        net = hamode.HamiltonianNet(field, t_end=0.1 * L, integrator="leapfrog")
        y0 = torch.randn(64, 8)
        errors[L] = (reconstruct(net, net(y0)) - y0).abs().max().item()
    assert errors[64] <= 1e-5 and errors[1024] <= 5e-2, errors
    assert errors[64] < errors[1024]


def _saved_bytes(field, gradient, name="leapfrog"):
    net = hamode.HamiltonianNet(field, t_end=0.1 * field.n_layers, integrator=name, gradient=gradient)
    y0 = torch.randn(32, 8, dtype=F64, requires_grad=True)
    with SavedBytes(exclude=field.parameters()) as saved:
        out = net(y0)
    out.sum().backward()
    return saved.bytes


def test_reversible_saved_bytes_flat_in_depth():
    rev16, rev256 = _saved_bytes(make("H2", 16), "reversible"), _saved_bytes(make("H2", 256), "reversible")
    assert rev256 <= 1.2 * rev16, (rev16, rev256)
    bp16, bp256 = _saved_bytes(make("H2", 16), "backprop"), _saved_bytes(make("H2", 256), "backprop")
    assert bp256 > 10 * bp16  # control: backprop keeps every step's tape


def test_inplace_change_between_forward_and_backward_is_caught():
    field = make("H2", 3)
    net = hamode.HamiltonianNet(field, 0.3)
    out = net(torch.randn(2, 8, dtype=F64, requires_grad=True))
    with torch.no_grad():
        field.Kp.add_(1.0)
    with pytest.raises(RuntimeError, match="modified in place between the forward and the backward"):
        out.sum().backward()


def test_gradcheck_fused():
    for name in ("rk4", "yoshida4"):
        field = make("H2", 2)
        names, params = zip(*field.named_parameters())
        net = hamode.HamiltonianNet(field, 0.4, name)

        def fn(y, *ps, net=net, names=names):
            return torch.func.functional_call(net, {f"field.{n}": p for n, p in zip(names, ps)}, (y,))

        assert torch.autograd.gradcheck(fn, (torch.randn(2, 8, dtype=F64, requires_grad=True), *params))


@pytest.mark.parametrize("kind,name", [("H1_learnJ", "rk4"), ("H2_learnX", "leapfrog"), ("MS1", "yoshida4")])
@pytest.mark.parametrize("weights", ["piecewise", "constant"])
def test_parameter_gradients_formed_in_small_batches(kind, name, weights, monkeypatch):
    """The backward flushes parameter gradients in batches of layers (bounded memory); force one layer a batch."""
    import hamode.engines.fused

    field = make(kind, 9, weights=weights)
    y0 = torch.randn(4, 8, dtype=F64)
    _, whole = _run(field, name, y0, fast=True)
    monkeypatch.setattr(hamode.engines.fused, "FACTOR_BUDGET_BYTES", 1)
    _, chunked = _run(field, name, y0, fast=True)
    _, reference = _run(field, name, y0, fast=False)
    _assert_close(whole, chunked, 1e-12)
    _assert_close(reference, chunked, 1e-10)


@pytest.mark.parametrize("kind", ["H1_learnJ", "H2", "MS2"])
def test_weights_follow_updates_dtype_and_repeated_passes(kind):
    """The per-layer weight views are kept across passes: every pass must still see its current weights."""
    field = make(kind, 5)
    y0 = torch.randn(4, 8, dtype=F64)
    name = "leapfrog" if field.separable else "rk4"
    for _ in range(2):  # an optimiser step between passes
        out, grads = _run(field, name, y0, fast=True)
        ref_out, ref_grads = _run(field, name, y0, fast=False)
        _assert_close([out], [ref_out], 1e-12)
        _assert_close(grads, ref_grads, 1e-10)
        with torch.no_grad():
            for p in field.parameters():
                p.add_(0.1 * torch.randn_like(p))
    # two forwards, one backward through both: each pass's backward uses its own (equal) weights
    net = hamode.HamiltonianNet(field, 0.5, name, fast=True)
    y = y0.clone().requires_grad_(True)
    (net(y).sum() + net(2 * y).sum()).backward()
    g_fast = y.grad.clone()
    y.grad = None
    net.fast = False
    (net(y).sum() + net(2 * y).sum()).backward()
    _assert_close([g_fast], [y.grad], 1e-10)
    # another dtype: fresh buffers
    field.float()
    net.fast = True
    out32 = net(y0.float())
    net.fast = False
    assert torch.allclose(out32, net(y0.float()), atol=1e-5)


LARGE_ROWS = 32_800  # (32 800, 8): products of 98 400 elements and more, past the engine's in-place thresholds


@pytest.fixture(params=["native", "torch"])
def kernels(request, monkeypatch):
    """Wide states run on hamode.native's kernels where a C compiler exists; "torch" turns them off, for the torch
    path's in-place update, activation backward and tiled bias."""
    monkeypatch.setenv("HAMODE_NATIVE", "1" if request.param == "native" else "0")
    return request.param


@pytest.mark.parametrize("kind", FIELDS)
def test_fused_matches_reference_on_large_states(kind, kernels):
    # from 65 536 elements the update and the activation's backward are written over the fresh product and a bias of
    # few columns is added through a wide view with the bias tiled (or all of it in the native kernels): the same
    # numbers as the reference path
    field = make(kind, 2)
    name = field.default_integrator
    y0 = torch.randn(LARGE_ROWS, 8, dtype=F64)
    out_r, g_r = _run(field, name, y0, fast=False, substeps=1)
    out_f, g_f = _run(field, name, y0, fast=True, substeps=1)
    assert ((out_r - out_f).abs().max() / out_r.abs().max()).item() <= 1e-12
    _assert_close(g_r, g_f, 1e-10)


@pytest.mark.parametrize("activation", hamode.list_activations())
@pytest.mark.parametrize("kind", ["H1_J1", "H2"])
def test_every_activation_backward_in_place_on_large_states(kind, activation, kernels):
    torch.manual_seed(0)
    field = hamode.make_field(kind, dim=8, n_layers=2, activation=activation, dtype=F64)
    y0 = torch.randn(LARGE_ROWS, 8, dtype=F64)
    out_r, g_r = _run(field, field.default_integrator, y0, fast=False, substeps=1)
    out_f, g_f = _run(field, field.default_integrator, y0, fast=True, substeps=1)
    assert ((out_r - out_f).abs().max() / out_r.abs().max()).item() <= 1e-12
    _assert_close(g_r, g_f, 1e-10)


@pytest.mark.parametrize("rows,n", [(78_400, 8), (78_400, 4), (78_401, 8), (100, 8), (131_074, 3), (70_000, 40)])
def test_add_bias_equals_the_broadcast_add(rows, n):
    from hamode.fields.base import add_bias_

    z, b = torch.randn(rows, n, dtype=F64), torch.randn(n, dtype=F64)
    expected = z + b
    out = add_bias_(z, b)
    assert out is z and torch.equal(out, expected)  # in place, and the same additions: bit-equal
