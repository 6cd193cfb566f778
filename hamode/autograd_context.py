"""What kind of differentiation the code runs under: read by the engines (which engine may run) and by the
implicit rules (which refuse what their implicit-function gradient cannot see). A floor below both."""

from __future__ import annotations

import torch

__all__ = ["forward_ad_active", "functorch_active", "plain_autograd"]


def functorch_active() -> bool:
    """True inside a ``torch.func`` transform (vmap, grad, jacrev, jacfwd, functionalize)."""
    peek = getattr(getattr(torch._C, "_functorch", None), "peek_interpreter_stack", None)
    return peek is not None and peek() is not None


def forward_ad_active() -> bool:
    """True inside a forward-mode AD level (``torch.autograd.forward_ad.dual_level``)."""
    from torch.autograd import forward_ad

    return getattr(forward_ad, "_current_level", -1) >= 0


def plain_autograd() -> bool:
    """True outside torch.func transforms and forward-mode AD: only reverse-mode autograd (or none) is active,
    so a custom ``autograd.Function`` with a hand-written backward sees every derivative asked of it."""
    return not (functorch_active() or forward_ad_active())
