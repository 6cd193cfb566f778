"""Named architectures: a name maps to a field class, preset arguments and its published integrator."""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

__all__ = ["Architecture", "architecture_info", "list_architectures", "make_field", "register_architecture"]

T = TypeVar("T", bound=type)


@dataclass(frozen=True)
class Architecture:
    """A registered architecture: the field class and the arguments its name fixes."""

    name: str
    field_class: type
    preset: dict[str, Any] = field(default_factory=dict)

    @property
    def default_integrator(self) -> str:
        """The discretisation the papers use for this architecture."""
        return self.field_class.default_integrator


_ARCHITECTURES: dict[str, Architecture] = {}


def register_architecture(name: str, **preset: Any) -> Callable[[T], T]:
    """Class decorator: register a field class under ``name`` with preset constructor arguments.

    Stack it to register one class under several names (``H1_J1`` and ``H1_J2``).
    """

    def deco(cls: T) -> T:
        if name in _ARCHITECTURES and _ARCHITECTURES[name].field_class is not cls:
            raise ValueError(f"an architecture named {name!r} is already registered")
        _ARCHITECTURES[name] = Architecture(name, cls, dict(preset))
        return cls

    return deco


def list_architectures() -> list[str]:
    """Registered architecture names."""
    return sorted(_ARCHITECTURES)


def architecture_info(name: str) -> Architecture:
    """The `Architecture` registered under ``name``."""
    if not isinstance(name, str):
        raise TypeError(f"architecture must be a name, got {type(name).__name__}")
    try:
        return _ARCHITECTURES[name]
    except KeyError:
        raise ValueError(f"unknown architecture {name!r}; valid: {', '.join(list_architectures())}") from None


def make_field(name: str, dim: int, n_layers: int, width: int | None = None, activation: str = "tanh", **kwargs: Any):
    """Build the field of a named architecture.

    Args:
        name: one of [`list_architectures()`][hamode.list_architectures] (``"H1_J1"``, ``"H1_J2"``, ``"H2"``,
            ``"MS1"``, ``"MS2"``, ``"MS3"``).
        dim: state size n.
        n_layers: number of layers N.
        width: hidden size m (architectures that have one; default: their own).
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"``.
        **kwargs: further constructor arguments of the field class (``weights``, ``init``,
            ``dtype``, ``device``, ``X``, ...).
    """
    arch = architecture_info(name)
    accepted = inspect.signature(arch.field_class.__init__).parameters
    args: dict[str, Any] = {"dim": dim, "n_layers": n_layers, "activation": activation, **kwargs}
    if width is not None:
        args["width"] = width
    for key in list(args):
        if key not in accepted:
            raise TypeError(
                f"architecture {name!r} ({arch.field_class.__name__}) takes no argument {key!r}; "
                f"it takes: {', '.join(p for p in accepted if p != 'self')}"
            )
        if key in arch.preset:
            raise TypeError(
                f"architecture {name!r} fixes {key}={arch.preset[key]!r}; use "
                f"{arch.field_class.__name__} directly to choose it"
            )
    return arch.field_class(**arch.preset, **args)
