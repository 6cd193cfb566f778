"""The integrator interface and the public registry.

An integrator is a stateless one-step rule. hamode's own rules are *declarations*: a
[`SplittingMethod`][hamode.integrators.SplittingMethod] (a kick/drift coefficient sequence) or a
[`RungeKutta`][hamode.integrators.RungeKutta] (a Butcher tableau). Those classes derive
everything a gradient engine needs from the declaration; a hand-written rule only has
to provide [`Integrator.step()`][hamode.integrators.Integrator.step] and runs on the autograd reference path.
"""

from __future__ import annotations

import abc
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Protocol, TypeVar

from torch import Tensor

__all__ = ["Integrator", "StepOps", "get_integrator", "list_integrators", "register_integrator"]

_REGISTRY: dict[str, type["Integrator"]] = {}

T = TypeVar("T", bound=type["Integrator"])

Bounds = Mapping[str, Tensor]
"""Lipschitz bounds of one layer's field at one time: ``"full"`` (‖∂f/∂y‖₂) and, for separable fields,
``"dp"`` (‖∂(dp/dt)/∂q‖₂) and ``"dq"`` (‖∂(dq/dt)/∂p‖₂)."""


class StepOps(Protocol):
    """What a fused step may call: one pass's evaluations of the field, layer by layer, without autograd.

    The fused engine ([`FusedOps`][hamode.engines.FusedOps]) implements it over a field's
    [`FusedField`][hamode.fields.FusedField] methods. ``j`` is the layer; an evaluation returns ``base + alpha f(y)``
    (``alpha f(y)`` without a base) and a context for its VJP; a VJP returns ``base + alpha (∂f/∂y)ᵀ c`` and records
    the evaluation's parameter factors for the gradients. Separable rules work on ``(p, q)`` with ``dp`` (a function
    of q) and ``dq`` (of p); non-separable rules use ``f``.
    """

    field: Any
    """The field (rules that choose a solver by the field read it)."""
    stats: dict | None
    """Where an implicit rule adds its iteration counts (None: not counted)."""

    def f(self, j: int, y: Tensor, alpha: float = 1.0, base: Tensor | None = None) -> tuple[Tensor, Any]:
        """``(base + alpha f(y), context)``."""
        ...

    def f_vjp(self, j: int, y: Tensor, ctx: Any, c: Tensor, alpha: float = 1.0, base: Tensor | None = None) -> Tensor:
        """``base + alpha (∂f/∂y)ᵀ c``, recording the parameter factors."""
        ...

    def state_vjp(self, j: int, y: Tensor, ctx: Any, c: Tensor) -> Tensor:
        """``(∂f/∂y)ᵀ c`` without recording parameter factors (inner solves of implicit steps)."""
        ...

    def dp(self, j: int, q: Tensor, alpha: float = 1.0, base: Tensor | None = None) -> tuple[Tensor, Any]:
        """``(base + alpha dp/dt(q), context)``."""
        ...

    def dp_vjp(self, j: int, q: Tensor, ctx: Any, c: Tensor, alpha: float = 1.0, base: Tensor | None = None) -> Tensor:
        """``base + alpha (∂(dp/dt)/∂q)ᵀ c``, recording the parameter factors."""
        ...

    def dq(self, j: int, p: Tensor, alpha: float = 1.0, base: Tensor | None = None) -> tuple[Tensor, Any]:
        """``(base + alpha dq/dt(p), context)``."""
        ...

    def dq_vjp(self, j: int, p: Tensor, ctx: Any, c: Tensor, alpha: float = 1.0, base: Tensor | None = None) -> Tensor:
        """``base + alpha (∂(dq/dt)/∂p)ᵀ c``, recording the parameter factors."""
        ...


class Integrator(abc.ABC):
    """A stateless one-step rule ``y_{k+1} = step(f, t_k, y_k, dt)``.

    ``f`` is one layer's right-hand side (a [`LayerRHS`][hamode.fields.LayerRHS]): every
    stage of a step evaluates the same layer's weights, whatever time the stage is at.
    Separable-only rules use ``f.split``, ``f.dp``, ``f.dq`` and ``f.join``.

    Class attributes (stated on the class, read by the engines and the generic tests):
        name: registry name (set by [`register_integrator()`][hamode.integrators.register_integrator]).
        order: global order of accuracy.
        symplectic: the step map preserves ``J`` for a Hamiltonian field with constant J.
        reversible: `inverse_step()` recovers ``y_k`` from ``y_{k+1}`` exactly (closed form).
        needs_separable: the rule needs ``dp/dt = a(q)``, ``dq/dt = b(p)``.
        evaluations: right-hand-side evaluations per step (a half-field counts 1/2).
        stage_offsets: the times at which a step evaluates the field, as multiples of ``dt`` after the
            step's start (they may lie outside ``[0, 1]`` for methods with negative coefficients).
        supports_fused: derived: the class provides [`fused_step()`][hamode.integrators.Integrator.fused_step] and
            [`fused_vjp()`][hamode.integrators.Integrator.fused_vjp].
        implicit: the step solves equations; its ``step`` and ``inverse_step`` take a ``stats`` dict into which
            they add their iteration counts (``iterations``, ``max_iterations``, ``nfe``).
        copies: states the rule carries per sample (2 for the reversible Runge-Kutta rules, whose state is the
            pair ``(y, z)``); the engines lift the net's input with [`lift()`][hamode.integrators.Integrator.lift]
            and return [`output()`][hamode.integrators.Integrator.output].
    """

    name: ClassVar[str] = ""
    order: ClassVar[int]
    symplectic: ClassVar[bool] = False
    reversible: ClassVar[bool] = False
    needs_separable: ClassVar[bool] = False
    evaluations: ClassVar[float] = 1.0
    stage_offsets: ClassVar[tuple[float, ...]] = (0.0,)
    supports_fused: ClassVar[bool] = False
    implicit: ClassVar[bool] = False

    copies: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        cls.supports_fused = cls.fused_step is not Integrator.fused_step and cls.fused_vjp is not Integrator.fused_vjp

    # ---------------------------------------------------------------- the rule's state (one copy by default)
    def lift(self, y0: Tensor) -> Tensor:
        """The rule's state for the net's input ``y0`` (``y0`` itself for one-state rules)."""
        return y0

    def output(self, state: Tensor) -> Tensor:
        """The net's state ``y`` in the rule's state (the state itself for one-state rules)."""
        return state

    def perturb(self, state: Tensor, y: Tensor) -> Tensor:
        """``state`` with its ``y`` replaced by ``y``, the change applied to every copy (diagnostics tap the
        layer-boundary state with it; ``y`` itself for one-state rules)."""
        return y

    @abc.abstractmethod
    def step(self, f, t: float | Tensor, y: Tensor, dt: float) -> Tensor:
        """One step of size ``dt`` from ``(t, y)``."""

    def inverse_step(self, f, t: float | Tensor, y_next: Tensor, dt: float) -> Tensor:
        """The exact inverse of [`step()`][hamode.integrators.Integrator.step] from ``(t, y)``: returns ``y`` given
        ``y_next``."""
        raise NotImplementedError(f"integrator {self.name!r} is not reversible")

    # ---------------------------------------------------------------- fused gradient engine (optional)
    # ``ops`` is a StepOps (above). Separable rules get the state as a (p, q) tuple. The tape is a flat tuple of
    # tensors (or tuples of tensors) of fixed structure.
    def fused_step(self, ops: StepOps, j: int, state, dt: float):
        """One step without autograd; returns ``(next_state, tape)``."""
        raise NotImplementedError(f"integrator {self.name!r} has no fused step")

    def fused_vjp(self, ops: StepOps, j: int, tape: tuple, g, dt: float):
        """Cotangent of the step's input from the cotangent ``g`` of its output (and the tape)."""
        raise NotImplementedError(f"integrator {self.name!r} has no fused step")

    def fused_inverse(self, ops: StepOps, j: int, state, dt: float):
        """The exact inverse step, without autograd (reversible rules)."""
        raise NotImplementedError(f"integrator {self.name!r} is not reversible")

    def fused_inverse_with_tape(self, ops: StepOps, j: int, state, dt: float):
        """``(previous state, its step's tape)``: what the reversible backward needs at each step. By default the
        inverse step, then the step again from the rebuilt state for its tape; a rule whose inverse evaluates the
        field where the step did (the splitting methods) returns the tape of its own evaluations instead."""
        state = self.fused_inverse(ops, j, state, dt)
        return state, self.fused_step(ops, j, state, dt)[1]

    def growth_bound(self, dt: float, bounds: Bounds | Sequence[Bounds]) -> Tensor:
        """An upper bound on the spectral norm of one step's Jacobian ``∂y_{k+1}/∂y_k``.

        Args:
            dt: the step size.
            bounds: the layer's Lipschitz bounds (see `Bounds`), either one mapping valid for every
                stage or one per entry of `stage_offsets` (the bounds at each stage's own time).
        """
        raise NotImplementedError(f"integrator {self.name!r} states no growth bound")

    def _stage_bounds(self, bounds: Bounds | Sequence[Bounds]) -> list[Bounds]:
        if isinstance(bounds, Mapping):
            return [bounds] * len(self.stage_offsets)
        bounds = list(bounds)
        if len(bounds) != len(self.stage_offsets):
            raise ValueError(
                f"{self.name or type(self).__name__} evaluates the field at {len(self.stage_offsets)} stage times; "
                f"got {len(bounds)} bounds"
            )
        return bounds

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register_integrator(name: str, *, replace: bool = False, check: bool = True) -> Callable[[T], T]:
    """Class decorator: register an [`Integrator`][hamode.integrators.Integrator] subclass under ``name``.

    Args:
        name: the name the rule is used by (``HamiltonianNet(..., integrator=name)``, the CLI's choices).
        replace: replace a rule of your own already registered under ``name`` (re-running a notebook cell that
            declares it). hamode's built-in rules are never replaced: register yours under another name.
        check: measure the declared ``order``, ``symplectic`` and ``reversible`` on a small test field and
            refuse a declaration the rule does not meet ([`check_declaration()`][hamode.check_declaration],
            installed by ``import hamode``; a few milliseconds).
    """
    if not isinstance(name, str) or not name or ":" in name:
        raise ValueError(f"an integrator name must be a non-empty string without ':', got {name!r}")
    for flag, value in (("replace", replace), ("check", check)):
        if not isinstance(value, bool):
            raise TypeError(f"register_integrator: {flag} must be True or False, got {value!r}")

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Integrator)):
            raise TypeError(f"register_integrator({name!r}) decorates Integrator subclasses, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old is not cls:
            if old.__module__.startswith("hamode.integrators"):
                raise ValueError(
                    f"{name!r} is one of hamode's built-in integrators ({old.__name__}) and cannot be replaced; "
                    "register your rule under another name"
                )
            if not replace:
                raise ValueError(
                    f"an integrator named {name!r} is already registered ({old.__module__}.{old.__qualname__}); "
                    f"use @register_integrator({name!r}, replace=True) to replace it, or "
                    f"hamode.integrators.unregister_integrator({name!r}) first"
                )
        if not isinstance(getattr(cls, "order", None), int) or cls.order < 1:
            raise TypeError(f"integrator {name!r} must state its order as an int >= 1 (class attribute 'order')")
        builtin = cls.__module__.startswith("hamode.integrators")
        if check and not builtin and not inspect.isabstract(cls) and _DECLARATION_CHECK:
            _DECLARATION_CHECK[0](cls, name)
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


_DECLARATION_CHECK: list[Callable[[type, str], None]] = []
"""The check ``register_integrator`` runs on a user's rule (set by ``import hamode``: it runs nets, which the
integrators package cannot import)."""


def set_declaration_check(check: Callable[[type, str], None] | None) -> None:
    """Install the function ``register_integrator(..., check=True)`` calls as ``check(cls, name)`` (None: none)."""
    if check is not None and not callable(check):
        raise TypeError(f"set_declaration_check takes a function (cls, name) or None, got {check!r}")
    _DECLARATION_CHECK[:] = [] if check is None else [check]


def unregister_integrator(name: str) -> None:
    """Remove a registered integrator (for user rules defined temporarily, e.g. in tests)."""
    if name not in _REGISTRY:
        raise ValueError(f"no integrator named {name!r} is registered")
    del _REGISTRY[name]


def list_integrators() -> list[str]:
    """Names of all registered integrators (hamode's own step rules)."""
    return sorted(_REGISTRY)


def get_integrator(integrator: str | Integrator | type[Integrator]) -> Integrator:
    """An integrator instance from a registered name, or an instance (or class) passed through."""
    if isinstance(integrator, Integrator):
        return integrator
    if isinstance(integrator, type) and issubclass(integrator, Integrator):
        return integrator()
    if not isinstance(integrator, str):
        raise TypeError(f"integrator must be a name or an Integrator, got {type(integrator).__name__}")
    try:
        return _REGISTRY[integrator]()
    except KeyError:
        raise ValueError(
            f"unknown integrator {integrator!r}; valid: {', '.join(list_integrators())}, "
            "or 'torchdiffeq:<method>' for a continuous solve"
        ) from None
