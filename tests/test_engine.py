"""Engine v2: the default (fused) path composes with PyTorch and never returns a silently wrong number.

torch.compile, torch.func transforms, autocast, double backward, in-place changes between forward
and backward, a discretisation changed between forward and backward, a field shared by two nets,
atomic set_integrator, the derived fused contract, user-declared integrators and the bound.
"""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import F64, field_for, log_slope

import hamode
from hamode.diagnostics import backward_sensitivity, sensitivity_norms, sensitivity_upper_bound
from hamode.engines import fused_applies
from hamode.fields.base import Field, SeparableMixin

CASES = [("H2", "symplectic_euler"), ("H2", "leapfrog"), ("H1_J1", "rk4"), ("MS1", "yoshida4")]


def _net(arch, name, n_layers=6, dtype=F64, gradient="backprop", fast=True, seed=0, **kw):
    torch.manual_seed(seed)
    field = hamode.make_field(arch, dim=4, n_layers=n_layers, dtype=dtype, **kw)
    return hamode.HamiltonianNet(field, 0.3 * n_layers, name, gradient=gradient, fast=fast)


def _grads(net, y0):
    y = y0.clone().requires_grad_(True)
    out = net(y)
    grads = torch.autograd.grad((out.sin().sum()), [y, *net.field.parameters()])
    return out.detach(), grads


def _rel(a, b):
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-30)).item()


# ------------------------------------------------------------------------------------------ torch.compile
@pytest.mark.parametrize("gradient", ["backprop", "reversible"])
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_torch_compile_matches_eager(backend, gradient):
    """The issue's case: H2, 16 layers, T = 8, symplectic Euler, float32 (was off by 8.5, gradients by 2x)."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=4, n_layers=16)
    net = hamode.HamiltonianNet(field, 8.0, "symplectic_euler", gradient=gradient)
    assert fused_applies(net.field, net.integrator, reversible=gradient == "reversible")
    y0 = torch.randn(5, 4)
    out, grads = _grads(net, y0)
    out_c, grads_c = _grads(torch.compile(net, backend=backend), y0)
    assert _rel(out_c, out) <= 1e-4
    for a, b in zip(grads_c, grads):
        assert _rel(a, b) <= 1e-4


def test_import_hamode_does_not_load_dynamo_and_compile_still_guards_the_fused_engine():
    """The compile guard is applied lazily (importing torch._dynamo cost ~1 s of `import hamode`); a net whose first
    call is inside torch.compile still runs the fused engine eagerly and gives the eager numbers."""
    import subprocess
    import sys

    code = (
        "import sys, torch, hamode\n"
        "assert 'torch._dynamo' not in sys.modules, 'dynamo imported by hamode'\n"
        "torch.manual_seed(0)\n"
        "net = hamode.HamiltonianNet(hamode.make_field('H2', dim=4, n_layers=16), 8.0, 'symplectic_euler')\n"
        "y = torch.randn(5, 4, requires_grad=True)\n"
        "out_c = torch.compile(net, backend='aot_eager')(y); out_c.sum().backward(); g_c = y.grad.clone()\n"
        "y.grad = None; out = net(y); out.sum().backward()\n"
        "assert float((out_c - out).abs().max() / out.abs().max()) <= 1e-4\n"
        "assert float((g_c - y.grad).abs().max() / y.grad.abs().max()) <= 1e-4\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize("arch", ["H1_J1", "ConvH1_J1"])
@pytest.mark.parametrize("rule,gradient", [("implicit_midpoint", "backprop"), ("gauss_legendre4", "reversible")])
def test_torch_compile_of_implicit_rules_on_the_reference_path(arch, rule, gradient):
    """The implicit solve is eager (data-dependent iterations): torch.compile of a fast=False net ran it through
    dynamo and crashed ("Unknown format code 'g'"); it now runs eagerly behind a graph break, same numbers."""
    torch._dynamo.reset()
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=4, n_layers=3, dtype=F64)
    net = hamode.HamiltonianNet(field, 0.6, rule, fast=False, gradient=gradient)
    y0 = torch.randn(2, 4, dtype=F64) if arch == "H1_J1" else torch.randn(2, 4, 5, 5, dtype=F64)
    out, grads = _grads(net, y0)
    out_c, grads_c = _grads(torch.compile(net, backend="aot_eager"), y0)
    assert _rel(out_c, out) <= 1e-12
    for a, b in zip(grads_c, grads):
        assert _rel(a, b) <= 1e-12


def test_torch_compile_of_a_lightning_module():
    from hamode.models import Toy2DClassifier
    from lightning_modules import HDNNClassifier

    torch._dynamo.reset()
    torch.manual_seed(0)
    model = HDNNClassifier(net=Toy2DClassifier("H2", dim=4, n_layers=6, h=0.5))
    x = torch.randn(7, 2)
    out = model(x)
    compiled = torch.compile(model, backend="aot_eager")
    assert _rel(compiled(x), out) <= 1e-4
    compiled(x).sum().backward()
    g_c = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model(x).sum().backward()
    for a, p in zip(g_c, model.parameters()):
        assert _rel(a, p.grad) <= 1e-4


# ------------------------------------------------------------------------------------------ torch.func
@pytest.mark.parametrize(
    "arch,name,gradient",
    [
        (arch, name, gradient)
        for arch, name in CASES
        for gradient in ("backprop", "reversible")
        if gradient == "backprop" or hamode.get_integrator(name).reversible
    ],
)
def test_torch_func_transforms_equal_reference(arch, name, gradient):
    from torch.func import functional_call, grad, jacfwd, jacrev, vmap

    net = _net(arch, name, gradient=gradient)
    ref = hamode.HamiltonianNet(net.field, net.t_end, name, fast=False)
    x = torch.randn(3, 4, dtype=F64)
    transforms = {
        "vmap": lambda m: vmap(m)(x),
        "jacrev": lambda m: vmap(jacrev(m))(x),
        "jacfwd": lambda m: vmap(jacfwd(m))(x),
        "grad": lambda m: vmap(grad(lambda z: m(z).pow(2).sum()))(x),
    }
    for what, run in transforms.items():
        assert _rel(run(net), run(ref)) <= 1e-10, what
    # gradients with respect to the parameters through functional_call
    params = dict(net.named_parameters())

    def loss(p, m):
        return functional_call(m, p, (x,)).pow(2).sum()

    g_f, g_r = grad(loss)(params, net), grad(loss)(params, ref)
    for k in params:
        assert _rel(g_f[k], g_r[k]) <= 1e-10, k


def test_forward_mode_ad_equals_reference():
    from torch.autograd import forward_ad

    net = _net("H2", "leapfrog")
    x, v = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    with forward_ad.dual_level():
        tangent = forward_ad.unpack_dual(net(forward_ad.make_dual(x, v))).tangent
    jac = torch.func.vmap(torch.func.jacrev(hamode.HamiltonianNet(net.field, net.t_end, "leapfrog", fast=False)))(x)
    assert _rel(tangent, torch.einsum("bij,bj->bi", jac, v)) <= 1e-10


# ------------------------------------------------------------------------------------------ autocast
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("gradient", ["backprop", "reversible"])
def test_autocast_runs_the_flow_in_the_parameters_dtype(dtype, gradient):
    net = _net("H2", "symplectic_euler", dtype=torch.float32, gradient=gradient)
    stem = torch.nn.Linear(3, 4)
    x = torch.randn(8, 3)
    with torch.autocast(x.device.type, dtype=dtype):
        z = stem(x)
        assert z.dtype == dtype  # the layer before the H-DNN runs in low precision...
        out = net(z)
    assert out.dtype == torch.float32  # ...the ODE solve in the parameters' dtype
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in net.field.parameters())
    with torch.no_grad():
        assert torch.equal(out, net(z.float()))


# ------------------------------------------------------------------------------------------ double backward
@pytest.mark.parametrize(
    "arch,name,gradient,weights",
    [
        ("H2", "leapfrog", "backprop", "piecewise"),
        ("H2", "leapfrog", "reversible", "piecewise"),
        ("H1_J1", "rk4", "backprop", "piecewise"),
        ("H2", "symplectic_euler", "reversible", "linear"),  # the reference reversible Function
    ],
)
def test_create_graph_gives_reference_second_derivatives(arch, name, gradient, weights):
    net = _net(arch, name, gradient=gradient, weights=weights)
    ref = hamode.HamiltonianNet(net.field, net.t_end, name, fast=False)
    x, v = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)

    def hvp_and_penalty(m):
        y = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(y).pow(2).sum(), y, create_graph=True)
        (hv,) = torch.autograd.grad((g * v).sum(), y, retain_graph=True)
        penalty = g.pow(2).sum()  # a gradient penalty: differentiate it with respect to the parameters
        pg = torch.autograd.grad(penalty, list(m.field.parameters()))
        return hv, pg

    hv, pg = hvp_and_penalty(net)
    hv_r, pg_r = hvp_and_penalty(ref)
    assert _rel(hv, hv_r) <= 1e-10
    for a, b in zip(pg, pg_r):
        assert _rel(a, b) <= 1e-10


# ------------------------------------------------------------------------------- forward/backward consistency
PASSES = [("backprop", "piecewise"), ("reversible", "piecewise"), ("reversible", "linear")]


@pytest.mark.parametrize("gradient,weights", PASSES)
@pytest.mark.parametrize("what", ["parameter", "buffer"])
def test_in_place_change_between_forward_and_backward_raises(what, gradient, weights):
    torch.manual_seed(0)
    field = hamode.SeparableField(4, 5, X=torch.eye(2, dtype=F64), weights=weights, dtype=F64)
    net = hamode.HamiltonianNet(field, 1.0, "leapfrog", gradient=gradient)
    out = net(torch.randn(3, 4, dtype=F64, requires_grad=True))
    with torch.no_grad():
        (field.Kp if what == "parameter" else field.X_matrix).mul_(1.5)
    name = "Kp" if what == "parameter" else "X_matrix"
    with pytest.raises(RuntimeError, match=rf"{name} of the field SeparableField was modified in place"):
        out.sum().backward()


def test_in_place_buffer_change_is_caught_on_the_reference_path_too():
    torch.manual_seed(0)
    field = hamode.make_field("H1_J1", dim=4, n_layers=3, dtype=F64)
    net = hamode.HamiltonianNet(field, 1.0, "rk4", fast=False)
    out = net(torch.randn(3, 4, dtype=F64, requires_grad=True))
    with torch.no_grad():
        field.J_matrix.mul_(2.0)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("gradient", ["backprop", "reversible"])
@pytest.mark.parametrize("weights", ["piecewise", "linear"])
def test_discretisation_changed_between_forward_and_backward(gradient, weights):
    """The backward gives the gradient of the forward that ran (the issue: 0.38 off on a gradient of 3.3)."""
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=4, n_layers=6, weights=weights, init="normal", dtype=F64)
    y0 = torch.randn(3, 4, dtype=F64)
    net = hamode.HamiltonianNet(field, 2.0, "leapfrog", substeps=2, gradient=gradient)
    expected = _grads(net, y0)[1]
    y = y0.clone().requires_grad_(True)
    out = net(y)
    other = "backprop" if gradient == "reversible" else "reversible"
    net.set_integrator("symplectic_euler", substeps=3, gradient=other)
    got = torch.autograd.grad(out.sin().sum(), [y, *field.parameters()])
    for a, b in zip(got, expected):
        assert _rel(a, b) <= 1e-12


def test_set_integrator_is_atomic():
    net = _net("H2", "leapfrog")
    before = (net.integrator_name, net.substeps, net.gradient, net.schedule)
    bad = [
        dict(integrator="nope", substeps=5),
        dict(integrator="rk4", substeps=5, gradient="reversible"),
        dict(integrator="leapfrog", substeps=0),
        dict(integrator="leapfrog", substeps=5, gradient="sideways"),
        dict(integrator="torchdiffeq:dopri5", substeps=5, gradient="reversible"),
    ]
    for kwargs in bad:
        with pytest.raises((ValueError, TypeError)):
            net.set_integrator(**kwargs)
        assert (net.integrator_name, net.substeps, net.gradient, net.schedule) == before, kwargs
    with pytest.raises(ValueError, match="needs an integrator with an exact inverse"):
        net.set_integrator("rk4", gradient="reversible")
    net.set_integrator("rk4", substeps=2)
    assert (net.integrator_name, net.substeps) == ("rk4", 2)


@pytest.mark.parametrize("integrator", ["leapfrog", "rk4", "torchdiffeq:rk4", "torchdiffeq:dopri5"])
@pytest.mark.parametrize("weights", ["piecewise", "linear"])
def test_field_shared_by_two_nets(integrator, weights):
    """A second net on the same field with another t_end does not change the first net's output (was 0.72 off)."""
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=4, n_layers=5, weights=weights, init="normal", dtype=F64)
    y0 = torch.randn(3, 4, dtype=F64)
    first = hamode.HamiltonianNet(field, 1.0, integrator)
    before = first(y0)
    second = hamode.HamiltonianNet(field, 3.0, integrator)
    other = second(y0)
    assert torch.equal(first(y0), before)
    assert (other - before).abs().max() > 1e-3
    assert torch.equal(second(y0), other)


def test_two_pending_forwards_backward_independently():
    net = _net("H2", "leapfrog")
    a, b = torch.randn(3, 4, dtype=F64), torch.randn(3, 4, dtype=F64)
    ga, gb = _grads(net, a)[1], _grads(net, b)[1]
    ya, yb = a.clone().requires_grad_(True), b.clone().requires_grad_(True)
    oa, ob = net(ya), net(yb)
    got_b = torch.autograd.grad(ob.sin().sum(), [yb, *net.field.parameters()])
    got_a = torch.autograd.grad(oa.sin().sum(), [ya, *net.field.parameters()])
    for x, y in zip((*got_a, *got_b), (*ga, *gb)):
        assert _rel(x, y) <= 1e-14


def test_fused_buffer_sets_belong_to_one_pass_and_are_returned():
    """The engine keeps each field's free buffer sets (not the field): one set reused by every pass, one per
    pending pass, none carried into a copy or a pickle of the field."""
    import copy
    import pickle

    from hamode.engines.buffers import free_buffer_sets

    net = _net("H2", "leapfrog")
    y0 = torch.randn(3, 4, dtype=F64)
    for _ in range(4):
        _grads(net, y0)
    assert free_buffer_sets(net.field) == 1  # one set, reused by every pass
    pending = [net(y0.clone().requires_grad_(True)) for _ in range(3)]
    assert free_buffer_sets(net.field) == 0  # each pending pass holds its own
    del pending
    assert free_buffer_sets(net.field) == 3
    assert free_buffer_sets(copy.deepcopy(net.field)) == 0
    assert free_buffer_sets(pickle.loads(pickle.dumps(net.field))) == 0
    assert not any(isinstance(v, dict) and v and isinstance(next(iter(v)), tuple) for v in vars(net.field).values())


def test_continuous_statistics_are_returned_and_summed_over_layers():
    torch.manual_seed(0)
    field = hamode.make_field("H1_J1", dim=4, n_layers=4, dtype=F64)
    net = hamode.HamiltonianNet(field, 2.0, "torchdiffeq:rk4", substeps=3)
    solution = net.solve(torch.randn(2, 4, dtype=F64))
    assert solution.stats["nfe"] == 4 * 4 * 3  # 4 evaluations, 12 steps
    backward_sensitivity(net, torch.randn(2, 4, dtype=F64))  # one solve per layer
    assert net.stats["nfe"] == 4 * 4 * 3
    discrete = hamode.HamiltonianNet(field, 2.0, "rk38", substeps=3).solve(torch.randn(2, 4, dtype=F64))
    assert discrete.stats == {"nfe": 48.0, "steps": 12}


# ------------------------------------------------------------------------------------------ fused contract
class _Oscillator(SeparableMixin, Field):
    """A separable field without the fused methods."""

    def __init__(self):
        super().__init__(2, 3)

    def _dp(self, w, q):
        return -q

    def _dq(self, w, p):
        return p


def test_supports_fused_is_derived_from_the_methods():
    assert all(
        hamode.architecture_info(a).field_class.supports_fused for a in hamode.list_architectures()
    )  # every architecture provides the fused contract
    assert not _Oscillator.supports_fused and not hamode.AutogradHamiltonianField.supports_fused
    net = hamode.HamiltonianNet(_Oscillator().double(), 1.0, "leapfrog")
    assert not fused_applies(net.field, net.integrator)
    y0 = torch.randn(2, 2, dtype=F64, requires_grad=True)
    net(y0).sum().backward()  # the reference path, automatically
    with pytest.raises(TypeError, match=r"sets supports_fused = True but lacks the fused methods fused_weights"):

        class _Claims(_Oscillator):
            supports_fused = True


def test_all_hamode_integrators_support_fused():
    """Every registered rule has a fused step (from its declaration), the implicit Gauss rules included."""
    assert all(hamode.get_integrator(name).supports_fused for name in hamode.list_integrators())


# ------------------------------------------------------------------------------------------ user integrators
def test_user_declared_splitting_and_runge_kutta_methods():
    """A user's own methods, declared as hamode's are: they get the reference and fused paths, the inverse,
    the order and the symplecticity without writing a step."""

    @hamode.register_integrator("_test_pefrl")
    class PEFRL(hamode.SplittingMethod):
        """Omelyan, Mryglod & Folk 2002 position-extended Forest-Ruth-like method. Order 4."""

        order = 4
        xi, lam, chi = 0.1786178958448091, -0.2123418310626054, -0.06626458266981849
        coefficients = (
            (xi, 0.5 * (1 - 2 * lam)),
            (chi, lam),
            (1 - 2 * (chi + xi), lam),
            (chi, 0.5 * (1 - 2 * lam)),
            (xi, 0.0),
        )

    @hamode.register_integrator("_test_ralston")
    class Ralston(hamode.RungeKutta):
        """Ralston's second-order method. Order 2."""

        order = 2
        a = ((), (2 / 3,))
        b = (0.25, 0.75)

    try:
        assert {"_test_pefrl", "_test_ralston"} <= set(hamode.list_integrators())
        assert PEFRL.evaluations == 4.5 and PEFRL.symplectic and PEFRL.reversible
        assert Ralston.stage_offsets == (0.0, 2 / 3) and Ralston.evaluations == 2
        for name in ("_test_pefrl", "_test_ralston"):
            field = field_for(name, n_layers=4)
            y0 = torch.randn(3, 4, dtype=F64)
            fast = hamode.HamiltonianNet(field, 1.0, name, substeps=2)
            slow = hamode.HamiltonianNet(field, 1.0, name, substeps=2, fast=False)
            assert fused_applies(fast.field, fast.integrator)
            (out_f, g_f), (out_r, g_r) = _grads(fast, y0), _grads(slow, y0)
            assert _rel(out_f, out_r) <= 1e-12
            for a, b in zip(g_f, g_r):
                assert _rel(a, b) <= 1e-10
            ref = hamode.HamiltonianNet(field, 1.0, "rk4", substeps=256)(y0)
            ks = [2, 4, 8, 16]
            errors = [(hamode.HamiltonianNet(field, 1.0, name, substeps=k)(y0) - ref).norm().item() for k in ks]
            order = hamode.get_integrator(name).order
            assert abs(log_slope([1 / k for k in ks], errors) - order) <= 0.3, (name, errors)
    finally:
        hamode.integrators.unregister_integrator("_test_pefrl")
        hamode.integrators.unregister_integrator("_test_ralston")


def test_declarations_are_checked():
    with pytest.raises(ValueError, match="kick weights must sum to 1"):

        class _Bad(hamode.SplittingMethod):
            order = 1
            coefficients = ((0.5, 1.0),)

    with pytest.raises(ValueError, match="b must sum to 1"):

        class _BadRK(hamode.RungeKutta):
            order = 1
            b = (0.5,)

    with pytest.raises(ValueError, match="explicit"):

        class _Implicit(hamode.RungeKutta):
            order = 1
            a = ((0.5,),)
            b = (1.0,)

    with pytest.raises(ValueError, match=r"c\[1\] = 0.3 must equal the row sum"):

        class _BadC(hamode.RungeKutta):
            order = 1
            a = ((), (0.5,))
            b = (0.0, 1.0)
            c = (0.0, 0.3)

    with pytest.raises(TypeError, match="must state its order"):
        hamode.register_integrator("_test_no_order")(type("NoOrder", (hamode.RungeKutta,), {"b": (1.0,)}))


def test_known_coefficients():
    """The declarations against their closed forms: torchdiffeq's rk4 is Kutta's 3/8 rule, Yoshida-4 merges
    its half-kicks, the stage times of the negative-coefficient methods leave [0, 1]."""
    import torchdiffeq

    field = field_for("rk38", n_layers=1)
    y0 = torch.randn(3, 4, dtype=F64)
    net = hamode.HamiltonianNet(field, 0.7, "rk38", substeps=3)
    tde = torchdiffeq.odeint(net.rhs, y0, net.schedule.times(F64), method="rk4")[-1]
    assert _rel(net(y0), tde) <= 1e-14
    y4 = hamode.get_integrator("yoshida4")
    assert len(y4.operations) == 7 and y4.evaluations == 3.5
    assert min(y4.stage_offsets) < 0 < 1 < max(y4.stage_offsets)
    assert hamode.get_integrator("yoshida6").evaluations == 7.5
    assert hamode.get_integrator("blanes_moan4").evaluations == 6.5
    assert hamode.get_integrator("suzuki4").evaluations == 5.5


# ------------------------------------------------------------------------------------------ the bound
@pytest.mark.parametrize("n_layers", [1, 3])
@pytest.mark.parametrize("weights", ["linear", "piecewise"])
@pytest.mark.parametrize("name", hamode.list_integrators())
def test_sensitivity_upper_bound_holds(name, weights, n_layers):
    """The bound holds at every boundary for every integrator, also when the weights change inside a layer (it
    read the weights at the step's start only: bound 1.0 against measured 6.5-36 for linear weights)."""
    torch.manual_seed(2)
    field = field_for(name, n_layers=n_layers, weights=weights)
    if weights == "linear":
        with torch.no_grad():
            for p in field.parameters():
                p[0].zero_()  # the field vanishes at t = 0 and grows inside the first layer
    for substeps in (1, 3):
        net = hamode.HamiltonianNet(field, 0.8 * n_layers, name, substeps=substeps)
        bound = sensitivity_upper_bound(net)
        norms = sensitivity_norms(backward_sensitivity(net, torch.randn(16, 4, dtype=F64)))["norm_max"]
        assert (norms <= bound * (1 + 1e-9)).all(), (name, substeps, norms, bound)
        if substeps == 3:
            assert norms[0] > 1.05  # a nontrivial map


def test_bad_grid_schedule_and_declaration_arguments():
    torch.manual_seed(0)
    field = hamode.make_field("H2", dim=4, n_layers=3, weights="linear", dtype=F64)
    y = torch.randn(2, 4, dtype=F64)
    with pytest.raises(
        TypeError, match=r"SeparableField.forward\(t, y\) looks the layer up from t and needs the layer grid"
    ):
        field(0.1, y)
    with pytest.raises(ValueError, match="grid has 5 layers but the field has n_layers=3"):
        field(0.1, y, hamode.LayerGrid(5, 1.0))
    with pytest.raises(TypeError, match=r"grid must be a hamode\.LayerGrid, got float"):
        field.hamiltonian(0.1, y, 1.0)
    with pytest.raises(RuntimeError, match=r"weights='linear': evaluating layer 1 at a time t needs the net's grid"):
        field.layer(1).dp(0.5, y[:, 2:])
    grid = hamode.LayerGrid(3, 1.5)
    assert torch.equal(field(0.1, y, grid), hamode.HamiltonianNet(field, 1.5).rhs(0.1, y))
    with pytest.raises(TypeError, match="grid must be a LayerGrid, got int"):
        hamode.Schedule(3, 1)
    with pytest.raises(ValueError, match="substeps must be >= 1, got 0"):
        hamode.Schedule(grid, 0)
    with pytest.raises(AttributeError, match="immutable"):
        hamode.Schedule(grid, 2).substeps = 3
    with pytest.raises(ValueError, match="without ':'"):
        hamode.register_integrator("torchdiffeq:mine")
    with pytest.raises(ValueError, match="no integrator named 'nope' is registered"):
        hamode.integrators.unregister_integrator("nope")
    rk4 = hamode.get_integrator("rk4")
    with pytest.raises(ValueError, match="rk4 evaluates the field at 4 stage times; got 2 bounds"):
        rk4.growth_bound(0.1, [{"full": torch.tensor(1.0)}] * 2)


# ------------------------------------------------------------------------------------------ functional_call
class _Potential(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(2, 6), torch.nn.Tanh(), torch.nn.Linear(6, 1))

    def forward(self, t, q):
        return self.net(q).squeeze(-1)


def _functional_call_case(kind: str):
    torch.manual_seed(0)
    if kind == "autograd-separable":  # a user Hamiltonian whose potential is a module (direct parameters)
        field = hamode.AutogradSeparableField(lambda t, p: 0.5 * (p * p).sum(-1), _Potential(), dim=4, n_layers=3)
        return field.double(), "leapfrog"
    arch, rule = {"H2": ("H2", "leapfrog"), "H1": ("H1_J1", "rk4"), "implicit": ("H1_J1", "implicit_midpoint")}[
        kind.split("-")[0]
    ]
    weights = "linear" if kind.endswith("linear") else "piecewise"
    return hamode.make_field(arch, dim=4, n_layers=3, weights=weights, dtype=F64), rule


FUNCTIONAL_CALL_CASES = [
    (kind, gradient, fast)
    for kind, modes in (
        ("H2", ("backprop", "reversible")),
        ("H2-linear", ("backprop", "reversible")),
        ("H1", ("backprop",)),
        ("implicit", ("backprop", "reversible")),
        ("autograd-separable", ("backprop", "reversible")),
    )
    for gradient in modes
    for fast in (True, False)
] + [("H1-adjoint", "adjoint", True)]


@pytest.mark.parametrize("matching_versions", [False, True])
@pytest.mark.parametrize("kind,gradient,fast", FUNCTIONAL_CALL_CASES)
def test_functional_call_gradients_are_those_of_the_weights_used(kind, gradient, fast, matching_versions):
    """torch.func.functional_call, then an ordinary backward: the gradients are those of the substituted weights
    on every engine. The fused and reversible backwards compared the module's own weights' version counters with
    the substitutes' (a false "modified in place"), and where the counters matched, rebuilt the states with the
    module's own weights (gradients off by 119-166 %, no error); the adjoint's were off by 100 %."""
    from torch.func import functional_call

    if kind == "H1-adjoint":
        field, rule = hamode.make_field("H1_J1", dim=4, n_layers=3, dtype=F64), "torchdiffeq:rk4"
    else:
        field, rule = _functional_call_case(kind)
    net = hamode.HamiltonianNet(field, 1.2, rule, gradient=gradient, fast=fast)
    subs = {n: (p.detach() * 1.3 + 0.05) for n, p in net.named_parameters()}
    for name, p in net.named_parameters():
        if matching_versions:  # the counters that hid the wrong gradients: equal by chance
            while subs[name]._version < p._version:
                subs[name].add_(0.0)
        subs[name].requires_grad_(True)
    y = torch.randn(3, 4, dtype=F64)
    out = functional_call(net, subs, (y,))
    out.sin().sum().backward()
    reference = copy.deepcopy(net)
    with torch.no_grad():
        for name, p in reference.named_parameters():
            p.copy_(subs[name])
    reference.fast = False
    if gradient == "reversible":
        reference.set_integrator(rule, gradient="backprop")
    expected_out = reference(y)
    expected_out.sin().sum().backward()
    assert _rel(out.detach(), expected_out.detach()) <= 1e-12
    for name, p in reference.named_parameters():
        if p.grad is None:  # a weight the field does not depend on (the potential's last bias)
            assert subs[name].grad is None or not subs[name].grad.any(), name
            continue
        assert _rel(subs[name].grad, p.grad) <= 1e-10, name
