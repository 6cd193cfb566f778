"""What the gradient engines share: the description of one pass, and the checks and gradient formation that
both the fused and the reference engines use."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
from dataclasses import dataclass

import torch
from torch import Tensor

from ..grid import Schedule
from ..integrators import Integrator

__all__ = [
    "FusedSpec",
    "bound_to",
    "check_versions",
    "parameter_gradients",
    "pass_tensors",
    "remember_weights",
    "tensor_versions",
    "weights_of_the_forward",
]


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


def pass_tensors(field) -> dict[str, Tensor]:
    """The parameters and buffers a pass reads, by name, as the field holds them now: under
    ``torch.func.functional_call`` these are the substitutes, which the module gives back before the backward."""
    return dict(itertools.chain(field.named_parameters(), field.named_buffers()))


def tensor_versions(tensors: dict[str, Tensor]) -> list[int]:
    """The version counters of the tensors a pass read (see [`pass_tensors()`][hamode.engines.pass_tensors])."""
    return [t._version for t in tensors.values()]


def check_versions(field, tensors: dict[str, Tensor], versions: list[int], what: str) -> None:
    """Raise if a tensor the pass read (``tensors``, from [`pass_tensors()`][hamode.engines.pass_tensors] at its
    forward) changed in place
    since ``versions`` were taken. The tensors compared are those the forward used, not the module's current
    ones, so a ``functional_call`` forward is checked against its own weights."""
    now = tensor_versions(tensors)
    if now != versions:
        changed = [n for n, a, b in zip(tensors, now, versions) if a != b]
        raise RuntimeError(
            f"{', '.join(changed)} of the field {type(field).__name__} was modified in place between the forward and "
            f"the backward pass of a {what} HamiltonianNet; call backward before changing it"
        )


@contextlib.contextmanager
def bound_to(field, tensors: dict[str, Tensor]):
    """Within the block, ``field`` reads ``tensors`` (those its forward read): a backward run after
    ``torch.func.functional_call`` has put the module's own weights back differentiates the weights the forward
    used. Nothing is swapped when the field holds them already."""
    current = pass_tensors(field)
    if current.keys() == tensors.keys() and all(current[k] is v for k, v in tensors.items()):
        yield
        return
    from torch.nn.utils.stateless import _reparametrize_module  # what torch.func.functional_call itself uses

    with _reparametrize_module(field, tensors):
        yield


def remember_weights(ctx, field) -> None:
    """At a custom Function's forward: note the tensors the pass read and their versions (see
    `weights_of_the_forward()`)."""
    ctx.tensors = pass_tensors(field)  # a functional_call's substitutes too
    ctx.versions = tensor_versions(ctx.tensors)


@contextlib.contextmanager
def weights_of_the_forward(ctx, what: str):
    """At its backward: refuse if those tensors changed in place, and bind the field to them for the block."""
    field = ctx.spec.field
    check_versions(field, ctx.tensors, ctx.versions, what)
    with bound_to(field, ctx.tensors):
        yield
