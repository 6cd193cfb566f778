"""HamiltonianNet: a field, an integrator and a layer schedule make the network's flow map."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from dataclasses import field as dc_field
from typing import Literal

import torch
from torch import Tensor, nn

from .engines import ContinuousSolver, reference_flow, solve
from .fields.base import Field
from .grid import LayerGrid, Schedule
from .integrators import Integrator, get_integrator, list_integrators
from .validation import check_int

__all__ = ["GRADIENT_MODES", "GradientMode", "HamiltonianNet", "OptionValue", "Solution", "SolverOptions"]

GRADIENT_MODES = ("backprop", "reversible", "adjoint")
GradientMode = Literal["backprop", "reversible", "adjoint"]
_CONTINUOUS_PREFIX = "torchdiffeq:"
OptionValue = bool | int | float | str | list[float] | None
"""A solver option's value: plain data only (a config or checkpoint can put nothing else there)."""
SolverOptions = dict[str, OptionValue | dict[str, OptionValue]]
"""``solver_options``: ``rtol``, ``atol``, ``method``, ... and torchdiffeq's nested ``options`` dict."""


@dataclass(frozen=True)
class Solution:
    """What [`HamiltonianNet.solve()`][hamode.HamiltonianNet.solve] returns: the states and the solver statistics.

    ``ys``: ``y(T)``, or the trajectory with ``trajectory=True``. ``stats``: ``nfe`` (right-hand-side
    evaluations of the forward solve; a half-field counts 1/2) and ``steps``; torchdiffeq solves add
    ``accepted_steps``/``rejected_steps`` (adaptive methods), and ``nfe_backward`` once an adjoint backward
    has run. Counts of per-layer solves are summed over the layers.
    """

    ys: Tensor
    stats: dict[str, float] = dc_field(default_factory=dict)


@dataclass(frozen=True)
class _Discretisation:
    """The net's discretisation, replaced whole by
    [`HamiltonianNet.set_integrator()`][hamode.HamiltonianNet.set_integrator] (never half-set)."""

    integrator: Integrator | None
    continuous_solver: ContinuousSolver | None
    name: str
    schedule: Schedule
    gradient: str


class HamiltonianNet(nn.Module):
    """The H-DNN flow map ``y0 -> y(T)``: the field on N layers of [0, T], discretised.

    The net walks its [`Schedule`][hamode.Schedule] (N layers × ``substeps`` steps of size
    ``h / substeps``) and hands each step ``field.layer(j)``: a step never evaluates the field
    across a layer boundary (every stage of RK4 or Yoshida uses layer j's weights). The net owns
    its grid; the field keeps none, so one field can be shared by several nets.

    Args:
        field: a [`Field`][hamode.fields.Field].
        t_end: final time T > 0; the layer step is ``h = T / N``.
        integrator: a registered name (see [`list_integrators()`][hamode.integrators.list_integrators]), an
            [`Integrator`][hamode.integrators.Integrator], ``"torchdiffeq:<method>"`` for a continuous solve, or
            None for the field's published default.
        substeps: steps per layer (>= 1); for fixed-grid torchdiffeq methods, grid points per layer.
        gradient: ``"backprop"`` (autograd through every step), ``"reversible"`` (keeps only the
            output and rebuilds earlier states with the integrator's exact inverse step: memory flat in
            depth, needs a reversible integrator) or ``"adjoint"`` (torchdiffeq's ``odeint_adjoint``;
            torchdiffeq integrators only). The adjoint gives the gradient of the *continuous* problem,
            computed by a second ODE solve backwards in time; it is not the gradient of the discrete
            network that the forward solve computes. The two agree as the solver tolerance (or step) goes
            to zero and differ at large h or loose tolerances. Its saved state does not grow with depth.
        solver_options: options for torchdiffeq solvers (``rtol``, ``atol``, ...).
        fast: use the fused engine ([`engines`][hamode.engines]: analytic VJPs, no per-op autograd graph)
            where it applies; ``False`` keeps the autograd reference path. The fused engine never
            changes numbers: under ``torch.func`` transforms and forward-mode AD the net runs the
            reference path, under ``torch.compile`` the fused call runs eagerly (a graph break), a
            backward with ``create_graph=True`` recomputes on the reference path, and under autocast
            the flow is computed in the parameters' dtype (see `forward()`).
    """

    def __init__(
        self,
        field: Field,
        t_end: float,
        integrator: str | Integrator | None = None,
        substeps: int = 1,
        gradient: GradientMode = "backprop",
        solver_options: SolverOptions | None = None,
        fast: bool = True,
    ) -> None:
        super().__init__()
        if not isinstance(fast, bool):
            raise TypeError(f"fast must be a bool, got {type(fast).__name__}")
        if not isinstance(field, Field):
            raise TypeError(f"field must be a hamode Field (see hamode.make_field), got {type(field).__name__}")
        if solver_options is not None and not isinstance(solver_options, dict):
            raise TypeError(f"solver_options must be a dict, got {type(solver_options).__name__}")
        self.fast = fast
        self.field = field
        self.grid = LayerGrid(field.n_layers, t_end)
        self.solver_options = dict(solver_options or {})
        self.stats: dict[str, float] = {}
        self._disc = self._discretisation(integrator, check_int("substeps", substeps, 1), gradient)

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
    def schedule(self) -> Schedule:
        """The steps every engine walks (layers × substeps)."""
        return self._disc.schedule

    @property
    def integrator(self) -> Integrator | None:
        """The hamode integrator (None for a torchdiffeq solve)."""
        return self._disc.integrator

    @property
    def continuous_solver(self):
        """The [`ContinuousSolver`][hamode.engines.ContinuousSolver] of a torchdiffeq solve (None otherwise)."""
        return self._disc.continuous_solver

    @property
    def integrator_name(self) -> str:
        return self._disc.name

    @property
    def substeps(self) -> int:
        return self._disc.schedule.substeps

    @substeps.setter
    def substeps(self, value: int) -> None:
        self.set_integrator(self._disc.integrator or self._disc.name, substeps=value)

    @property
    def gradient(self) -> str:
        return self._disc.gradient

    @gradient.setter
    def gradient(self, value: str) -> None:
        self.set_integrator(self._disc.integrator or self._disc.name, gradient=value)

    @property
    def continuous(self) -> bool:
        """True when the flow is solved by torchdiffeq."""
        return self._disc.integrator is None

    def set_integrator(
        self,
        integrator: str | Integrator | None,
        substeps: int | None = None,
        gradient: GradientMode | None = None,
    ) -> "HamiltonianNet":
        """Change the discretisation (e.g. evaluate a trained net under another integrator).

        Checks that the integrator fits the field and the gradient mode, then replaces the whole
        discretisation at once: a call that raises changes nothing. A backward already pending from
        an earlier forward still uses that forward's discretisation. Returns self.
        """
        substeps = self.substeps if substeps is None else check_int("substeps", substeps, 1)
        self._disc = self._discretisation(integrator, substeps, self.gradient if gradient is None else gradient)
        return self

    def _discretisation(self, integrator, substeps: int, gradient: str) -> _Discretisation:
        if gradient not in GRADIENT_MODES:
            raise ValueError(f"gradient must be one of {', '.join(GRADIENT_MODES)}; got {gradient!r}")
        schedule = Schedule(self.grid, substeps)
        if integrator is None:
            integrator = self.field.default_integrator
        if isinstance(integrator, str) and integrator.startswith(_CONTINUOUS_PREFIX):
            solver = ContinuousSolver(integrator[len(_CONTINUOUS_PREFIX) :], self.solver_options)
            if gradient == "reversible":
                raise ValueError(
                    "gradient='reversible' needs a reversible hamode integrator "
                    f"({', '.join(_reversible_names())}), not {integrator!r}"
                )
            return _Discretisation(None, solver, integrator, schedule, gradient)
        step = get_integrator(integrator)
        if step.needs_separable and not self.field.separable:
            raise ValueError(
                f"integrator {step.name!r} needs a separable field (dp/dt depending on q only, dq/dt on p only), "
                f"but {type(self.field).__name__} is not separable: use one of "
                f"{', '.join(n for n in list_integrators() if not get_integrator(n).needs_separable)} "
                f"(symplectic on every field: {', '.join(_implicit_symplectic_names())}) "
                f"or a separable architecture ({', '.join(_separable_architectures())})"
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
        return _Discretisation(step, None, step.name or type(step).__name__, schedule, gradient)

    def extra_repr(self) -> str:
        return (
            f"t_end={self.t_end}, integrator={self.integrator_name!r}, substeps={self.substeps}, "
            f"gradient={self.gradient!r}, fast={self.fast}"
        )

    # ---------------------------------------------------------------- evaluation
    def forward(self, y0: Tensor) -> Tensor:
        """``y(T)`` for ``y0`` of shape ``(..., dim)``; same shape out.

        Under autocast the flow is computed in the parameters' dtype with autocast off (an input of
        lower precision is cast up): the ODE solve keeps full precision, the layers around it keep
        autocast. The solver statistics of the call are kept in `stats`.
        """
        solution = self.solve(y0)
        self.stats = solution.stats
        return solution.ys

    def solve(self, y0: Tensor, trajectory: bool = False) -> Solution:
        """The final state (or, with ``trajectory``, all states) and the solver statistics."""
        autocast = isinstance(y0, Tensor) and _autocast_on(y0.device.type)
        y0 = self._input(y0, autocast)
        if autocast:
            with torch.autocast(y0.device.type, enabled=False):
                return self._solve(y0, trajectory)
        return self._solve(y0, trajectory)

    def _input(self, y0: Tensor, autocast: bool) -> Tensor:
        if autocast and y0.is_floating_point():
            ref = self.field.reference_tensor()
            if ref is not None and y0.dtype != ref.dtype and y0.device == ref.device:
                y0 = y0.to(ref.dtype)
        self.field.check_state(y0, "y0")
        return y0

    def _solve(self, y0: Tensor, trajectory: bool) -> Solution:
        disc = self._disc
        ys, stats = solve(
            self.field, disc.integrator, disc.continuous_solver, disc.schedule, disc.gradient, y0, self.fast, trajectory
        )
        return Solution(ys, stats)

    def trajectory(self, y0: Tensor) -> Tensor:
        """All states: ``(N * substeps + 1, ..., dim)`` for hamode integrators; the N + 1
        layer-boundary states for torchdiffeq ones."""
        solution = self.solve(y0, trajectory=True)
        self.stats = solution.stats
        return solution.ys

    def run_layers(self, y0: Tensor, at_boundary: Callable[[int, Tensor], Tensor]) -> Tensor:
        """Integrate while calling ``y = at_boundary(j, y)`` at every layer boundary ``t_j``, j = 0..N.

        Used by diagnostics to tap or perturb the boundary states; the result is ``y(T)`` (autograd
        reference path; torchdiffeq solves one layer at a time, statistics summed over the layers).
        """
        y0 = self._input(y0, isinstance(y0, Tensor) and _autocast_on(y0.device.type))
        disc = self._disc
        y = at_boundary(0, y0)
        if disc.integrator is None:
            total: dict[str, float] = {}
            for j in range(self.n_layers):
                y, stats = disc.continuous_solver.solve_layer(self.field, disc.schedule, j, y, disc.gradient)
                for key, value in stats.items():
                    total[key] = total.get(key, 0) + value
                y = at_boundary(j + 1, y)
            self.stats = total
            return y
        rule = disc.integrator
        if rule.copies > 1:  # the tap reads the pair's y and its change is applied to both copies
            state = rule.lift(y)
            out = reference_flow(
                self.field,
                rule,
                disc.schedule,
                state,
                at_boundary=lambda j, s: rule.perturb(s, at_boundary(j, rule.output(s))),
            )
            return rule.output(out)
        return reference_flow(self.field, rule, disc.schedule, y, at_boundary=at_boundary)

    def rhs(self, t: Tensor | float, y: Tensor) -> Tensor:
        """The field's right-hand side ``f(t, y)`` on this net's layer grid."""
        return self.field.forward(t, y, self.grid)

    def hamiltonian(self, t: Tensor | float, y: Tensor) -> Tensor:
        """The field's energy ``H(t, y)`` on this net's layer grid."""
        return self.field.hamiltonian(t, y, self.grid)

    def function_evaluations(self) -> float:
        """Right-hand-side evaluations of one forward pass (of the last solve for torchdiffeq and implicit rules)."""
        if self.continuous or self.integrator.implicit:
            return float(self.stats.get("nfe", float("nan")))
        return self.integrator.evaluations * self.schedule.n_steps

    def regularization(self, alpha: float = 1.0) -> Tensor:
        """The smoothness penalty ``alpha * h/2 * Σ_j ‖K_j - K_{j-1}‖² + ‖b_j - b_{j-1}‖²`` (L4DC eq. 12)."""
        from .regularization import smoothness_penalty

        return smoothness_penalty(self.field, self.grid.h, alpha)


def _autocast_on(device_type: str) -> bool:
    try:
        return torch.is_autocast_enabled(device_type)
    except RuntimeError:  # a device type autocast does not know (meta, ...)
        return False


def _separable_architectures() -> list[str]:
    from .architectures import architecture_info, list_architectures

    return [a for a in list_architectures() if architecture_info(a).field_class.separable]


def _implicit_symplectic_names() -> list[str]:
    return [n for n in list_integrators() if get_integrator(n).implicit and get_integrator(n).symplectic]


def _reversible_names() -> list[str]:
    return [n for n in list_integrators() if get_integrator(n).reversible]
