"""A pytest plugin (``-p copied_architecture``) for ``tests/test_structure.py``: registers a copy of H1 under the
name ``CopiedH1`` before the test modules are collected, as a contributor's new architecture would be. With
``HAMODE_WRONG_VJP=1`` its fused VJP is wrong by 0.1 %."""

import os

import hamode
from hamode.fields import H1Field


class CopiedH1(H1Field):
    """H1 under another name."""

    if os.environ.get("HAMODE_WRONG_VJP") == "1":

        def fused_f_vjp(self, w, y, ctx, c, alpha=1.0, base=None):
            g, factors = super().fused_f_vjp(w, y, ctx, c, alpha, None)
            g = g * 1.001
            return (g if base is None else base + g), factors


hamode.register_architecture("CopiedH1", J="J1")(CopiedH1)
