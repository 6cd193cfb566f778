"""The engines: every path walks one [`Schedule`][hamode.Schedule] with one integrator.

An engine is a function of (field, integrator, schedule, y0) that returns the result (and, for
continuous solves, the solver statistics); none writes into the net or the field. Paths:

- **reference**: autograd through [`Integrator.step()`][hamode.integrators.Integrator.step] (any field, any
  integrator, linear weights, trajectories, taps for diagnostics). Composes with everything PyTorch offers:
  ``torch.compile``, ``torch.func`` transforms, forward-mode AD, autocast and double backward.
- **reference reversible**: [`ReversibleFlow`][hamode.engines.ReversibleFlow], the reference step with the exact
  inverse step; memory flat in depth.
- **fused** (``hamode.engines.fused``): analytic VJPs, backprop or reversible; the default where it applies.

[`fused_allowed()`][hamode.engines.fused_allowed] says when the fused ``autograd.Function`` may run: it is routed to
the reference path under ``torch.func`` transforms (vmap, grad, jacrev, jacfwd) and forward-mode AD, which it does
not implement; under ``torch.compile`` it runs eagerly behind a graph break; a backward with
``create_graph=True`` recomputes on the reference path ([`reference_gradients()`][hamode.engines.reference_gradients]).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from ..autograd_context import plain_autograd
from .common import FusedSpec, parameter_gradients, remember_weights, weights_of_the_forward

__all__ = ["ReversibleFlow", "fused_allowed", "reference_flow", "reference_gradients"]


def reference_flow(
    field,
    integrator,
    schedule,
    y: Tensor,
    table: dict[str, Tensor] | None = None,
    record: Callable[[Tensor], Any] | None = None,
    at_boundary: Callable[[int, Tensor], Tensor] | None = None,
    stats: dict | None = None,
) -> Tensor:
    """The autograd reference loop: ``record(y)`` after every step, ``y = at_boundary(j + 1, y)`` after layer j.

    An implicit integrator adds its iteration counts to ``stats`` (when given)."""
    if table is None:
        table = field.weight_table()
    step, grid = integrator.step, schedule.grid
    if integrator.implicit:
        step = functools.partial(_implicit_step, integrator.step, stats)
    for j in range(schedule.n_layers):
        f = field.layer(j, table, grid)
        for _, t, dt in schedule.layer_steps(j):
            y = step(f, t, y, dt)
            if record is not None:
                record(y)
        if at_boundary is not None:
            y = at_boundary(j + 1, y)
    return y


def _implicit_step(step, stats, f, t, y, dt):
    return step(f, t, y, dt, stats)


def reference_gradients(spec: FusedSpec, y0: Tensor, g: Tensor, params: list[Tensor]) -> tuple:
    """``(∂/∂y0, ∂/∂params)`` of ``<g, flow(y0)>`` on the reference path, with a graph (``create_graph=True``).

    The gradient engines call this from their backward when it runs with ``create_graph=True``, so
    second derivatives (Hessian-vector products, gradient penalties) are those of the reference path.
    """
    with torch.enable_grad():
        y_in = y0 if y0.requires_grad else y0.detach().requires_grad_(True)
        out = reference_flow(spec.field, spec.integrator, spec.schedule, y_in)
        wanted = [i for i, p in enumerate(params) if p.requires_grad]
        got = torch.autograd.grad(
            out, [y_in, *(params[i] for i in wanted)], g.reshape(out.shape), create_graph=True, allow_unused=True
        )
    param_grads: list[Tensor | None] = [None] * len(params)
    for i, gi in zip(wanted, got[1:]):
        param_grads[i] = gi
    gy = got[0] if got[0] is not None else torch.zeros_like(y0)
    return (gy, *param_grads)


def fused_allowed() -> bool:
    """Whether a hand-written ``autograd.Function`` (the fused engine, the reversible flows) may run here: not
    inside torch.func transforms or forward-mode AD, which do not see its backward."""
    return plain_autograd()


class ReversibleFlow(torch.autograd.Function):
    """Backprop with O(1) stored states on the reference path: the backward rebuilds each state with the inverse step.

    ``ReversibleFlow.apply(spec, stats, y0, *field_parameters)`` (``stats``: a dict for an implicit rule's
    iteration counts, or None). Forward runs without a graph and saves
    only ``y(T)`` (and ``y0``). Backward walks the steps in reverse: ``y_k = inverse_step(y_{k+1})``,
    then re-runs step k on a detached ``y_k`` with autograd to get the vector-Jacobian product for the
    state and for the layer's own weights (a slice of the weight table, so each step's work is
    independent of the depth). The per-layer weight cotangents are mapped back to the parameters once.
    """

    @staticmethod
    def forward(ctx, spec: FusedSpec, stats: dict | None, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            yN = reference_flow(spec.field, spec.integrator, spec.schedule, y0, stats=stats)
        ctx.spec = spec
        remember_weights(ctx, spec.field)
        ctx.save_for_backward(y0, yN)
        return yN

    @staticmethod
    def backward(ctx, g: Tensor):
        with weights_of_the_forward(ctx, "reversible"):  # the weights the forward used, whatever the module holds now
            return ReversibleFlow._backward(ctx, g)

    @staticmethod
    def _backward(ctx, g: Tensor):
        spec: FusedSpec = ctx.spec
        field, step, schedule = spec.field, spec.integrator, spec.schedule
        y0, yN = ctx.saved_tensors
        params = list(field.parameters())
        if torch.is_grad_enabled():
            return (None, None, *reference_gradients(spec, y0, g, params))
        with torch.enable_grad():
            table = field.weight_table()
        keys = [k for k, v in table.items() if v.requires_grad]
        flat = {k: table[k].detach() for k in table}
        acc = {k: torch.zeros_like(flat[k]) for k in keys}
        direct = [p for p in field.direct_parameters() if p.requires_grad]
        direct_acc = [torch.zeros_like(p) for p in direct]
        stacked = set(field.stacked_keys)
        y = yN.detach()
        for j in reversed(range(schedule.n_layers)):
            lo, hi = field.node_range(j)
            local = {k: (v[lo:hi] if k in stacked else v) for k, v in flat.items()}
            leaves = {k: local[k].clone().requires_grad_(True) for k in keys}
            with torch.enable_grad():
                f = field.layer_from_local(j, {**local, **leaves}, schedule.grid)
                for _, t, dt in reversed(schedule.layer_steps(j)):
                    with torch.no_grad():
                        y_prev = step.inverse_step(f, t, y, dt)
                    y_in = y_prev.detach().requires_grad_(True)
                    y_out = step.step(f, t, y_in, dt)
                    grads = torch.autograd.grad(y_out, [y_in, *leaves.values(), *direct], g, allow_unused=True)
                    g = grads[0]
                    for acc_p, gp in zip(direct_acc, grads[1 + len(leaves) :]):
                        if gp is not None:
                            acc_p += gp
                    for k, gk in zip(leaves, grads[1 : 1 + len(leaves)]):
                        if gk is not None:
                            if k in stacked:
                                acc[k][lo:hi] += gk
                            else:
                                acc[k] += gk
                    y = y_prev
        param_grads = parameter_gradients(table, acc, params)
        for p, gp in zip(direct, direct_acc):
            i = next(i for i, q in enumerate(params) if q is p)
            param_grads[i] = gp if param_grads[i] is None else param_grads[i] + gp
        return (None, None, g, *param_grads)
