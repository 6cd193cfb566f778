"""What kind of differentiation the code runs under: read by the engines (which engine may run) and by the
implicit rules (which refuse what their implicit-function gradient cannot see). A floor below both."""

from __future__ import annotations

import functools
import sys

import torch

__all__ = ["eager_under_compile", "forward_ad_active", "functorch_active", "plain_autograd"]


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


def eager_under_compile(fn):
    """``torch.compiler.disable(fn)``, applied when it can matter: ``torch.compile`` cannot be tracing before
    ``torch._dynamo`` is imported, so until then ``fn`` runs as it is, and ``import hamode`` does not pay the ~1 s
    import of dynamo that the decorator costs (the guard is made on the first call after dynamo is loaded)."""
    guarded = None

    @functools.wraps(fn)
    def call(*args, **kwargs):
        nonlocal guarded
        if "torch._dynamo" not in sys.modules:
            return fn(*args, **kwargs)
        if guarded is None:
            guarded = torch.compiler.disable(fn)
        return guarded(*args, **kwargs)

    return call
