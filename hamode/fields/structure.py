"""Structure matrices J and the skew-symmetry check."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["check_skew", "fixed_structure", "j1", "j2"]


def j1(dim: int, dtype=None, device=None) -> Tensor:
    """``J1 = [[0, I], [-I, 0]]`` (needs an even ``dim``)."""
    if dim % 2:
        raise ValueError(f"J='J1' needs an even dim, got dim={dim}")
    half = dim // 2
    eye = torch.eye(half, dtype=dtype, device=device)
    zero = torch.zeros(half, half, dtype=dtype, device=device)
    return torch.cat([torch.cat([zero, eye], 1), torch.cat([-eye, zero], 1)], 0)


def j2(dim: int, dtype=None, device=None) -> Tensor:
    """``J2``: 0 on the diagonal, +1 above it, -1 below it."""
    ones = torch.ones(dim, dim, dtype=dtype, device=device)
    return torch.triu(ones, 1) - torch.tril(ones, -1)


def check_skew(J: Tensor, dim: int, name: str = "J") -> Tensor:
    """Return ``J`` if it is a (dim, dim) skew-symmetric matrix, else raise ValueError."""
    if not isinstance(J, Tensor):
        raise TypeError(f"{name} must be a tensor, got {type(J).__name__}")
    if J.shape != (dim, dim):
        raise ValueError(f"{name} must have shape ({dim}, {dim}), got {tuple(J.shape)}")
    if not torch.isfinite(J).all():
        raise ValueError(f"{name} must be finite, got {J}")
    tol = 1e-12 if J.dtype == torch.float64 else 1e-6
    err = (J + J.mT).abs().max().item()
    if err > tol * max(1.0, J.abs().max().item()):
        raise ValueError(f"{name} must be skew-symmetric (J = -Jᵀ); max |J + Jᵀ| = {err:.3g}")
    return J


def fixed_structure(J, dim: int, dtype=None, device=None, also: tuple[str, ...] = ()) -> Tensor:
    """The structure matrix named by ``J``: ``"J1"``, ``"J2"`` or a (dim, dim) skew-symmetric tensor (copied).

    ``also``: further names the caller handles itself, listed in the error for an unknown name."""
    if isinstance(J, str):
        if J == "J1":
            return j1(dim, dtype=dtype, device=device)
        if J == "J2":
            return j2(dim, dtype=dtype, device=device)
        names = ", ".join(repr(n) for n in ("J1", "J2", *also))
        raise ValueError(f"J must be {names} or a skew-symmetric ({dim}, {dim}) tensor; got {J!r}")
    check_skew(J, dim)
    return J.detach().clone().to(**{k: v for k, v in {"dtype": dtype, "device": device}.items() if v})
