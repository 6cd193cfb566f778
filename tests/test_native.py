"""hamode.native: the row-wise kernels against torch, their refusals, their build cache, the fused engine on them."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import warnings

import pytest
import torch
from helpers import F64

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

    def run(fast: bool):
        net = hamode.HamiltonianNet(field, 0.3, rule, fast=fast)
        y = y0.clone().requires_grad_(True)
        field.zero_grad()
        out = net(y)
        out.sin().sum().backward()
        return [out.detach(), y.grad, *(p.grad.clone() for p in field.parameters())]

    fused = run(True)
    assert calls["rowmm"] > 0 and calls["rowvjp_sums"] > 0  # the wide state ran on the kernels
    monkeypatch.setenv("HAMODE_NATIVE", "0")
    for a, b in zip(fused, run(True)):  # the fused engine on torch's kernels
        assert rel(a, b) <= 1e-12
    for a, b in zip(fused, run(False)):  # the autograd reference
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
