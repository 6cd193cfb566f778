"""Argument checks shared by the library: each names the argument, the value and what is allowed."""

from __future__ import annotations

from typing import Any

__all__ = ["check_int"]


def check_int(name: str, value: Any, minimum: int) -> int:
    """``value`` if it is an ``int`` (not a bool) ``>= minimum``; else a ``TypeError``/``ValueError`` naming it."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value
