"""Shared test fixtures: small fields with known behaviour."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

import torch

import hamode
from hamode.fields.base import Field, SeparableMixin

F64 = torch.float64
ROOT = Path(__file__).resolve().parents[1]
HAMODE = str(Path(sys.executable).parent / "hamode")
HAMODE_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
QUIET = ["--trainer.enable_progress_bar=false", "--trainer.enable_model_summary=false"]


def run_hamode(*args: str, cwd: Path, timeout: float = 300, **kw) -> subprocess.CompletedProcess:
    """The real ``hamode`` command, in a fresh process (one torch thread)."""
    env = {**HAMODE_ENV, **kw.pop("env", {})}
    return subprocess.run([HAMODE, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env, **kw)


class Batches:
    """A fixed list of batches with a length: a training loader for the Lightning tests."""

    def __init__(self, batches) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class HarmonicOscillator(SeparableMixin, Field):
    """H = (p² + q²)/2 per coordinate pair: dp/dt = -q, dq/dt = p. Exact flow is a rotation."""

    def __init__(self, dim: int = 2, n_layers: int = 1) -> None:
        super().__init__(dim, n_layers)

    def _dp(self, w, q):
        return -q

    def _dq(self, w, p):
        return p

    def _energy(self, w, y):
        return 0.5 * (y * y).sum(-1)

    def _structure(self, w):
        return hamode.fields.j1(self.dim, dtype=F64)

    @staticmethod
    def exact(y0: torch.Tensor, t: float) -> torch.Tensor:
        half = y0.shape[-1] // 2
        p, q = y0[..., :half], y0[..., half:]
        c, s = math.cos(t), math.sin(t)
        return torch.cat([c * p - s * q, c * q + s * p], -1)


def separable_integrators() -> list[str]:
    return [n for n in hamode.list_integrators() if hamode.get_integrator(n).needs_separable]


def reversible_integrators() -> list[str]:
    return [n for n in hamode.list_integrators() if hamode.get_integrator(n).reversible]


def symplectic_integrators() -> list[str]:
    return [n for n in hamode.list_integrators() if hamode.get_integrator(n).symplectic]


def separable_architectures() -> list[str]:
    """The separable architectures on ``(..., dim)`` states (the image fields' generic tests are in test_conv.py,
    over every integrator, on ``(B, C, H, W)`` states)."""
    return [
        a
        for a in hamode.list_architectures()
        if hamode.architecture_info(a).field_class.separable and hamode.architecture_info(a).field_class.state_rank == 1
    ]


def dense_architectures() -> list[str]:
    """The registered architectures on ``(..., dim)`` states (every one is picked up by the generic tests)."""
    return [a for a in hamode.list_architectures() if hamode.architecture_info(a).field_class.state_rank == 1]


def applicable(field_class, integrator: str) -> bool:
    """Whether the rule runs on the field (separable-only rules need a separable field)."""
    return field_class.separable or not hamode.get_integrator(integrator).needs_separable


def image_architectures() -> list[str]:
    return [a for a in hamode.list_architectures() if hamode.architecture_info(a).field_class.state_rank == 3]


def example_state(field, batch: int, size: tuple[int, int] = (4, 4), dtype=F64, **kw) -> torch.Tensor:
    """A random state the field accepts: ``(batch, dim)``, or ``(batch, C, H, W)`` for image fields."""
    if field.state_rank == 3:
        return torch.randn(batch, field.dim, *size, dtype=dtype, **kw)
    return torch.randn(batch, field.dim, dtype=dtype, **kw)


def flat_structure(field, y: torch.Tensor) -> torch.Tensor:
    """The structure matrix on one sample's flattened state (``J ⊗ I_{HW}`` for image fields)."""
    if field.state_rank == 3:
        return field.flat_structure(*y.shape[-2:])
    return field.J


def field_for(integrator: str, n_layers: int = 4, dim: int = 4, seed: int = 0, **kw) -> Field:
    """A float64 H-DNN field the integrator can run: H2 for separable-only rules, H1_J1 otherwise."""
    torch.manual_seed(seed)
    arch = "H2" if hamode.get_integrator(integrator).needs_separable else "H1_J1"
    return hamode.make_field(arch, dim=dim, n_layers=n_layers, init="normal", dtype=F64, **kw)


def log_slope(xs, ys) -> float:
    """Least-squares slope of log(ys) against log(xs)."""
    lx = torch.log(torch.tensor(xs, dtype=F64))
    ly = torch.log(torch.tensor(ys, dtype=F64))
    lx = lx - lx.mean()
    return float((lx * (ly - ly.mean())).sum() / (lx * lx).sum())
