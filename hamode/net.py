"""HamiltonianNet: a field, an integrator and a layer grid make the network's flow map."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .fields.base import Field, _check_int
from .fused import FusedFlow, fused_applies, fused_forward
from .grid import LayerGrid
from .integrators import Integrator, get_integrator, list_integrators

__all__ = ["GRADIENT_MODES", "HamiltonianNet"]

GRADIENT_MODES = ("backprop", "reversible", "adjoint")
_CONTINUOUS_PREFIX = "torchdiffeq:"


class HamiltonianNet(nn.Module):
    """The H-DNN flow map ``y0 -> y(T)``: the field on N layers of [0, T], discretised.

    The net walks the layers and hands each step ``field.layer(j)``, taking
    ``substeps`` steps of size ``h / substeps`` inside layer ``j``: a step never
    evaluates the field across a layer boundary (every stage of RK4 or Yoshida uses
    layer j's weights).

    Args:
        field: a :class:`hamode.fields.Field` (it gets this net's time grid).
        t_end: final time T > 0; the layer step is ``h = T / N``.
        integrator: a registered name (see :func:`hamode.list_integrators`), an
            :class:`Integrator`, ``"torchdiffeq:<method>"`` for a continuous solve, or
            None for the field's published default.
        substeps: steps per layer (>= 1); for fixed-grid torchdiffeq methods, grid points per layer.
        gradient: ``"backprop"`` (autograd through every step), ``"reversible"``
            (keeps only the output and rebuilds earlier states with the integrator's
            exact inverse step: memory flat in depth, needs a reversible integrator) or
            ``"adjoint"`` (torchdiffeq's ``odeint_adjoint``; torchdiffeq integrators only). The adjoint
            gives the gradient of the *continuous* problem, computed by a second ODE solve backwards in
            time; it is not the gradient of the discrete network that the forward solve computes. The two
            agree as the solver tolerance (or step) goes to zero and differ at large h or loose tolerances.
            Its saved state does not grow with depth.
        solver_options: options for torchdiffeq solvers (``rtol``, ``atol``, ...).
        fast: use the fused engine (:mod:`hamode.fused`: analytic VJPs, no per-op autograd
            graph) where it applies; ``False`` keeps the autograd reference path.
    """

    def __init__(
        self,
        field: Field,
        t_end: float,
        integrator: str | Integrator | None = None,
        substeps: int = 1,
        gradient: str = "backprop",
        solver_options: dict[str, Any] | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(fast, bool):
            raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
        self.fast = fast
        if not isinstance(field, Field):
            raise TypeError(f"field must be a hamode Field (see hamode.make_field), got {type(field).__name__}")
        self.field = field
        self.grid = LayerGrid(field.n_layers, t_end)
        field.grid = self.grid
        self.substeps = _check_int("substeps", substeps, 1)
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {', '.join(GRADIENT_MODES)}; got {gradient!r}")
        self.gradient = gradient
        if solver_options is not None and not isinstance(solver_options, dict):
            raise TypeError(f"solver_options must be a dict, got {type(solver_options).__name__}")
        self.solver_options = dict(solver_options or {})
        self.stats: dict[str, int] = {}
        self.set_integrator(integrator)

    # ---------------------------------------------------------------- configuration
    @property
    def t_end(self) -> float:
        return self.grid.t_end

    @property
    def h(self) -> float:
        """Layer length ``T / N``."""
        return self.grid.h

    @property
    def n_layers(self) -> int:
        return self.field.n_layers

    @property
    def continuous(self) -> bool:
        """True when the flow is solved by torchdiffeq."""
        return self.integrator is None

    def set_integrator(
        self, integrator: str | Integrator | None, substeps: int | None = None, gradient: str | None = None
    ) -> "HamiltonianNet":
        """Change the discretisation (e.g. evaluate a trained net under another integrator).

        Checks that the integrator fits the field and the gradient mode; returns self.
        """
        if substeps is not None:
            self.substeps = _check_int("substeps", substeps, 1)
        gradient = self.gradient if gradient is None else gradient
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {', '.join(GRADIENT_MODES)}; got {gradient!r}")
        if integrator is None:
            integrator = self.field.default_integrator
        if isinstance(integrator, str) and integrator.startswith(_CONTINUOUS_PREFIX):
            from .continuous import ContinuousSolver

            solver = ContinuousSolver(integrator[len(_CONTINUOUS_PREFIX) :], self.solver_options)
            if gradient == "reversible":
                raise ValueError(
                    "gradient='reversible' needs a reversible hamode integrator "
                    f"({', '.join(_reversible_names())}), not {integrator!r}"
                )
            self.integrator, self.continuous_solver = None, solver
            self.integrator_name = integrator
        else:
            step = get_integrator(integrator)
            if step.needs_separable and not self.field.separable:
                raise ValueError(
                    f"integrator {step.name!r} needs a separable field (dp/dt depending on q only, dq/dt on p only), "
                    f"but {type(self.field).__name__} is not separable: use euler, rk4 or midpoint, or a separable "
                    "architecture (H2, MS1, MS3)"
                )
            if gradient == "adjoint":
                raise ValueError(
                    "gradient='adjoint' is the continuous adjoint of a torchdiffeq solve: use "
                    "integrator='torchdiffeq:<method>', or gradient='backprop'/'reversible' for "
                    f"hamode's {step.name!r}"
                )
            if gradient == "reversible" and not step.reversible:
                raise ValueError(
                    f"gradient='reversible' needs an integrator with an exact inverse step; "
                    f"{step.name!r} has none. Reversible: {', '.join(_reversible_names())}"
                )
            self.integrator, self.continuous_solver = step, None
            self.integrator_name = step.name
        self.gradient = gradient
        return self

    def extra_repr(self) -> str:
        return (
            f"t_end={self.t_end}, integrator={self.integrator_name!r}, substeps={self.substeps}, "
            f"gradient={self.gradient!r}, fast={self.fast}"
        )

    # ---------------------------------------------------------------- evaluation
    def forward(self, y0: Tensor) -> Tensor:
        """``y(T)`` for ``y0`` of shape ``(..., dim)``; same shape out."""
        self.field.check_state(y0, "y0")
        if self.continuous:
            return self.continuous_solver.solve(self, y0, trajectory=False)[-1]
        reversible = self.gradient == "reversible"
        if self.fast and fused_applies(self, reversible):
            params = tuple(self.field.parameters())
            if torch.is_grad_enabled() and (y0.requires_grad or any(p.requires_grad for p in params)):
                return FusedFlow.apply(self, reversible, y0, *params)
            return fused_forward(self, y0)
        if reversible and torch.is_grad_enabled():
            params = tuple(self.field.parameters())
            return _ReversibleFlow.apply(self, y0, *params)
        return self._flow(y0, self.field.weight_table())

    def trajectory(self, y0: Tensor) -> Tensor:
        """All states: ``(N * substeps + 1, ..., dim)`` for hamode integrators; the N + 1
        layer-boundary states for torchdiffeq ones."""
        self.field.check_state(y0, "y0")
        if self.continuous:
            return self.continuous_solver.solve(self, y0, trajectory=True)
        states = [y0]
        self._flow(y0, self.field.weight_table(), states.append)
        return torch.stack(states)

    def run_layers(self, y0: Tensor, at_boundary: Callable[[int, Tensor], Tensor]) -> Tensor:
        """Integrate while calling ``y = at_boundary(j, y)`` at every layer boundary ``t_j``, j = 0..N.

        Used by diagnostics to tap or perturb the boundary states; the result is ``y(T)``.
        """
        self.field.check_state(y0, "y0")
        y = at_boundary(0, y0)
        if self.continuous:
            for j in range(self.n_layers):
                y = self.continuous_solver.solve_layer(self, j, y)
                y = at_boundary(j + 1, y)
            return y
        return self._flow(y, self.field.weight_table(), at_boundary=at_boundary)

    def _flow(
        self,
        y: Tensor,
        table: dict[str, Tensor],
        record: Callable[[Tensor], Any] | None = None,
        at_boundary: Callable[[int, Tensor], Tensor] | None = None,
    ) -> Tensor:
        """The hamode-integrator loop: ``record(y)`` after every step, ``y = at_boundary(j + 1, y)`` after layer j."""
        step = self.integrator.step
        dt = self.grid.h / self.substeps
        for j in range(self.n_layers):
            f = self.field.layer(j, table)
            t0 = self.grid.start(j)
            for s in range(self.substeps):
                y = step(f, t0 + s * dt, y, dt)
                if record is not None:
                    record(y)
            if at_boundary is not None:
                y = at_boundary(j + 1, y)
        return y

    def function_evaluations(self) -> float:
        """Right-hand-side evaluations of one forward pass (of the last solve for torchdiffeq)."""
        if self.continuous:
            return float(self.stats.get("nfe", float("nan")))
        return self.integrator.evaluations * self.n_layers * self.substeps

    def regularization(self, alpha: float = 1.0) -> Tensor:
        """The smoothness penalty ``alpha * h/2 * Σ_j ‖K_j - K_{j-1}‖² + ‖b_j - b_{j-1}‖²`` (L4DC eq. 12)."""
        from .regularization import smoothness_penalty

        return smoothness_penalty(self.field, self.grid.h, alpha)


def _reversible_names() -> list[str]:
    return [n for n in list_integrators() if get_integrator(n).reversible]


class _ReversibleFlow(torch.autograd.Function):
    """Backprop with O(1) stored states: the backward rebuilds each state with the inverse step.

    Forward runs without a graph and saves only ``y(T)``. Backward walks the steps in
    reverse: ``y_k = inverse_step(y_{k+1})``, then re-runs step k on a detached ``y_k``
    with autograd to get the vector-Jacobian product for the state and for the layer's
    own weights (a slice of the weight table, so each step's work is independent of the
    depth). The per-layer weight cotangents are mapped back to the parameters once.
    """

    @staticmethod
    def forward(ctx, net: HamiltonianNet, y0: Tensor, *params: Tensor) -> Tensor:
        with torch.no_grad():
            yN = net._flow(y0, net.field.weight_table())
        ctx.net = net
        ctx.save_for_backward(yN)
        return yN

    @staticmethod
    def backward(ctx, g: Tensor):
        net: HamiltonianNet = ctx.net
        (yN,) = ctx.saved_tensors
        field, step = net.field, net.integrator
        params = [p for p in field.parameters()]
        with torch.enable_grad():
            table = field.weight_table()
        keys = [k for k, v in table.items() if v.requires_grad]
        flat = {k: table[k].detach() for k in table}
        acc = {k: torch.zeros_like(flat[k]) for k in keys}
        stacked = set(field.stacked_keys)
        dt = net.grid.h / net.substeps
        y = yN.detach()
        for j in reversed(range(net.n_layers)):
            lo, hi = field.node_range(j)
            local = {k: (v[lo:hi] if k in stacked else v) for k, v in flat.items()}
            leaves = {k: local[k].clone().requires_grad_(True) for k in keys}
            t0 = net.grid.start(j)
            with torch.enable_grad():
                f = field.layer_from_local(j, {**local, **leaves})
                for s in reversed(range(net.substeps)):
                    t = t0 + s * dt
                    with torch.no_grad():
                        y_prev = step.inverse_step(f, t, y, dt)
                    y_in = y_prev.detach().requires_grad_(True)
                    y_out = step.step(f, t, y_in, dt)
                    grads = torch.autograd.grad(y_out, [y_in, *leaves.values()], g, allow_unused=True)
                    g = grads[0]
                    for k, gk in zip(leaves, grads[1:]):
                        if gk is not None:
                            if k in stacked:
                                acc[k][lo:hi] += gk
                            else:
                                acc[k] += gk
                    y = y_prev
        param_grads: list[Tensor | None] = [None] * len(params)
        if keys:
            wanted = [i for i, p in enumerate(params) if p.requires_grad]
            if wanted:
                got = torch.autograd.grad(
                    [table[k] for k in keys], [params[i] for i in wanted], [acc[k] for k in keys], allow_unused=True
                )
                for i, gi in zip(wanted, got):
                    param_grads[i] = gi
        return (None, g, *param_grads)
