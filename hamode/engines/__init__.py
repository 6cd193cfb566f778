"""The engines: every path walks one [`Schedule`][hamode.Schedule] with one integrator.

An engine is a function of (field, integrator, schedule, y0) that returns the result and the solver statistics;
none writes into the net or the field. `solve()` (``select.py``) is the one place that chooses among them.

- **reference** (``reference.py``): autograd through
  [`Integrator.step()`][hamode.integrators.Integrator.step] (any field, any integrator, linear weights,
  trajectories, taps for diagnostics). Composes with everything PyTorch offers: ``torch.compile``,
  ``torch.func`` transforms, forward-mode AD, autocast and double backward.
  [`ReversibleFlow`][hamode.engines.ReversibleFlow] is the reference step with the exact inverse step: memory flat
  in depth.
- **fused** (``fused.py``): one ``autograd.Function`` with analytic VJPs (the field's
  [`FusedField`][hamode.fields.FusedField] methods, the integrator's ``fused_step``/``fused_vjp``), backprop or
  reversible; the default where it applies.
  Its scratch buffers live in ``buffers.py`` (per field, weak-keyed), not on the field.
- **continuous** (``continuous.py``): torchdiffeq solves aligned with the layers, and their adjoint.

Floors: ``hamode.fields`` and ``hamode.integrators`` sit below this package and import nothing from it; what
the engines need of them is written down as protocols ([`FusedField`][hamode.fields.FusedField] and its full and
separable variants, [`StepOps`][hamode.integrators.StepOps] for the ``ops`` a fused step calls).
[`fused_allowed()`][hamode.engines.fused_allowed] (from `hamode.autograd_context`) says when a hand-written
``autograd.Function`` may run: not under ``torch.func`` transforms or forward-mode AD; under ``torch.compile`` the
fused engine runs eagerly behind a graph break; a backward with ``create_graph=True`` recomputes on the reference path
([`reference_gradients()`][hamode.engines.reference_gradients]).
"""

from .common import FusedSpec, bound_to, check_versions, parameter_gradients, pass_tensors, tensor_versions
from .continuous import (
    ADAPTIVE_METHODS,
    FIXED_METHODS,
    MAX_NUM_STEPS,
    ContinuousSolveError,
    ContinuousSolver,
    list_torchdiffeq_methods,
)
from .fused import (
    FACTOR_BUDGET_BYTES,
    FusedFlow,
    FusedOps,
    fused_applies,
    fused_forward,
    fused_inverse_flow,
    reconstruct,
)
from .reference import ReversibleFlow, fused_allowed, reference_flow, reference_gradients
from .select import solve

__all__ = [
    "ADAPTIVE_METHODS",
    "FACTOR_BUDGET_BYTES",
    "FIXED_METHODS",
    "MAX_NUM_STEPS",
    "ContinuousSolveError",
    "ContinuousSolver",
    "FusedFlow",
    "FusedOps",
    "FusedSpec",
    "ReversibleFlow",
    "bound_to",
    "check_versions",
    "fused_allowed",
    "fused_applies",
    "fused_forward",
    "fused_inverse_flow",
    "list_torchdiffeq_methods",
    "parameter_gradients",
    "pass_tensors",
    "reconstruct",
    "reference_flow",
    "reference_gradients",
    "solve",
    "tensor_versions",
]
