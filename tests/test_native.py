"""hamode.native: the row-wise kernels against torch, their refusals, their build cache, the fused engine on them."""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import F64, image_architectures

import hamode
from hamode import native
from hamode.activations import get_activation, list_activations

pytestmark = [
    pytest.mark.cpu_only,
    pytest.mark.skipif(shutil.which(os.environ.get("CC", "cc")) is None, reason="no C compiler on this machine"),
]

ROWS = 9_001  # past NATIVE_FROM for every shape below, and not a multiple of any block or thread split
TOL = {torch.float64: 1e-13, torch.float32: 2e-6}


def rel(a, b) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


def outputs_and_gradients(field, rule: str, y0: torch.Tensor, fast: bool) -> list[torch.Tensor]:
    """A net of ``field`` (h = 0.3) at ``y0``: its output, and the gradients of ``sum(sin(output))`` with respect to
    ``y0`` and every parameter."""
    net = hamode.HamiltonianNet(field, 0.3, rule, fast=fast)
    y = y0.clone().requires_grad_(True)
    field.zero_grad()
    out = net(y)
    out.sin().sum().backward()
    return [out.detach(), y.grad, *(p.grad.clone() for p in field.parameters())]


def strided(rows: int, k: int, dtype) -> torch.Tensor:
    """(rows, k) with rows 2k + 1 apart: the half of a wider state, as separable fields pass it."""
    return torch.randn(rows, 2 * k + 1, dtype=dtype)[:, 1 : k + 1]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("k,c", [(8, 8), (3, 5), (16, 4), (1, 7), (64, 2)])
@pytest.mark.parametrize(
    "with_base,with_bias,alpha", [(False, False, 1.0), (True, False, 0.3), (False, True, 1.0), (True, True, -2.5)]
)
def test_rowmm_matches_torch(dtype, k, c, with_base, with_bias, alpha):
    rows = max(ROWS, native.NATIVE_FROM // c + 1)
    x = strided(rows, k, dtype)
    W = torch.randn(c, k, dtype=dtype).mT  # a transposed view, as the fields pass K.mT
    base = strided(rows, c, dtype) if with_base else None
    bias = torch.randn(c, dtype=dtype) if with_bias else None
    out = native.rowmm(x, W, alpha, base, bias)
    expected = alpha * (x @ W + (0 if bias is None else bias)) + (0 if base is None else base)
    assert out is not None and out.shape == (rows, c) and out.is_contiguous()
    assert rel(out, expected) <= TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("activation", list_activations())
@pytest.mark.parametrize("k,m", [(8, 8), (3, 5), (4, 16)])
@pytest.mark.parametrize("with_base", [False, True])
def test_rowvjp_sums_matches_torch(dtype, activation, k, m, with_base):
    act = get_activation(activation)
    rows = max(ROWS, native.NATIVE_FROM // k + 1)
    c, y = strided(rows, k, dtype), strided(rows, k, dtype)
    s = act.sigma(torch.randn(rows, m, dtype=dtype))
    W1, W2 = torch.randn(k, m, dtype=dtype), torch.randn(k, m, dtype=dtype).mT
    base = strided(rows, k, dtype) if with_base else None
    done = native.rowvjp_sums(c, W1, s, act.native_code, W2, y, 0.7, base)
    assert done is not None
    out, sc, gy, gs = done
    gz = act.backprop_through_output((c @ W1).contiguous(), s)
    expected = 0.7 * gz @ W2 + (0 if base is None else base)
    assert rel(out, expected) <= TOL[dtype]
    assert rel(sc, s.mT @ c) <= 10 * TOL[dtype]  # sums over thousands of rows: a few more roundings
    assert rel(gy, gz.mT @ y) <= 10 * TOL[dtype]
    assert rel(gs, gz.sum(0)) <= 10 * TOL[dtype]


@pytest.mark.parametrize("threads", [1, 2])
def test_sums_are_deterministic_for_a_thread_count(threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        rows = 40_001
        A, B = torch.randn(rows, 8), torch.randn(rows, 6)
        first, second = native.rowgram(A, B), native.rowgram(A, B)
        assert first is not None and torch.equal(first, second)
        assert rel(first, A.mT @ B) <= 1e-5
        act = get_activation("tanh")
        s = torch.randn(rows, 8).tanh()
        W = torch.randn(6, 8)
        runs = [native.rowvjp_sums(B, W, s, act.native_code, W.mT, B, 0.5, B) for _ in range(2)]
        assert all(torch.equal(a, b) for a, b in zip(*runs))
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_rowgram_matches_torch(dtype):
    A, B = strided(ROWS * 3, 5, dtype), strided(ROWS * 3, 9, dtype)
    out = native.rowgram(A, B)
    assert out is not None and out.shape == (5, 9)
    assert rel(out, A.mT @ B) <= 10 * TOL[dtype]


def test_what_the_kernels_refuse(monkeypatch):
    x, W = torch.randn(ROWS, 8), torch.randn(8, 8)
    assert native.rowmm(x, W) is not None
    assert native.rowmm(x[:100], W) is None  # too few elements: torch's call overhead is lower
    assert native.rowmm(x.bfloat16(), W.bfloat16()) is None  # float32 and float64 only
    assert native.rowmm(x, W.double()) is None  # mixed dtypes
    assert native.rowmm(x.mT.contiguous().mT, W) is None  # rows must have unit stride
    big = torch.randn(ROWS, native.MAX_SIZE + 1)
    assert native.rowmm(big, torch.randn(native.MAX_SIZE + 1, 4)) is None  # larger products stay with torch
    assert native.rowmm(x, W, base=torch.randn(ROWS, 7)) is None  # a base of another shape
    w = W.clone().requires_grad_(True)
    assert native.rowmm(x, w) is None  # autograd would not see the kernel ...
    with torch.no_grad():
        assert native.rowmm(x, w) is not None  # ... unless it is off
    assert native.rowvjp_sums(x, W, x, 5, W, x) is None  # an activation code the kernel does not know
    monkeypatch.setenv("HAMODE_NATIVE", "0")
    assert not native.enabled() and native.rowmm(x, W) is None and native.rowgram(x, x) is None


def test_without_a_compiler_it_warns_once_and_torch_computes(monkeypatch, tmp_path):
    monkeypatch.setenv("HAMODE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "no-such-compiler-hamode")
    x, W = torch.randn(ROWS, 8), torch.randn(8, 8)
    with pytest.warns(RuntimeWarning, match="no C compiler"):
        assert native.rowmm(x, W) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert native.rowmm(x, W) is None  # warned once for this kernel
    # the fused engine then runs on torch's kernels, with the reference path's numbers
    field = hamode.make_field("H1_J1", dim=8, n_layers=2, dtype=F64)
    y0 = torch.randn(ROWS, 8, dtype=F64)
    with pytest.warns(RuntimeWarning, match="no native kernel"):
        fast = hamode.HamiltonianNet(field, 0.2, "euler")(y0)
    ref = hamode.HamiltonianNet(field, 0.2, "euler", fast=False)(y0)
    assert rel(fast, ref) <= 1e-12


def test_a_failing_compiler_is_reported(monkeypatch, tmp_path):
    monkeypatch.setenv("HAMODE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("CC", "false")  # found, but fails
    with pytest.warns(RuntimeWarning, match="failed"):
        assert native.rowmm(torch.randn(4 * ROWS, 3), torch.randn(3, 3)) is None
    assert list(tmp_path.iterdir()) == []  # no half-written object left behind


def test_a_compiler_without_march_native_builds_a_generic_kernel(monkeypatch, tmp_path):
    wrapper = tmp_path / "cc-without-march"
    real = shutil.which(os.environ.get("CC", "cc"))
    wrapper.write_text(
        f'#!/bin/sh\ncase "$*" in *-march=native*) echo "unknown -march" >&2; exit 1;; esac\nexec {real} "$@"\n'
    )
    wrapper.chmod(0o755)
    monkeypatch.setenv("HAMODE_NATIVE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("CC", str(wrapper))
    x, W = torch.randn(4 * ROWS, 6, dtype=F64), torch.randn(6, 2, dtype=F64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # built on the second try: nothing to warn about
        out = native.rowmm(x, W)
    assert out is not None and rel(out, x @ W) <= 1e-13
    assert len(list((tmp_path / "cache").glob("rowmm_double_6x2_*.so"))) == 1


def test_a_built_kernel_is_reused_by_the_next_process(monkeypatch, tmp_path):
    monkeypatch.setenv("HAMODE_NATIVE_CACHE", str(tmp_path))
    assert native.rowmm(torch.randn(4 * ROWS, 5, dtype=F64), torch.randn(5, 3, dtype=F64)) is not None
    (built,) = tmp_path.glob("rowmm_double_5x3_*.so")
    stamp = built.stat().st_mtime_ns
    code = (
        "import torch, hamode.native as n; "
        "print(n.rowmm(torch.randn(36004, 5, dtype=torch.float64), torch.randn(5, 3, dtype=torch.float64)) is not None)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "True"
    assert built.stat().st_mtime_ns == stamp and len(list(tmp_path.iterdir())) == 1  # loaded, not rebuilt


@pytest.mark.parametrize("kind,rule", [("H1_J1", "euler"), ("H2", "symplectic_euler"), ("H2", "leapfrog")])
@pytest.mark.parametrize("activation", list_activations())
@pytest.mark.parametrize("weights", ["piecewise", "constant"])
def test_the_fused_engine_runs_wide_states_on_the_kernels(monkeypatch, kind, rule, activation, weights):
    import hamode.fields.base as base

    calls = {"rowmm": 0, "rowvjp_sums": 0}
    for name in calls:
        original = getattr(base, name)

        def counted(*args, _original=original, _name=name, **kwargs):
            out = _original(*args, **kwargs)
            calls[_name] += out is not None
            return out

        monkeypatch.setattr(base, name, counted)
    torch.manual_seed(0)
    field = hamode.make_field(kind, dim=8, n_layers=3, activation=activation, weights=weights, dtype=F64)
    y0 = torch.randn(2 * ROWS, 8, dtype=F64)

    fused = outputs_and_gradients(field, rule, y0, fast=True)
    assert calls["rowmm"] > 0 and calls["rowvjp_sums"] > 0  # the wide state ran on the kernels
    monkeypatch.setenv("HAMODE_NATIVE", "0")
    for a, b in zip(fused, outputs_and_gradients(field, rule, y0, fast=True)):  # the fused engine on torch's kernels
        assert rel(a, b) <= 1e-12
    for a, b in zip(fused, outputs_and_gradients(field, rule, y0, fast=False)):  # the autograd reference
        assert rel(a, b) <= 1e-12


def test_an_activation_the_kernels_do_not_know_stays_with_torch():
    from hamode.activations import Activation
    from hamode.fields.base import vjp_factors

    tanh = get_activation("tanh")
    mine = Activation(
        "my_tanh", torch.tanh, tanh.antiderivative, tanh.derivative, 1.0, tanh.backprop_through_output, torch.tanh_
    )
    assert mine.native_code is None
    c, y = torch.randn(ROWS, 8, dtype=F64), torch.randn(ROWS, 8, dtype=F64)
    s, W = torch.randn(ROWS, 8, dtype=F64).tanh(), torch.randn(8, 8, dtype=F64)
    out, factors = vjp_factors(mine, c, W, s, W.mT, y, 0.5, c)
    assert len(factors) == 4  # the rows kept: torch's path
    out_native, sums = vjp_factors(tanh, c, W, s, W.mT, y, 0.5, c)
    assert len(sums) == 3 and rel(out_native, out) <= 1e-13


def ulps(got: torch.Tensor, exact: torch.Tensor) -> torch.Tensor:
    """|got - exact| in units of the spacing of got's dtype at |exact| (exact: float64, or mpmath's rounded)."""
    at = exact.abs().to(got.dtype)
    spacing = torch.nextafter(at, torch.tensor(float("inf"), dtype=got.dtype)) - at
    return (got.double() - exact).abs() / spacing.double()


def tanh_inputs(dtype) -> torch.Tensor:
    torch.manual_seed(0)
    scales = (1e-30, 1e-6, 1e-3, 0.1, 0.3, 1.0, 3.0, 8.0, 30.0)
    x = torch.cat([torch.randn(20_000, dtype=torch.float64) * s for s in scales]).to(dtype)
    worst = torch.tensor([4.505090713500977], dtype=dtype)  # float32's worst input (2.498 ulp; the slow test)
    return torch.cat([x, worst, -worst])


def test_tanh_is_within_2_5_ulp_in_float32():
    x = tanh_inputs(torch.float32)
    got = native.tanh_(x.clone())
    assert got is not None
    err = ulps(got, torch.tanh(x.double()))  # torch's float64 tanh (1 ulp of float64): exact for float32
    assert err.max() <= 2.5
    assert err.max() >= 2.0  # the worst input is in the sample: the measure is not blind
    assert err.mean() <= 0.5  # most are correctly rounded


def test_tanh_is_within_2_5_ulp_in_float64():
    mpmath = pytest.importorskip("mpmath")
    mpmath.mp.dps = 40
    x = tanh_inputs(torch.float64)[::9]  # 20 000 inputs
    got = native.tanh_(x.clone())
    exact = torch.tensor([float(mpmath.tanh(mpmath.mpf(v))) for v in x.tolist()], dtype=torch.float64)
    assert ulps(got, exact).max() <= 2.5
    assert ulps(torch.tanh(x), exact).max() <= 1.0  # the measure itself: torch's tanh to 1 ulp


@pytest.mark.slow
def test_tanh_is_within_2_5_ulp_at_every_float32():
    """Every float32 in [0, 10] (beyond it tanh is 1.0 in float32; negative inputs are the same path with the sign)."""
    top = torch.tensor(10.0).view(torch.int32).item()
    worst = 0.0
    for lo in range(0, top + 1, 1 << 24):
        x = torch.arange(lo, min(lo + (1 << 24), top + 1), dtype=torch.int32).view(torch.float32)
        worst = max(worst, ulps(native.tanh_(x.clone()), torch.tanh(x.double())).max().item())
    assert 2.0 <= worst <= 2.5


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_special_values(dtype):
    special = [0.0, -0.0, float("inf"), -float("inf"), float("nan"), 10.0, -21.0, 25.0, -1e300, 1e-300, -1e-40]
    x = torch.tensor(special + [0.5] * native.TANH_FROM, dtype=dtype)
    got = native.tanh_(x.clone())[: len(special)]
    want = torch.tanh(x[: len(special)])
    assert torch.equal(got[:2], want[:2]) and torch.equal(got[:2].signbit(), torch.tensor([False, True]))  # ±0
    assert got[2:4].tolist() == [1.0, -1.0] and got[4].isnan()
    assert abs(got[5] - want[5]) <= 3 * torch.finfo(dtype).eps and got[6:9].tolist() == [-1.0, 1.0, -1.0]
    assert torch.equal(got[9:], want[9:].to(dtype))  # tiny inputs: tanh(x) = x (subnormal float32 included)


def test_tanh_in_place_on_dense_tensors_of_any_memory_format():
    x = torch.randn(16, 8, 24, 24, dtype=F64).to(memory_format=torch.channels_last)
    want = torch.tanh(x)
    out = native.tanh_(x)
    assert out is x and x.is_contiguous(memory_format=torch.channels_last)
    assert rel(x, want) <= 1e-15
    big = torch.randn(2 * native.TANH_FROM + 1, dtype=torch.float32)
    assert native.tanh_(big.clone()) is not None  # odd sizes: the vector loop's remainder


def test_what_tanh_refuses(monkeypatch):
    x = torch.randn(native.TANH_FROM)
    assert native.tanh_(x.clone()) is not None
    assert native.tanh_(x[:-1].clone()) is None  # too few elements: torch's call is cheaper
    assert native.tanh_(x.bfloat16()) is None  # float32 and float64 only
    assert native.tanh_(torch.randn(64, 2 * native.TANH_FROM // 64)[:, ::2]) is None  # not one block of memory
    w = x.clone().requires_grad_(True)
    assert native.tanh_(w) is None  # autograd would not see it ...
    with torch.no_grad():
        assert native.tanh_(w) is not None  # ... unless it is off
    monkeypatch.setenv("HAMODE_NATIVE", "0")
    assert native.tanh_(x.clone()) is None


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_tanh_without_a_compiler_warns_once_and_torch_computes(monkeypatch, tmp_path, dtype):
    monkeypatch.setenv("HAMODE_NATIVE_CACHE", str(tmp_path))
    monkeypatch.setenv("HAMODE_NATIVE_TANH", "1")
    monkeypatch.setenv("CC", "no-such-compiler-hamode")
    x = torch.randn(native.TANH_FROM, dtype=dtype)
    with pytest.warns(RuntimeWarning, match="hamode_tanh"):
        assert native.tanh_(x.clone()) is None
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(get_activation("tanh").sigma_(x.clone()), torch.tanh(x))  # torch's, warned once


@pytest.mark.parametrize("arch", image_architectures())
def test_the_fused_conv_engine_takes_tanh_from_the_kernel(monkeypatch, arch):
    calls = []
    original = native.tanh_

    def counted(x):
        out = original(x)
        calls.append(out is not None)
        return out

    monkeypatch.setattr(native, "tanh_", counted)
    monkeypatch.setenv("HAMODE_NATIVE_TANH", "1")  # whatever this machine's processor
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=8, n_layers=2, dtype=F64)
    y0 = torch.randn(6, 8, 24, 24, dtype=F64)  # a ConvH2 half-evaluation: 4608 elements, past TANH_FROM

    rule = "symplectic_euler" if field.separable else "rk4"
    fused = outputs_and_gradients(field, rule, y0, fast=True)
    assert any(calls)  # the wide state's σ ran on the kernel
    for a, b in zip(fused, outputs_and_gradients(field, rule, y0, fast=False)):  # the reference: torch's tanh
        assert rel(a, b) <= 1e-12


@pytest.mark.parametrize(
    ("choice", "vendor", "mkl", "expected"),
    [
        ("auto", "AuthenticAMD", True, True),  # MKL's generic path: hamode's kernel
        ("auto", "GenuineIntel", True, False),  # MKL's fast path: torch's
        ("auto", "AuthenticAMD", False, False),  # torch without MKL computes tanh itself
        ("1", "GenuineIntel", True, True),
        ("0", "AuthenticAMD", True, False),
    ],
)
def test_which_tanh_the_fused_engine_uses(monkeypatch, choice, vendor, mkl, expected):
    monkeypatch.setenv("HAMODE_NATIVE_TANH", choice)
    monkeypatch.setattr(native, "cpu_vendor", lambda: vendor)
    monkeypatch.setattr(torch.backends.mkl, "is_available", lambda: mkl)
    assert native.use_tanh() is expected
    calls = []
    monkeypatch.setattr(native, "tanh_", lambda x: calls.append(x) or torch.tanh_(x))
    x = torch.randn(native.TANH_FROM)
    assert torch.equal(get_activation("tanh").sigma_(x.clone()), torch.tanh(x))
    assert bool(calls) is expected


def test_a_bad_native_tanh_choice_is_refused(monkeypatch):
    monkeypatch.setenv("HAMODE_NATIVE_TANH", "yes")
    with pytest.raises(ValueError, match="HAMODE_NATIVE_TANH must be auto, 0 or 1"):
        native.use_tanh()


def test_the_cpu_vendor_is_read():
    vendor = native.cpu_vendor()
    assert isinstance(vendor, str) and native.cpu_info("no such key") == ""
    if sys.platform.startswith("linux") and platform.machine() == "x86_64":
        assert vendor in ("GenuineIntel", "AuthenticAMD", "HygonGenuine", "CentaurHauls")


# ---------------------------------------------------------------- the bfloat16 passes of reduced-precision image fields
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_bf16_passes_equal_the_torch_calls_they_replace(layout):
    torch.manual_seed(0)
    shape = (4, 8, 20, 21)  # 13 440 elements, an odd count: the vector loops' remainder
    z, x = ((torch.randn(shape) * 3).contiguous(memory_format=layout).bfloat16() for _ in range(2))
    base = torch.randn(shape).contiguous(memory_format=layout)
    s, s16 = native.tanh_bf16(z)
    assert (s.dtype, s16.dtype) == (torch.float32, torch.bfloat16) and s.stride() == s16.stride() == z.stride()
    assert torch.equal(s, native.tanh_(z.float()))  # hamode's tanh of the widened product
    assert torch.equal(s16, s.bfloat16())  # rounded as torch rounds
    assert torch.equal(native.axpy_bf16(base, x, -0.3), torch.add(base, x.float(), alpha=-0.3))
    assert torch.equal(native.axpy_bf16(None, x, 0.7), x.float() * 0.7)
    g, g16 = native.tanh_backward_bf16(x, s)
    want = torch.ops.aten.tanh_backward(x.float(), s)
    assert torch.equal(g, want) and torch.equal(g16, want.bfloat16())


def test_the_bf16_tanh_pass_at_every_bfloat16_input():
    bits = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16)
    z = bits.view(torch.bfloat16)
    s, s16 = native.tanh_bf16(z)
    finite = ~z.float().isnan()
    assert torch.equal(s[finite], native.tanh_(z.float())[finite])
    assert torch.equal(s16[finite], s[finite].bfloat16())
    assert s[~finite].isnan().all() and s16[~finite].isnan().all()
    special = torch.tensor([float("inf"), -float("inf"), -0.0]).bfloat16()
    special = torch.cat([special, torch.zeros(native.TANH_FROM, dtype=torch.bfloat16)])
    s, s16 = native.tanh_bf16(special)
    assert s[:3].tolist() == [1.0, -1.0, 0.0] and str(s[2].item()) == "-0.0" and torch.equal(s16[:3], s[:3].bfloat16())


def test_what_the_bf16_passes_refuse(monkeypatch):
    z = torch.randn(2, 8, 16, 16).bfloat16()  # 4 096 elements
    s = torch.randn(2, 8, 16, 16)
    assert native.tanh_bf16(z) is not None and native.tanh_backward_bf16(z, s) is not None
    assert native.tanh_bf16(z.float()) is None  # the product must be bfloat16
    assert native.tanh_bf16(z.half()) is None
    assert native.tanh_bf16(z[:, :, :8]) is None  # too few elements (and not one block)
    assert native.tanh_backward_bf16(z, s.contiguous(memory_format=torch.channels_last)) is None  # two layouts
    assert native.tanh_backward_bf16(z, s.double()) is None
    assert native.axpy_bf16(s.double(), z, 1.0) is None
    assert native.axpy_bf16(s[:1], z, 1.0) is None  # another shape
    w = s.clone().requires_grad_(True)
    assert native.tanh_backward_bf16(z, w) is None  # autograd would not see it
    monkeypatch.setenv("HAMODE_NATIVE", "0")
    assert native.tanh_bf16(z) is None and native.axpy_bf16(s, z, 1.0) is None


@pytest.mark.parametrize("arch", ["ConvH2", "ConvH1_J1"])
def test_a_bf16_conv_field_runs_its_passes_on_the_kernels_and_equals_the_torch_calls(monkeypatch, arch):
    """conv_dtype="bfloat16": the fused engine's passes between the bf16 products and the float32 state run on the
    kernels, and give exactly what the torch calls they replace give (with hamode's tanh on both sides)."""
    monkeypatch.setenv("HAMODE_NATIVE_TANH", "1")
    torch.manual_seed(0)
    field = hamode.make_field(arch, dim=8, n_layers=2, conv_dtype="bfloat16")
    y0 = torch.randn(6, 8, 24, 24)  # a half: 4 608 elements, past TANH_FROM
    rule = "symplectic_euler" if field.separable else "euler"
    calls = []
    names = ("tanh_bf16", "axpy_bf16", "tanh_backward_bf16")
    originals = {name: getattr(native, name) for name in names}
    for name in names:
        monkeypatch.setattr(native, name, lambda *a, _f=originals[name], _n=name: calls.append(_n) or _f(*a))
    on_kernels = outputs_and_gradients(field, rule, y0, fast=True)
    assert set(calls) == set(names)  # (ConvH1 mixes its channels after Kᵀ: its update pass is the VJP's only)
    for name in names:
        monkeypatch.setattr(native, name, lambda *a: None)
    on_torch = outputs_and_gradients(field, rule, y0, fast=True)
    for a, b in zip(on_kernels, on_torch):
        assert torch.equal(a, b)
