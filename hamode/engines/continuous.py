"""The torchdiffeq adapter: solve a field as a continuous-time ODE, aligned with its layers.

Fixed-step methods get the layer grid itself as their time grid (``substeps`` points
per layer, through a grid constructor) with ``perturb=True``, so a step that ends on a
boundary evaluates its last stage just before it and the next step starts just after
it: every stage uses its own layer's weights. Adaptive methods get the inner layer
boundaries as ``jump_t``. ``step_size=h`` is never used (it can add a spurious step).
"""

from __future__ import annotations

import importlib
import math
import numbers
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from .common import bound_to, pass_tensors

if TYPE_CHECKING:
    from ..grid import Schedule

__all__ = [
    "ADAPTIVE_METHODS",
    "FIXED_METHODS",
    "MAX_NUM_STEPS",
    "ContinuousSolveError",
    "ContinuousSolver",
    "list_torchdiffeq_methods",
]

FIXED_METHODS = ("euler", "midpoint", "rk4", "heun2", "heun3", "explicit_adams", "implicit_adams", "fixed_adams")
ADAPTIVE_METHODS = ("dopri5", "dopri8", "bosh3", "fehlberg2", "adaptive_heun")

_POSITIVE = (numbers.Real,)
# option -> (allowed types, check, description)
_COMMON_OPTIONS: dict[str, tuple[tuple[type, ...], Callable[[Any], bool], str]] = {
    "rtol": (_POSITIVE, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "atol": (_POSITIVE, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "adjoint_rtol": (_POSITIVE, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "adjoint_atol": (_POSITIVE, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
}
_ADAPTIVE_OPTIONS = {
    "first_step": (_POSITIVE, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "max_step": (_POSITIVE, lambda v: math.isfinite(v) and v > 0, "a finite number > 0"),
    "min_step": (_POSITIVE, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0"),
    "safety": (_POSITIVE, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "ifactor": (_POSITIVE, lambda v: math.isfinite(v) and v >= 1, "a finite number >= 1"),
    "dfactor": (_POSITIVE, lambda v: 0 < v <= 1, "a number in (0, 1]"),
    "max_num_steps": (numbers.Integral, lambda v: v >= 1, "an int >= 1"),
    "norm": (object, callable, "a callable norm(tensor) -> scalar"),
}
_FIXED_OPTIONS = {
    "interp": (str, lambda v: v in ("linear", "cubic"), "'linear' or 'cubic'"),
    "max_iters": (numbers.Integral, lambda v: v >= 1, "an int >= 1 (implicit_adams)"),
}
_SET_BY_HAMODE = ("step_size", "grid_constructor", "perturb", "jump_t", "step_t", "grid_points")


def _torchdiffeq():
    try:
        return importlib.import_module("torchdiffeq")
    except ImportError as e:  # pragma: no cover - torchdiffeq is a dependency
        raise ImportError("continuous solves need the package 'torchdiffeq' (pip install torchdiffeq)") from e


def list_torchdiffeq_methods() -> list[str]:
    """torchdiffeq methods usable as ``integrator="torchdiffeq:<method>"``."""
    return list(FIXED_METHODS + ADAPTIVE_METHODS)


class _Dynamics(nn.Module):
    """The field on a grid as torchdiffeq sees it: counts function evaluations (forward and adjoint solves)
    into the solve's own statistics dict (returned to the caller, never written onto the net or the field)."""

    def __init__(self, field: nn.Module, grid, stats: dict[str, int]) -> None:
        super().__init__()
        self.field = field
        self.grid = grid
        self.stats = stats
        self.phase = "forward"
        # the weights of this solve (a functional_call's substitutes too): the adjoint's backward solve, run after
        # functional_call has given the module its own weights back, must evaluate the same field
        self.tensors = pass_tensors(field)

    def forward(self, t: Tensor, y: Tensor) -> Tensor:
        if self.phase == "forward":  # the solve's own weights are the module's during the forward solve
            self.stats["nfe"] = self.stats.get("nfe", 0) + 1
            return self.field.forward(t, y, self.grid)
        self.stats["nfe_backward"] = self.stats.get("nfe_backward", 0) + 1
        with bound_to(self.field, self.tensors):
            return self.field.forward(t, y, self.grid)

    def _count(self, key: str) -> None:
        self.stats[key] = self.stats.get(key, 0) + 1


class _AdaptiveDynamics(_Dynamics):
    """Adds torchdiffeq's step callbacks (adaptive solvers only) to count accepted/rejected steps."""

    def callback_accept_step(self, t0, y0, dt) -> None:
        self._count("accepted_steps")

    def callback_reject_step(self, t0, y0, dt) -> None:
        self._count("rejected_steps")

    def callback_accept_step_adjoint(self, t0, y0, dt) -> None:
        self._count("accepted_steps_backward")

    def callback_reject_step_adjoint(self, t0, y0, dt) -> None:
        self._count("rejected_steps_backward")


class _GridConstructor:
    """torchdiffeq grid constructor: the layer-aligned points between t[0] and t[-1], in t's order.

    Called with decreasing t in the adjoint's backward solve (torchdiffeq then negates
    the result), so it must not assume increasing time.
    """

    def __init__(self, points: Tensor) -> None:
        self.points = points

    def __call__(self, func, y0, t: Tensor) -> Tensor:
        lo, hi = (t[0], t[-1]) if t[0] <= t[-1] else (t[-1], t[0])
        pts = self.points.to(device=t.device, dtype=t.dtype)
        sel = pts[(pts >= lo) & (pts <= hi)]
        return sel if t[0] <= t[-1] else sel.flip(0)


MAX_NUM_STEPS = 10_000
"""Steps an adaptive solve takes at most (per call) unless ``solver_options`` gives ``max_num_steps``: a solve
that needs more stops with [`ContinuousSolveError`][hamode.engines.ContinuousSolveError] instead of running on."""


class ContinuousSolveError(RuntimeError):
    """An adaptive torchdiffeq solve gave up: more than ``max_num_steps`` steps, or a step size below its floor."""


class ContinuousSolver:
    """Solves a net's field with a torchdiffeq method on its layer grid.

    Args:
        method: a torchdiffeq method name (see [`list_torchdiffeq_methods()`][hamode.engines.list_torchdiffeq_methods]).
        options: ``rtol``/``atol`` (and ``adjoint_rtol``/``adjoint_atol``) plus the
            method's own options (adaptive: ``first_step``, ``max_step``, ``min_step``,
            ``safety``, ``ifactor``, ``dfactor``, ``max_num_steps``, ``norm``; fixed:
            ``interp``, ``max_iters``). Grid options are set by hamode and refused.
    """

    def __init__(self, method: str, options: dict[str, Any]) -> None:
        _torchdiffeq()
        if method not in FIXED_METHODS + ADAPTIVE_METHODS:
            raise ValueError(
                f"unknown torchdiffeq method {method!r}; valid: "
                + ", ".join(f"torchdiffeq:{m}" for m in list_torchdiffeq_methods())
            )
        self.method = method
        self.adaptive = method in ADAPTIVE_METHODS
        allowed = {**_COMMON_OPTIONS, **(_ADAPTIVE_OPTIONS if self.adaptive else _FIXED_OPTIONS)}
        for key, value in options.items():
            if key in _SET_BY_HAMODE:
                raise ValueError(f"solver_options[{key!r}] is set by hamode from the layer grid and cannot be given")
            if key not in allowed:
                raise ValueError(
                    f"unknown solver option {key!r} for torchdiffeq:{method}; valid: {', '.join(sorted(allowed))}"
                )
            types, check, what = allowed[key]
            if isinstance(value, bool) or not isinstance(value, types) or not check(value):
                raise TypeError(f"solver_options[{key!r}] must be {what}, got {value!r}")
        self.options = dict(options)

    def __repr__(self) -> str:
        return f"ContinuousSolver({self.method!r}, {self.options})"

    def _call(self, field, schedule: "Schedule", y0: Tensor, t: Tensor, gradient: str) -> tuple[Tensor, dict]:
        tde = _torchdiffeq()
        grid = schedule.grid
        opts = dict(self.options)
        rtol = opts.pop("rtol", 1e-7)
        atol = opts.pop("atol", 1e-9)
        adjoint_rtol = opts.pop("adjoint_rtol", rtol)
        adjoint_atol = opts.pop("adjoint_atol", atol)
        if self.adaptive:
            opts.setdefault("max_num_steps", MAX_NUM_STEPS)
            inner = grid.boundaries(torch.float64, y0.device)[1:-1]
            lo, hi = t.min(), t.max()
            jumps = inner[(inner > lo) & (inner < hi)]
            if len(jumps):
                opts["jump_t"] = jumps
        else:
            opts["grid_constructor"] = _GridConstructor(schedule.times(torch.float64, y0.device))
            opts["perturb"] = True
        stats: dict[str, int] = {}
        dynamics = (_AdaptiveDynamics if self.adaptive else _Dynamics)(field, grid, stats)
        try:
            out = self._odeint(tde, dynamics, y0, t, rtol, atol, adjoint_rtol, adjoint_atol, opts, gradient)
        except AssertionError as err:  # torchdiffeq's step-count and step-size guards
            raise ContinuousSolveError(
                f"torchdiffeq:{self.method} could not solve on t in [{float(t[0]):g}, {float(t[-1]):g}] "
                f"(rtol={rtol:g}, atol={atol:g}): {err}. The field is stiff or its solution explodes (a large "
                "final time or layer step h, large weights): use a smaller h, a looser rtol/atol, or raise "
                f"solver_options max_num_steps (default {MAX_NUM_STEPS})"
            ) from None
        dynamics.phase = "backward"
        return out, stats

    def _odeint(self, tde, dynamics, y0, t, rtol, atol, adjoint_rtol, adjoint_atol, opts, gradient) -> Tensor:
        if gradient == "adjoint" and torch.is_grad_enabled():
            params = tuple(p for p in dynamics.tensors.values() if p.requires_grad)
            return tde.odeint_adjoint(
                dynamics,
                y0,
                t,
                rtol=rtol,
                atol=atol,
                method=self.method,
                options=opts,
                adjoint_rtol=adjoint_rtol,
                adjoint_atol=adjoint_atol,
                adjoint_params=params,
            )
        return tde.odeint(dynamics, y0, t, rtol=rtol, atol=atol, method=self.method, options=opts)

    def solve(
        self, field, schedule: "Schedule", y0: Tensor, trajectory: bool, gradient: str = "backprop"
    ) -> tuple[Tensor, dict]:
        """States at the layer boundaries (``trajectory``) or at ``[0, T]``, and the solve's statistics.

        The statistics dict is the solve's own: an adjoint backward adds ``nfe_backward`` to it when it runs.
        """
        b = schedule.grid.boundaries(torch.float64, y0.device)
        t = b if trajectory else b[[0, -1]]
        return self._call(field, schedule, y0, t, gradient)

    def solve_layer(
        self, field, schedule: "Schedule", j: int, y: Tensor, gradient: str = "backprop"
    ) -> tuple[Tensor, dict]:
        """The state at ``t_{j+1}`` from ``y`` at ``t_j`` (one layer alone), and the statistics."""
        b = schedule.grid.boundaries(torch.float64, y.device)
        out, stats = self._call(field, schedule, y, b[j : j + 2], gradient)
        return out[-1], stats
