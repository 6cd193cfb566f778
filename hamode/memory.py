"""Keeping freed CPU memory for reuse: the C library setting that the ``hamode`` command applies.

PyTorch takes CPU tensors from the C library's ``malloc``. With glibc's defaults a block of a few megabytes (an
image batch's activations, a per-pixel state) comes as fresh pages from the operating system, and freed memory at
the top of the heap goes back to it; the next tensor of that size then pays a page fault on the first touch of every
4 kB page. A training step frees and re-allocates the same sizes again and again, so on machines where faults are
expensive (virtual machines) much of an elementwise op's time is the fault, not the work: on the 2-core VM this was
measured on, ``base + h out`` over a fresh (78 400, 8) float32 tensor took 1.8 ms, over a reused one 0.45 ms, and
one training step of the default ``HamiltonianCNN`` 6-12 % less time with the setting (see the Speed page).

[`keep_freed_memory`][hamode.memory.keep_freed_memory] raises glibc's two thresholds, so that such blocks come from
the heap and freed ones stay there for the next. It is process-wide, so the library never calls it on import; the
``hamode`` command, which owns its process, calls it at start unless ``HAMODE_KEEP_FREED_MEMORY=0``. A script can call
it first thing, or set glibc's own variables before Python starts (``MALLOC_MMAP_THRESHOLD_``,
``MALLOC_TRIM_THRESHOLD_``). The price is a resident size that stays near the process's peak instead of shrinking
between steps. Nothing numerical changes.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from .validation import check_int

__all__ = ["KEEP_FREED_MEMORY_ENV", "keep_freed_memory", "keep_freed_memory_requested"]

KEEP_FREED_MEMORY_ENV = "HAMODE_KEEP_FREED_MEMORY"
"""The environment variable that turns the ``hamode`` command's setting off (``0``)."""

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's malloc.h
_INT_MAX = 2**31 - 1  # mallopt takes a C int


def keep_freed_memory(mmap_threshold: int = 32 * 2**20, trim_threshold: int = 2**30) -> bool:
    """Make glibc's ``malloc`` serve blocks below ``mmap_threshold`` bytes from its heap and keep up to
    ``trim_threshold`` bytes of freed memory there for reuse (``mallopt(M_MMAP_THRESHOLD)``, ``M_TRIM_THRESHOLD``).

    Args:
        mmap_threshold: blocks from this size on are still mapped fresh from the system (the default, 32 MiB, is
            the largest value glibc's own adaptive threshold reaches).
        trim_threshold: freed memory at the top of the heap is returned to the system only beyond this.

    Returns:
        Whether the setting was applied: ``False`` where the C library is not glibc (macOS, Windows, musl), where
        it does nothing.
    """
    for name, value in (("mmap_threshold", mmap_threshold), ("trim_threshold", trim_threshold)):
        if check_int(name, value, 0) > _INT_MAX:
            raise ValueError(f"{name} must be at most {_INT_MAX} (a C int), got {value}")
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    mallopt = ctypes.CDLL(None).mallopt  # the C library this process runs on
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(_M_TRIM_THRESHOLD, trim_threshold))


def keep_freed_memory_requested() -> bool:
    """Whether the ``hamode`` command should apply [`keep_freed_memory`][hamode.memory.keep_freed_memory]: yes unless
    ``HAMODE_KEEP_FREED_MEMORY`` is ``0``, ``false``, ``no`` or ``off``."""
    value = os.environ.get(KEEP_FREED_MEMORY_ENV, "").strip().lower()
    return value not in ("0", "false", "no", "off")
