"""The 2-D benchmark sets of the H-DNN papers (L4DC 2022, TAC 2023): swiss roll, double circles, double moons."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["DATASETS", "double_circles", "double_moons", "make_dataset", "swiss_roll", "train_test_split"]


def _counts(n: int, parts: int) -> list[int]:
    base = [n // parts] * parts
    for i in range(n - sum(base)):
        base[i] += 1
    return base


def swiss_roll(
    n_samples: int = 8000, noise: float = 0.0, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two interleaved spirals: radii ``linspace(0, 1)`` (label 1) and ``linspace(0.2, 1.2)`` (label 0),
    angle ``linspace(0, 4π)`` (endpoint excluded); optional uniform noise ±``noise`` per coordinate."""
    n1, n0 = _counts(n_samples, 2)
    xs, ys = [], []
    for n, (r0, r1), label in ((n1, (0.0, 1.0), 1), (n0, (0.2, 1.2), 0)):
        theta = torch.arange(n, dtype=torch.float64) * (4 * math.pi / n)
        r = torch.linspace(r0, r1, n, dtype=torch.float64)
        xs.append(torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1))
        ys.append(torch.full((n,), label, dtype=torch.long))
    x = torch.cat(xs)
    if noise:
        x = x + noise * (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1)
    return x.float(), torch.cat(ys)


def double_circles(
    n_samples: int = 8000, noise: float = 0.3, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Rings of radius 1, 2, 3, 4 labelled 0, 1, 0, 1, angles uniform, uniform noise ±``noise`` per coordinate."""
    xs, ys = [], []
    for n, r in zip(_counts(n_samples, 4), (1.0, 2.0, 3.0, 4.0)):
        theta = 2 * math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        xs.append(torch.stack([r * torch.cos(theta), r * torch.sin(theta)], 1))
        ys.append(torch.full((n,), int(r) % 2 == 0, dtype=torch.long))
    x = torch.cat(xs)
    x = x + noise * (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1)
    return x.float(), torch.cat(ys)


def double_moons(
    n_samples: int = 8000, noise: float = 0.15, generator: torch.Generator | None = None
) -> tuple[Tensor, Tensor]:
    """Two interleaved two-moon pairs, the second shifted by +2 in x; upper moons label 0, lower moons 1;
    uniform noise ±``noise`` per coordinate."""
    xs, ys = [], []
    for k, n in enumerate(_counts(n_samples, 4)):
        theta = math.pi * torch.rand(n, generator=generator, dtype=torch.float64)
        shift = 2.0 * (k // 2)
        if k % 2 == 0:  # upper moon
            pts = torch.stack([torch.cos(theta) + shift, torch.sin(theta)], 1)
        else:  # lower moon
            pts = torch.stack([1 - torch.cos(theta) + shift, 0.5 - torch.sin(theta)], 1)
        xs.append(pts)
        ys.append(torch.full((n,), k % 2, dtype=torch.long))
    x = torch.cat(xs)
    x = x + noise * (2 * torch.rand(x.shape, generator=generator, dtype=torch.float64) - 1)
    return x.float(), torch.cat(ys)


DATASETS = {"swiss_roll": swiss_roll, "double_circles": double_circles, "double_moons": double_moons}
_DEFAULT_NOISE = {"swiss_roll": 0.0, "double_circles": 0.3, "double_moons": 0.15}


def make_dataset(name: str, n_samples: int = 8000, noise: float | None = None, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Generate a named 2-D set (seeded). ``noise=None`` takes the papers' value."""
    if name not in DATASETS:
        raise ValueError(f"unknown dataset {name!r}; valid: {', '.join(DATASETS)}")
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 4:
        raise ValueError(f"n_samples must be an int >= 4, got {n_samples!r}")
    if noise is not None and (not isinstance(noise, (int, float)) or noise < 0):
        raise ValueError(f"noise must be a number >= 0 or None, got {noise!r}")
    g = torch.Generator().manual_seed(seed)
    return DATASETS[name](n_samples, _DEFAULT_NOISE[name] if noise is None else float(noise), generator=g)


def train_test_split(
    x: Tensor, y: Tensor, seed: int = 0, train_fraction: float = 0.5
) -> tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """A seeded shuffle split (half/half by default, as in the papers)."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(x), generator=g)
    k = round(train_fraction * len(x))
    tr, te = perm[:k], perm[k:]
    return (x[tr], y[tr]), (x[te], y[te])
