"""Native kernels for wide states: ``base + alpha (x W + bias)`` over many rows of a few columns, and ``tanh``.

The dense fields' fused evaluations are chains of small products ``(rows, k) @ (k, c)`` with k, c of a few to a
few dozen: on a per-pixel state (L4DC's MNIST net: 78 400 rows of 8) each such product, its bias, its update and
its scale are separate passes of torch over megabytes, and a GEMM library is not built for an inner size of 8.
[`rowmm()`][hamode.native.rowmm] does the product, the bias, the scale and the update in one pass (each row of
``x`` read once, each row of the result written once, ``W`` held in registers), with the activation left to
torch between two such passes; an evaluation's VJP ([`rowvjp_sums()`][hamode.native.rowvjp_sums]) is one pass too,
with its parameter factors summed over the rows on the way. [`tanh_()`][hamode.native.tanh_] is σ of the fused
engine's tanh fields on wide states where torch's is slow ([`use_tanh()`][hamode.native.use_tanh]: torch's runs
MKL's vector math, fast on Intel's processors and slow on others). [`tanh_bf16()`][hamode.native.tanh_bf16],
[`axpy_bf16()`][hamode.native.axpy_bf16] and [`tanh_backward_bf16()`][hamode.native.tanh_backward_bf16] are the
image fields' passes between their bfloat16 products and their float32 state (``conv_dtype="bfloat16"``): each
converts, computes and converts back in one pass.
``python scripts/bench_native.py`` times them against the torch calls they replace (the Speed page has its table).

The kernels are C (``hamode/csrc/rowmm.c``, ``tanh.c``, ``bf16.c``), compiled on first use for each (dtype, k, c;
``tanh`` for each dtype) with the system's C compiler (``$CC``, default ``cc``; ``-O3 -march=native``, without
it where the compiler refuses it, and ``-fopenmp`` when torch runs on libgomp, whose already loaded copy they then
share, so their threads are torch's: ``torch.set_num_threads`` applies). The shared objects are kept in a cache
folder (``$HAMODE_NATIVE_CACHE``, default ``~/.cache/hamode/native``) under a name that hashes the source, the
flags, the compiler and the CPU, so a cached object is never one built from another source or for another
processor. Where no compiler works, the functions answer ``None`` (the caller computes
with torch) and warn once per kernel; ``HAMODE_NATIVE=0`` turns the kernels off.

The fused engine's dense helpers call these on CPU tensors of float32 or float64 outside autograd whose operand
has at least [`NATIVE_FROM`][hamode.native.NATIVE_FROM] elements (checked inline, so small states pay no call);
smaller states (the deep 2-D nets) keep torch's kernels, whose call overhead is lower.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

import torch
from torch import Tensor

__all__ = [
    "MAX_SIZE",
    "NATIVE_FROM",
    "TANH_FROM",
    "axpy_bf16",
    "cache_dir",
    "cpu_info",
    "cpu_vendor",
    "enabled",
    "kernel",
    "rowgram",
    "rowmm",
    "rowvjp_sums",
    "tanh_",
    "tanh_backward_bf16",
    "tanh_bf16",
    "torch_tanh_is_slow",
    "use_tanh",
]

NATIVE_FROM = 1 << 16
"""From this many elements (in the fused engine's operand, and in the kernel's result) the dense products run on
the native kernels (``python scripts/bench_native.py --rows``: below it torch's ``mm`` + ``add`` was as fast)."""
MAX_SIZE = 64
"""The largest inner size k and column count c a kernel is built for (larger products stay with torch)."""

TANH_FROM = 1 << 12
"""From this many elements [`tanh_()`][hamode.native.tanh_] runs on its kernel: below it the call's overhead (about
5 µs through ctypes) eats the gain (measured float32 at 1 thread on the Speed page's machine: 1 024 elements 5.3 µs
against torch's 3.2, 4 096 elements 6.5 against 10.9)."""

SOURCES = {
    "hamode_rowmm": Path(__file__).with_name("csrc") / "rowmm.c",
    "hamode_rowvjp_sums": Path(__file__).with_name("csrc") / "rowmm.c",
    "hamode_rowgram": Path(__file__).with_name("csrc") / "rowmm.c",
    "hamode_tanh": Path(__file__).with_name("csrc") / "tanh.c",
    "hamode_tanh_bf16": Path(__file__).with_name("csrc") / "bf16.c",
    "hamode_axpy_bf16": Path(__file__).with_name("csrc") / "bf16.c",
    "hamode_tanh_bw_bf16": Path(__file__).with_name("csrc") / "bf16.c",
}
"""The C source of each kernel; the row-wise ones are built per (dtype, k, c), the elementwise ones per dtype (the
bfloat16 passes for a float32 state only)."""
_ELEMENTWISE = ("hamode_tanh", "hamode_tanh_bf16", "hamode_axpy_bf16", "hamode_tanh_bw_bf16")
_TYPES = {torch.float32: ("float", ctypes.c_float), torch.float64: ("double", ctypes.c_double)}

_kernels: dict[tuple, object] = {}
"""Loaded kernels by (dtype, k, c, name, $CC, $HAMODE_NATIVE_CACHE): a ctypes function, or False where the build
failed (warned once). An entry cannot go stale: the object it was loaded from is named by the hash of everything
that built it, and a changed compiler or cache folder is another key."""


def enabled() -> bool:
    """Whether the native kernels may be used (``HAMODE_NATIVE`` is not ``0``)."""
    return os.environ.get("HAMODE_NATIVE", "1") != "0"


def use_tanh() -> bool:
    """Whether the fused engine computes ``tanh`` on wide states with [`tanh_()`][hamode.native.tanh_] instead of
    torch: ``HAMODE_NATIVE_TANH=1`` always, ``0`` never, ``auto`` (the default) where
    [`torch_tanh_is_slow()`][hamode.native.torch_tanh_is_slow]. A choice by the machine, not by a timing, so a
    run's numbers do not depend on how fast a call happened to be."""
    choice = os.environ.get("HAMODE_NATIVE_TANH", "auto")
    if choice not in ("auto", "0", "1"):
        raise ValueError(f"HAMODE_NATIVE_TANH must be auto, 0 or 1, not {choice!r}")
    return choice == "1" or (choice == "auto" and torch_tanh_is_slow())


def torch_tanh_is_slow() -> bool:
    """Whether torch's CPU ``tanh`` runs MKL's vector math on a processor that is not Intel's: MKL takes its fast
    code paths on Intel processors only, and elsewhere its ``tanh`` is several times slower than hamode's (on an AMD
    EPYC 2.5 ns an element in float32 against 0.4; on an Intel Xeon torch's is the faster, 340 against 448 µs for a
    copy and tanh of a (78 400, 8) state: the Speed page)."""
    return torch.backends.mkl.is_available() and cpu_vendor() != "GenuineIntel"


@functools.cache
def cpu_vendor() -> str:
    """The processor's vendor string (``GenuineIntel``, ``AuthenticAMD``, ...; ``""`` where it cannot be read).
    Kept for the process: the processor does not change under it."""
    processor = platform.processor()  # Windows names the vendor here ("... GenuineIntel")
    return cpu_info("vendor_id") or next((v for v in ("GenuineIntel", "AuthenticAMD") if v in processor), "")


def cpu_info(key: str) -> str:
    """The value of ``key`` (``vendor_id``, ``model name``, ...) in ``/proc/cpuinfo`` for the first processor; ``""``
    where there is no such file or key."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return ""


def cache_dir() -> Path:
    """Where built kernels are kept: ``$HAMODE_NATIVE_CACHE``, else ``$XDG_CACHE_HOME/hamode/native``, else
    ``~/.cache/hamode/native``."""
    if os.environ.get("HAMODE_NATIVE_CACHE"):
        return Path(os.environ["HAMODE_NATIVE_CACHE"])
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "hamode" / "native"


def rowmm(
    x: Tensor,
    W: Tensor,
    alpha: float = 1.0,
    base: Tensor | None = None,
    bias: Tensor | None = None,
) -> Tensor | None:
    """``base + alpha (x @ W + bias)`` in one pass (``base`` and ``bias`` optional), or ``None`` when no native
    kernel applies (then the caller computes it with torch).

    Applies to CPU tensors of one dtype (float32 or float64), ``x`` of shape (rows, k) and ``base`` of shape
    (rows, c), both with unit stride along a row, ``W`` (k, c) and ``bias`` (c,) of any strides, k and c at most
    [`MAX_SIZE`][hamode.native.MAX_SIZE], a result of at least [`NATIVE_FROM`][hamode.native.NATIVE_FROM]
    elements, no autograd recording (grad mode off, or no operand requiring a gradient), and the kernels enabled
    and buildable. The result is a new contiguous tensor.
    """
    if x.dim() != 2 or W.dim() != 2 or x.device.type != "cpu" or x.dtype not in _TYPES:
        return None
    rows, k = x.shape
    c = W.shape[1]
    if rows * c < NATIVE_FROM or W.shape[0] != k or k > MAX_SIZE or c > MAX_SIZE or not enabled():
        return None
    operands = [t for t in (x, W, base, bias) if t is not None]
    if any(t.dtype != x.dtype or t.device != x.device for t in operands) or x.stride(1) != 1:
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in operands):
        return None  # autograd would not see the kernel
    if base is not None and (base.shape != (rows, c) or base.stride(1) != 1):
        return None
    if bias is not None and bias.shape != (c,):
        return None
    fn = kernel(x.dtype, k, c)
    if fn is None:
        return None
    out = _empty(x.dtype, rows, c)
    fn(
        rows,
        x.data_ptr(),
        x.stride(0),
        W.data_ptr(),
        W.stride(0),
        W.stride(1),
        None if bias is None else bias.data_ptr(),
        0 if bias is None else bias.stride(0),
        alpha,
        None if base is None else base.data_ptr(),
        0 if base is None else base.stride(0),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def rowvjp_sums(
    c: Tensor, W1: Tensor, s: Tensor, act: int, W2: Tensor, y: Tensor, alpha: float = 1.0, base: Tensor | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
    """The VJP of an evaluation and its parameter factors summed over the rows, in one pass: with
    ``gz = (c @ W1) ⊙ σ'`` (σ' taken from σ's output ``s``; ``act``: 0 tanh, 1 sigmoid, 2 relu, an activation's
    ``native_code``), ``(base + alpha gz @ W2, sᵀ c, gzᵀ y, Σ_rows gz)`` for the evaluation's input ``y``, without
    writing ``gz``; or ``None`` when no native kernel applies.

    For an evaluation ``σ(y A + b) B``: ``W1 = Bᵀ`` (k, m), ``W2 = Aᵀ`` (m, k), ``c``, ``y`` and ``base`` (rows, k),
    ``s`` (rows, m). Conditions as for [`rowmm()`][hamode.native.rowmm]. The sums are taken in blocks of rows
    fixed by ``torch.get_num_threads()`` and added in order: deterministic for a thread count."""
    fn = _vjp_kernel(c, W1, s, act, W2, base, y)
    if fn is None:
        return None
    rows, k = c.shape
    m, threads = W1.shape[1], torch.get_num_threads()
    out, partial = _empty(c.dtype, rows, k), _empty(c.dtype, threads, 2 * m * k + m)
    sc, gy, gs = _empty(c.dtype, m, k), _empty(c.dtype, m, k), _empty(c.dtype, m)
    fn(
        rows,
        c.data_ptr(),
        c.stride(0),
        W1.data_ptr(),
        W1.stride(0),
        W1.stride(1),
        s.data_ptr(),
        s.stride(0),
        act,
        W2.data_ptr(),
        W2.stride(0),
        W2.stride(1),
        alpha,
        None if base is None else base.data_ptr(),
        0 if base is None else base.stride(0),
        y.data_ptr(),
        y.stride(0),
        out.data_ptr(),
        sc.data_ptr(),
        gy.data_ptr(),
        gs.data_ptr(),
        partial.data_ptr(),
        threads,
    )
    return out, sc, gy, gs


def _empty(dtype: torch.dtype, *shape: int) -> Tensor:
    return torch.empty(shape, dtype=dtype, device="cpu")  # on the CPU whatever the default device


def _vjp_kernel(c, W1, s, act, W2, base, y):
    """The kernel for these operands of rowvjp_sums, or None where it does not apply."""
    if c.dim() != 2 or W1.dim() != 2 or W2.dim() != 2 or c.device.type != "cpu" or c.dtype not in _TYPES:
        return None
    rows, k = c.shape
    m = W1.shape[1]
    if rows * k < NATIVE_FROM or k > MAX_SIZE or m > MAX_SIZE or act not in (0, 1, 2) or not enabled():
        return None
    if W1.shape[0] != k or W2.shape != (m, k) or c.stride(1) != 1:
        return None
    if s.dim() != 2 or s.shape != (rows, m) or s.stride(1) != 1:
        return None
    for t in (base, y):
        if t is not None and (t.dim() != 2 or t.shape != (rows, k) or t.stride(1) != 1):
            return None
    operands = [t for t in (c, W1, s, W2, base, y) if t is not None]  # base is optional
    if any(t.dtype != c.dtype or t.device != c.device for t in operands):
        return None
    if torch.is_grad_enabled() and any(t.requires_grad for t in operands):
        return None
    return kernel(c.dtype, k, m, "hamode_rowvjp_sums")


def rowgram(A: Tensor, B: Tensor) -> Tensor | None:
    """``Aᵀ @ B`` for ``A`` (rows, m) and ``B`` (rows, k) with many rows (a weight gradient summed over samples) in
    one pass over both, or ``None`` when no native kernel applies (conditions as for
    [`rowmm()`][hamode.native.rowmm], with ``rows * max(m, k)`` elements at least
    [`NATIVE_FROM`][hamode.native.NATIVE_FROM]). Each thread sums a fixed block of rows and the blocks are added in
    order: the result depends on ``torch.get_num_threads()``, not on timing."""
    if A.dim() != 2 or B.dim() != 2 or A.device.type != "cpu" or A.dtype not in _TYPES:
        return None
    rows, m = A.shape
    k = B.shape[1]
    if rows * max(m, k) < NATIVE_FROM or k > MAX_SIZE or m > MAX_SIZE or not enabled():
        return None
    if B.shape[0] != rows or B.dtype != A.dtype or B.device != A.device or A.stride(1) != 1 or B.stride(1) != 1:
        return None
    if torch.is_grad_enabled() and (A.requires_grad or B.requires_grad):
        return None
    fn = kernel(A.dtype, k, m, "hamode_rowgram")
    if fn is None:
        return None
    threads = torch.get_num_threads()
    out, partial = _empty(A.dtype, m, k), _empty(A.dtype, threads, m, k)
    fn(rows, A.data_ptr(), A.stride(0), B.data_ptr(), B.stride(0), out.data_ptr(), partial.data_ptr(), threads)
    return out


def tanh_(x: Tensor) -> Tensor | None:
    """``tanh`` of ``x`` in place, or ``None`` when the kernel does not apply (then the caller uses torch).

    torch's CPU ``tanh`` runs MKL's vector math, whose fast paths are for Intel processors; elsewhere it costs
    several times torch's own ``sigmoid`` (on an AMD EPYC 2.5 ns an element in float32: a third of the per-pixel
    nets' training step). The fused engine calls this where [`use_tanh()`][hamode.native.use_tanh] says so.
    The kernel computes ``tanh`` from ``expm1(-2|x|)`` in one vectorised pass, within 2.5 ulp in float32 (every
    float32 checked) and 2.4 ulp in float64 (sampled against mpmath; torch's: 1), so the fused engine's results
    move by rounding only; ``tanh(-0) = -0``, ``tanh(±inf) = ±1``, NaN stays NaN.
    Applies to dense CPU tensors (any memory format) of float32 or float64 with at least
    [`TANH_FROM`][hamode.native.TANH_FROM] elements, outside autograd, with the kernels enabled and buildable."""
    if x.device.type != "cpu" or x.dtype not in _TYPES or x.numel() < TANH_FROM or not enabled():
        return None
    if x.requires_grad and torch.is_grad_enabled():
        return None
    if not _dense(x):
        return None
    fn = kernel(x.dtype, 0, 0, "hamode_tanh")
    if fn is None:
        return None
    fn(x.numel(), x.data_ptr(), x.data_ptr(), torch.get_num_threads())
    return x


def _dense(x: Tensor) -> bool:
    """Whether ``x``'s elements are one block of memory (contiguous, or a ``channels_last`` image batch): an
    elementwise kernel may run over them in memory order."""
    return x.is_contiguous() or (x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last))


def _bf16_operands(*tensors: Tensor) -> bool:
    """Whether ``tensors`` (bfloat16 and float32 ones mixed) can go through an elementwise bfloat16 pass: dense CPU
    tensors of one shape and one layout (their elements in the same order), enough of them, outside autograd."""
    first = tensors[0]
    if first.device.type != "cpu" or first.numel() < TANH_FROM or not enabled():
        return False
    if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
        return False
    return _dense(first) and all(
        t.device == first.device and t.shape == first.shape and t.stride() == first.stride() for t in tensors
    )


def tanh_bf16(z: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(tanh(z), tanh(z) rounded to bfloat16)`` for a bfloat16 ``z``, the first in float32, in one pass; ``None``
    where the kernel does not apply (then the caller converts and uses torch). σ of a reduced-precision image field
    (``conv_dtype="bfloat16"``): ``z`` is its bfloat16 product, the float32 ``tanh`` its state-precision σ, the
    bfloat16 one the next product's operand. ``tanh`` as [`tanh_()`][hamode.native.tanh_] computes it; the rounding
    to bfloat16 is torch's (to nearest even). Applies to dense CPU tensors of at least
    [`TANH_FROM`][hamode.native.TANH_FROM] elements, outside autograd; the results have ``z``'s layout."""
    if z.dtype != torch.bfloat16 or not _bf16_operands(z):
        return None
    fn = kernel(torch.float32, 0, 0, "hamode_tanh_bf16")
    if fn is None:
        return None
    s, s16 = torch.empty_like(z, dtype=torch.float32), torch.empty_like(z)
    fn(z.numel(), z.data_ptr(), s.data_ptr(), s16.data_ptr(), torch.get_num_threads())
    return s, s16


def axpy_bf16(base: Tensor | None, x: Tensor, alpha: float) -> Tensor | None:
    """``base + alpha x`` (``alpha x`` without a base) in float32 for a bfloat16 ``x`` and a float32 ``base``, in one
    pass (one fused multiply-add, as torch's ``add(base, x, alpha=alpha)`` rounds it); ``None`` where the kernel does
    not apply. The update of a reduced-precision image field from its bfloat16 product ``Kᵀ s``."""
    if x.dtype != torch.bfloat16 or (base is not None and base.dtype != torch.float32):
        return None
    if not _bf16_operands(x, *(() if base is None else (base,))):
        return None
    fn = kernel(torch.float32, 0, 0, "hamode_axpy_bf16")
    if fn is None:
        return None
    out = torch.empty_like(x, dtype=torch.float32)
    fn(
        x.numel(),
        None if base is None else base.data_ptr(),
        x.data_ptr(),
        float(alpha),
        out.data_ptr(),
        torch.get_num_threads(),
    )
    return out


def tanh_backward_bf16(p: Tensor, s: Tensor) -> tuple[Tensor, Tensor] | None:
    """``(p (1 - s²), the same rounded to bfloat16)`` for a bfloat16 ``p`` and a float32 ``s`` (tanh's output), the
    first in float32, in one pass (as torch's ``tanh_backward`` rounds it); ``None`` where the kernel does not apply.
    The VJP through σ of a reduced-precision image field: ``p`` its bfloat16 product ``K c``."""
    if p.dtype != torch.bfloat16 or s.dtype != torch.float32 or not _bf16_operands(p, s):
        return None
    fn = kernel(torch.float32, 0, 0, "hamode_tanh_bw_bf16")
    if fn is None:
        return None
    gz, gz16 = torch.empty_like(s), torch.empty_like(p)
    fn(p.numel(), p.data_ptr(), s.data_ptr(), gz.data_ptr(), gz16.data_ptr(), torch.get_num_threads())
    return gz, gz16


def kernel(dtype: torch.dtype, k: int, c: int, name: str = "hamode_rowmm"):
    """The native function ``name`` (``hamode_rowmm``, ``hamode_rowvjp_sums`` or ``hamode_rowgram`` for
    (dtype, k, c); the elementwise ones, ``hamode_tanh`` and the bfloat16 passes ``hamode_tanh_bf16``,
    ``hamode_axpy_bf16``, ``hamode_tanh_bw_bf16`` (float32 only), for dtype, with k = c = 0), built (or found in the
    cache folder) on first use; ``None`` where it cannot be built (warned once per process and kernel)."""
    key = (dtype, k, c, name, os.environ.get("CC"), os.environ.get("HAMODE_NATIVE_CACHE"))
    fn = _kernels.get(key)
    if fn is None:
        fn = _kernels[key] = _load(dtype, k, c, name)
    return fn or None


def _openmp() -> bool:
    """Whether torch runs on libgomp, already loaded: a kernel built with -fopenmp then shares that copy."""
    if not sys.platform.startswith("linux") or "OpenMP" not in torch.__config__.parallel_info():
        return False
    try:
        with open("/proc/self/maps") as maps:
            return any("/libgomp" in line for line in maps)
    except OSError:
        return False


def _cpu() -> str:
    """The processor, as far as the compiler's ``-march=native`` can see it."""
    try:
        with open("/proc/cpuinfo") as info:
            lines = [line for line in info if line.startswith(("model name", "flags", "Features"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _compiler() -> list[str] | None:
    cc = os.environ.get("CC", "cc").split()
    path = shutil.which(cc[0]) if cc else None
    return None if path is None else [path, *cc[1:]]


def _load(dtype: torch.dtype, k: int, c: int, name: str):
    ctype, cscalar = _TYPES[dtype]
    double = int(dtype == torch.float64)
    what = f"{name} for {dtype}" + (f" ({k} -> {c})" if name not in _ELEMENTWISE else "")
    cc = _compiler()
    if cc is None:
        return _failed(what, f"no C compiler ({os.environ.get('CC', 'cc')!r} not found)")
    path = SOURCES[name]
    source = b"".join(p.read_bytes() for p in sorted(path.parent.glob("*.c")))  # a source may include another
    flags = ["-O3", "-fPIC", "-shared", "-std=gnu11", f"-DDOUBLE={double}"]
    stem = f"{path.stem}_{ctype}"
    if name not in _ELEMENTWISE:
        flags += [f"-DK={k}", f"-DC={c}"]
        stem += f"_{k}x{c}"
    elif path.stem == "bf16":
        flags.append("-ffp-contract=off")  # the roundings of torch's calls (bf16.c)
    flags.append("-fopenmp" if _openmp() else "-fopenmp-simd")  # the simd pragmas hold either way
    stat = os.stat(cc[0])
    errors = []
    # the elementwise passes in the widest vectors (GCC keeps to 256 bits on some AVX-512 processors; per element the
    # same operations, so the same results): an Intel Xeon's tanh_bf16 on (128, 8, 28, 28) 499 -> 421 µs
    wide = ["-mprefer-vector-width=512"] if name in _ELEMENTWISE else []
    for tuned in (["-march=native", *wide], []):  # a compiler that does not take -march=native builds a generic object
        ident = repr((source, tuned + flags, cc, stat.st_size, stat.st_mtime_ns, _cpu(), platform.machine()))
        target = cache_dir() / f"{stem}_{hashlib.sha256(ident.encode()).hexdigest()[:20]}.so"
        error = None if target.exists() else _build(cc, tuned + flags, path, target)
        if error is None:
            break
        errors.append(error)
    else:
        return _failed(what, errors[0])
    try:
        fn = getattr(ctypes.CDLL(str(target)), name)
    except (OSError, AttributeError) as exc:
        return _failed(what, f"could not load {target}: {exc}")
    p, n, i = ctypes.c_void_p, ctypes.c_long, ctypes.c_int
    vjp = [n, p, n, p, n, n, p, n, i, p, n, n, cscalar, p, n]  # rowvjp_sums: c, W1, s, act, W2, alpha, base, y
    fn.argtypes = {  # each kernel's C signature; the last argument is the thread count
        "hamode_tanh": [n, p, p, i],
        "hamode_tanh_bf16": [n, p, p, p, i],
        "hamode_tanh_bw_bf16": [n, p, p, p, p, i],
        "hamode_axpy_bf16": [n, p, p, ctypes.c_float, p, i],
        "hamode_rowmm": [n, p, n, p, n, n, p, n, cscalar, p, n, p, i],
        "hamode_rowgram": [n, p, n, p, n, p, p, i],
        "hamode_rowvjp_sums": [*vjp, p, n, p, p, p, p, p, i],  # then the outputs
    }[name]
    fn.restype = None
    return fn


def _build(cc: list[str], flags: list[str], source: Path, target: Path) -> str | None:
    """Compile into ``target`` (written under a temporary name, then renamed: processes building the same kernel
    at once each install a whole file); the compiler's complaint, or None."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write to {target.parent}: {exc}"
    try:
        done = subprocess.run([*cc, *flags, str(source), "-o", tmp], capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            return f"{' '.join(cc)} failed: {(done.stderr or done.stdout).strip()[-400:]}"
        os.replace(tmp, target)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return f"{' '.join(cc)} could not run: {exc}"
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _failed(what: str, why: str) -> bool:
    warnings.warn(
        f"hamode.native: no native kernel {what}: {why}; torch's kernels are used instead "
        "(HAMODE_NATIVE=0 silences this)",
        RuntimeWarning,
        stacklevel=4,
    )
    return False
