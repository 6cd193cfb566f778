"""The smoothness regulariser of L4DC (eq. 12-13)."""

from __future__ import annotations

import torch
from torch import Tensor

from .fields.base import Field

__all__ = ["smoothness_penalty"]


def smoothness_penalty(field: Field, h: float, alpha: float = 1.0) -> Tensor:
    """``alpha * (h / 2) * Σ_{j=1}^{N-1} (‖K_j - K_{j-1}‖_F² + ‖b_j - b_{j-1}‖²)``.

    Sums over every weight the field lists in ``smoothness_keys`` (all K's and b's:
    K_p, K_q, b_p, b_q for H2; the skew K for MS2; ...). It is zero for time-invariant
    weights; for ``weights="linear"`` it penalises consecutive nodes.

    Args:
        field: the field.
        h: the layer step ``T / N``.
        alpha: the weight α.
    """
    if not isinstance(field, Field):
        raise TypeError(f"field must be a hamode Field, got {type(field).__name__}")
    table = field.weight_table()
    total: Tensor | None = None
    for key in field.smoothness_keys:
        w = table[key]
        if w.shape[0] < 2:
            continue
        term = (w[1:] - w[:-1]).pow(2).sum()
        total = term if total is None else total + term
    if total is None:
        ref = field.reference_tensor()
        return torch.zeros(
            (), dtype=ref.dtype if ref is not None else None, device=ref.device if ref is not None else None
        )
    return (alpha * h / 2.0) * total
