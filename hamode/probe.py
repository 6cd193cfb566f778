"""Numerical checks of what an integrator declares, run when a user's rule is registered.

A declaration states ``order``, ``symplectic`` and ``reversible``; the engines, the diagnostics and the reversible
gradient mode rely on them. [`check_declaration()`][hamode.check_declaration] measures each on a
small fixed Hamiltonian field in float64 (a non-separable H1 field, or a separable H2 field for rules that need
one) and refuses a declaration the rule does not meet:

- ``order``: the error of ``y(T)`` against a fine reference (rk4 with 512 steps) falls with the step count by at
  least ``2 ** (order - 0.6)`` per halving, between some two successive step counts of 1 ... 32 (before rounding);
- ``symplectic``: the one-step Jacobian ``Φ`` satisfies ``‖Φ J Φᵀ - J‖_F <= 1e-9``;
- ``reversible``: gradients with ``gradient="reversible"`` (states rebuilt by the declared inverse step) equal
  those of ``gradient="backprop"`` to 1e-8 relative.

hamode's built-in rules are not probed here: the generic tests check them, at tighter tolerances. The integrators
package does not import this module (it runs nets, which import the integrators): ``import hamode`` hands
[`check_declaration()`][hamode.check_declaration] to
[`set_declaration_check()`][hamode.integrators.set_declaration_check].
"""

from __future__ import annotations

import itertools
import math

import torch

__all__ = ["ORDER_SLACK", "check_declaration"]

ORDER_SLACK = 0.6
"""How far below the declared order the measured convergence rate may fall (finite step sizes)."""


def _field(separable: bool):
    from .architectures import make_field

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        field = make_field("H2" if separable else "H1_J1", dim=2, n_layers=1, weights="constant").double()
        y0 = torch.randn(3, 2, dtype=torch.float64)
    return field, y0


def check_declaration(cls: type, name: str) -> None:
    """Measure the declared ``order``, ``symplectic`` and ``reversible`` of ``cls`` (registered as ``name``);
    raise ValueError naming the property and what was measured when the rule does not meet it."""
    from .diagnostics import symplecticity_defect
    from .net import HamiltonianNet

    field, y0 = _field(cls.needs_separable)

    def net(rule, substeps: int, t_end: float = 1.0, gradient: str = "backprop") -> HamiltonianNet:
        return HamiltonianNet(field, t_end, integrator=rule, substeps=substeps, gradient=gradient, fast=False)

    def refuse(what: str) -> None:
        raise ValueError(
            f"integrator {name!r} ({cls.__name__}) declares {what}; fix the declaration (or the rule), or register "
            "with check=False to skip these checks"
        )

    with torch.no_grad():
        reference = net("rk4", 512)(y0)
        errors = [float((net(cls(), k)(y0) - reference).abs().max()) for k in (1, 2, 4, 8, 16, 32)]
    rates = [math.log2(a / b) for a, b in itertools.pairwise(errors) if b > 1e-11 and a > 0]
    if rates and max(rates) < cls.order - ORDER_SLACK:
        refuse(
            f"order = {cls.order}, but its error falls as the step count to the power {max(rates):.2f} at best "
            f"(errors at 1, 2, 4, ... 32 steps: {', '.join(f'{e:.2e}' for e in errors)})"
        )

    if cls.symplectic:
        y = y0[0].clone()
        Phi = torch.autograd.functional.jacobian(lambda v: net(cls(), 1, t_end=0.5)(v), y)
        defect = float(symplecticity_defect(Phi, field.J.to(Phi)))
        if not defect <= 1e-9:
            refuse(f"symplectic = True, but its one-step Jacobian Φ has ‖Φ J Φᵀ - J‖_F = {defect:.3g}")

    if cls.reversible:
        grads = []
        for gradient in ("backprop", "reversible"):
            y = y0.clone().requires_grad_(True)
            net(cls(), 2, gradient=gradient)(y).pow(2).sum().backward()
            grads.append(y.grad)
        gap = float((grads[1] - grads[0]).norm() / grads[0].norm())
        if not gap <= 1e-8:
            refuse(
                f"reversible = True, but the gradients its inverse step gives differ from backpropagation's by "
                f"{100 * gap:.3g} % (the inverse step does not undo the step)"
            )
