"""The one place that chooses the engine of a pass, from the field, the integrator, the schedule, the gradient
mode and the autograd context."""

from __future__ import annotations

import torch
from torch import Tensor

from ..autograd_context import eager_under_compile
from ..grid import Schedule
from ..integrators import Integrator
from .common import FusedSpec
from .continuous import ContinuousSolver
from .fused import FusedFlow, fused_applies, fused_forward
from .reference import ReversibleFlow, fused_allowed, reference_flow

__all__ = ["solve"]


def solve(
    field,
    integrator: Integrator | None,
    continuous_solver: ContinuousSolver | None,
    schedule: Schedule,
    gradient: str,
    y0: Tensor,
    fast: bool = True,
    trajectory: bool = False,
) -> tuple[Tensor, dict[str, float]]:
    """``(y(T) or the trajectory, statistics)`` of one pass, on the engine that applies:

    1. a torchdiffeq solve (``continuous_solver``) when there is no hamode integrator;
    2. the reference loop for trajectories (every state is kept anyway);
    3. the fused engine (backprop or reversible) where ``fast`` and it covers the field, the weights and the rule,
       and plain reverse-mode autograd is active (not torch.func transforms or forward-mode AD);
    4. the reference reversible flow for ``gradient="reversible"`` elsewhere, when a gradient is needed;
    5. the autograd reference loop otherwise (linear weights, autograd fields, hand-written rules, torch.func).

    A rule whose state has several copies (``integrator.copies``) runs on ``integrator.lift(y0)``; what is
    returned is ``integrator.output`` of its state (of each state, for trajectories).
    """
    if integrator is None:
        ys, stats = continuous_solver.solve(field, schedule, y0, trajectory, gradient)
        return (ys if trajectory else ys[-1]), stats
    if integrator.copies > 1:  # a rule with a state of several copies (reversible Runge-Kutta: the pair (y, z))
        out, stats = _solve(field, integrator, schedule, gradient, integrator.lift(y0), fast, trajectory)
        if trajectory:
            return torch.stack([integrator.output(state) for state in out.unbind(0)]), stats
        return integrator.output(out), stats
    return _solve(field, integrator, schedule, gradient, y0, fast, trajectory)


def _solve(field, integrator: Integrator, schedule: Schedule, gradient: str, y0: Tensor, fast: bool, trajectory: bool):
    if integrator.implicit:  # counted by the solve: iterations, and evaluations per iteration
        stats: dict[str, float] = {"nfe": 0, "steps": schedule.n_steps, "iterations": 0, "max_iterations": 0}
    else:
        stats = {"nfe": integrator.evaluations * schedule.n_steps, "steps": schedule.n_steps}
    if trajectory:
        states = [y0]
        reference_flow(field, integrator, schedule, y0, record=states.append, stats=stats)
        return torch.stack(states), stats
    spec = FusedSpec(field, integrator, schedule, gradient == "reversible", stats)
    needs_grad = torch.is_grad_enabled() and (y0.requires_grad or any(p.requires_grad for p in field.parameters()))
    if fused_allowed():
        if fast and fused_applies(field, integrator, spec.reversible):
            return _fused(spec, y0, needs_grad), stats
        if spec.reversible and needs_grad:
            return _reference_reversible(spec, y0, stats), stats
    return reference_flow(field, integrator, schedule, y0, stats=stats), stats


@eager_under_compile
def _fused(spec: FusedSpec, y0: Tensor, needs_grad: bool) -> Tensor:
    """The fused engine; torch.compile runs it eagerly (a graph break) instead of tracing its Function."""
    if needs_grad:
        return FusedFlow.apply(spec, y0, *spec.field.parameters())
    return fused_forward(spec, y0)


@eager_under_compile
def _reference_reversible(spec: FusedSpec, y0: Tensor, stats: dict | None = None) -> Tensor:
    return ReversibleFlow.apply(spec, stats, y0, *spec.field.parameters())
