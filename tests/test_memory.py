"""hamode.memory: glibc keeps freed CPU memory for reuse, and the hamode command asks for it."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

import hamode.memory
from hamode.memory import keep_freed_memory, keep_freed_memory_requested

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

# Minor page faults of 20 steps that each allocate and free three (78 400, 8) float32 tensors (2.5 MB, 613 pages
# each), as the per-pixel flow does, on one thread; run in a fresh interpreter, since the setting is process-wide.
_FAULTS = """
import resource, sys, torch
if sys.argv[1] == "keep":
    from hamode.memory import keep_freed_memory
    assert keep_freed_memory()
faults = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_minflt
x, W = torch.randn(78400, 8), torch.randn(8, 8)
for _ in range(3):
    y = torch.mm(x, W) + x
    del y
f0 = faults()
for _ in range(20):
    a = torch.mm(x, W)
    b = torch.tanh(a) + x
    del a, b
print(faults() - f0)
"""


def _faults(mode: str) -> int:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if mode == "default":
        # glibc's initial thresholds (128 kB), fixed: its adaptive rule raises them after a freed mapping, which makes
        # the count depend on the order of the process's allocations (threads included), not only on the setting
        env |= {"MALLOC_MMAP_THRESHOLD_": "131072", "MALLOC_TRIM_THRESHOLD_": "131072"}
    out = subprocess.run([sys.executable, "-c", _FAULTS, mode], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_freed_memory_is_reused_instead_of_faulted_in_again():
    default, kept = _faults("default"), _faults("keep")
    assert default > 20 * 613  # glibc's initial thresholds fault every fresh tensor in (36 000 measured)
    # kept: after the first round the memory comes back without faults (630 measured); glibc's adaptive default
    # reuses some of it too, depending on the order of allocations (2 500 to 36 000 measured)
    assert kept < 3 * 613


@pytest.mark.skipif(not GLIBC, reason="the setting is glibc's")
def test_keep_freed_memory_reports_that_it_applied():
    code = "from hamode.memory import keep_freed_memory; print(keep_freed_memory())"  # process-wide: not in pytest's
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.split() == ["True"], out.stderr


def test_keep_freed_memory_refuses_bad_thresholds():
    with pytest.raises(ValueError, match="mmap_threshold must be >= 0"):
        keep_freed_memory(mmap_threshold=-1)
    with pytest.raises(ValueError, match="trim_threshold must be at most 2147483647"):
        keep_freed_memory(trim_threshold=2**31)
    with pytest.raises(TypeError, match="mmap_threshold must be an int"):
        keep_freed_memory(mmap_threshold=1.5)
    with pytest.raises(TypeError, match="trim_threshold must be an int"):
        keep_freed_memory(trim_threshold=True)


@pytest.mark.parametrize(
    ("value", "wanted"), [(None, True), ("1", True), ("", True), ("0", False), ("off", False), ("False", False)]
)
def test_the_environment_variable_turns_the_commands_setting_off(monkeypatch, value, wanted):
    if value is None:
        monkeypatch.delenv(hamode.memory.KEEP_FREED_MEMORY_ENV, raising=False)
    else:
        monkeypatch.setenv(hamode.memory.KEEP_FREED_MEMORY_ENV, value)
    assert keep_freed_memory_requested() is wanted


@pytest.mark.parametrize(("value", "calls"), [(None, 1), ("0", 0)])
def test_the_hamode_command_applies_the_setting_before_it_runs(monkeypatch, capsys, value, calls):
    pytest.importorskip("lightning")
    import lightning_modules.main as entry

    called = []
    monkeypatch.setattr(entry, "keep_freed_memory", lambda: called.append(True) or True)
    if value is None:
        monkeypatch.delenv(hamode.memory.KEEP_FREED_MEMORY_ENV, raising=False)
    else:
        monkeypatch.setenv(hamode.memory.KEEP_FREED_MEMORY_ENV, value)
    with pytest.raises(SystemExit) as stop:
        entry.main(["fit", "--help"])
    assert stop.value.code in (0, None)
    assert "--trainer.max_epochs" in capsys.readouterr().out
    assert len(called) == calls
