"""The integrator interface and the public registry."""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, TypeVar

from torch import Tensor

__all__ = ["Integrator", "get_integrator", "list_integrators", "register_integrator"]

_REGISTRY: dict[str, type["Integrator"]] = {}

T = TypeVar("T", bound=type["Integrator"])


class Integrator:
    """A stateless one-step rule ``y_{k+1} = step(f, t_k, y_k, dt)``.

    ``f`` is one layer's right-hand side (a :class:`hamode.fields.LayerRHS`): every
    stage of a step evaluates the same layer's weights, whatever time the stage is at.
    Separable-only rules use ``f.split``, ``f.dp``, ``f.dq`` and ``f.join``.

    Class attributes:
        name: registry name.
        order: global order of accuracy.
        symplectic: the step map preserves ``J`` for a Hamiltonian field with constant J.
        reversible: :meth:`inverse_step` recovers ``y_k`` from ``y_{k+1}`` exactly (closed form).
        needs_separable: the rule needs ``dp/dt = a(q)``, ``dq/dt = b(p)``.
        evaluations: right-hand-side evaluations per step (a half-field counts 1/2).
    """

    name: ClassVar[str] = ""
    order: ClassVar[int]
    symplectic: ClassVar[bool] = False
    reversible: ClassVar[bool] = False
    needs_separable: ClassVar[bool] = False
    evaluations: ClassVar[float] = 1.0

    def step(self, f, t: float | Tensor, y: Tensor, dt: float) -> Tensor:
        """One step of size ``dt`` from ``(t, y)``."""
        raise NotImplementedError

    def inverse_step(self, f, t: float | Tensor, y_next: Tensor, dt: float) -> Tensor:
        """The exact inverse of :meth:`step` from ``(t, y)``: returns ``y`` given ``y_next``."""
        raise NotImplementedError(f"integrator {self.name!r} is not reversible")

    # ---------------------------------------------------------------- fused gradient engine (optional)
    # ``ops`` is a hamode.fused.FusedOps: ops.f(j, y, alpha, base) -> (base + alpha f(y), ctx) and
    # ops.f_vjp(j, y, ctx, c, alpha, base) -> base + alpha (∂f/∂y)ᵀ c (separable: ops.dp/dq on q/p). Separable rules
    # get the state as a (p, q) tuple. The tape is a flat tuple of tensors of fixed length.
    supports_fused: ClassVar[bool] = False

    def fused_step(self, ops, j: int, state, dt: float):
        """One step without autograd; returns ``(next_state, tape)``."""
        raise NotImplementedError

    def fused_vjp(self, ops, j: int, tape: tuple, g, dt: float):
        """Cotangent of the step's input from the cotangent ``g`` of its output (and the tape)."""
        raise NotImplementedError

    def fused_inverse(self, ops, j: int, state, dt: float):
        """The exact inverse step, without autograd (reversible rules)."""
        raise NotImplementedError

    def growth_bound(self, dt: float, bounds: dict[str, Tensor]) -> Tensor:
        """An upper bound on the spectral norm of one step's Jacobian ``∂y_{k+1}/∂y_k``.

        ``bounds`` holds Lipschitz bounds of the layer's field: ``"full"`` (‖∂f/∂y‖₂) and,
        for separable fields, ``"dp"`` (‖∂(dp/dt)/∂q‖₂) and ``"dq"`` (‖∂(dq/dt)/∂p‖₂).
        """
        raise NotImplementedError(f"integrator {self.name!r} states no growth bound")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def register_integrator(name: str) -> Callable[[T], T]:
    """Class decorator: register an :class:`Integrator` subclass under ``name``."""

    def deco(cls: T) -> T:
        if not (isinstance(cls, type) and issubclass(cls, Integrator)):
            raise TypeError(f"register_integrator({name!r}) decorates Integrator subclasses, got {cls!r}")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"an integrator named {name!r} is already registered ({_REGISTRY[name].__name__})")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def list_integrators() -> list[str]:
    """Names of all registered integrators (hamode's own step rules)."""
    return sorted(_REGISTRY)


def get_integrator(integrator: str | Integrator) -> Integrator:
    """An integrator instance from a registered name, or an instance passed through."""
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
