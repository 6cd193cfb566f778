"""What the gradient engines share: the description of one pass, and the checks and gradient formation that
both the fused and the reference engines use."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor

from ..grid import Schedule
from ..integrators import Integrator

__all__ = ["FusedSpec", "check_versions", "parameter_gradients", "tensor_versions"]


@dataclass(frozen=True)
class FusedSpec:
    """What one fused pass runs: the field, the integrator and the schedule, fixed at the forward.

    The backward reads only this (never the net), so changing a net's integrator, substeps or
    gradient mode between a forward and its backward cannot change the gradient of that forward.
    """

    field: torch.nn.Module
    integrator: Integrator
    schedule: Schedule
    reversible: bool = False
    stats: dict | None = dataclasses.field(default=None, compare=False, repr=False)
    """Where an implicit rule adds its iteration counts during the forward (None: not counted)."""


def tensor_versions(field) -> list[int]:
    """The version counters of the field's parameters and buffers: what a pass reads, and whose in-place
    change between its forward and its backward the gradient engines refuse."""
    return [t._version for t in (*field.parameters(), *field.buffers())]


def parameter_gradients(table: dict[str, Tensor], grads: dict[str, Tensor], params: list[Tensor]) -> list:
    """The parameters' gradients from the gradients of the weight-table entries (one autograd call through the
    derived weights: skew K, scattered sparse K, J = A - Aᵀ, ...); None for parameters that need none."""
    keys = [key for key in grads if table[key].requires_grad]
    wanted = [i for i, p in enumerate(params) if p.requires_grad]
    out: list[Tensor | None] = [None] * len(params)
    if keys and wanted:
        got = torch.autograd.grad(
            [table[key] for key in keys], [params[i] for i in wanted], [grads[key] for key in keys], allow_unused=True
        )
        for i, gi in zip(wanted, got):
            out[i] = gi
    return out


def check_versions(field, versions: list[int], what: str) -> None:
    """Raise if a parameter or buffer of ``field`` changed in place since ``versions`` were taken."""
    now = tensor_versions(field)
    if now != versions:
        names = [n for n, _ in field.named_parameters()] + [n for n, _ in field.named_buffers()]
        changed = [n for n, a, b in zip(names, now, versions) if a != b] or ["(the set of tensors)"]
        raise RuntimeError(
            f"{', '.join(changed)} of the field {type(field).__name__} was modified in place between the forward and "
            f"the backward pass of a {what} HamiltonianNet; call backward before changing it"
        )
