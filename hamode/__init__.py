"""hamode: Hamiltonian deep neural networks in PyTorch.

A field (the ODE right-hand side ``dy/dt = J ∇H``), an integrator (the
discretisation) and a layer grid make a [`HamiltonianNet`][hamode.HamiltonianNet].
"""

from . import diagnostics, engines, fields, integrators
from .activations import get_activation, list_activations
from .architectures import architecture_info, list_architectures, make_field, register_architecture
from .engines import list_torchdiffeq_methods
from .fields import (
    AutogradHamiltonianField,
    AutogradSeparableField,
    ConvH1Field,
    ConvH2Field,
    Field,
    H1Field,
    MS1Field,
    MS2Field,
    MS3Field,
    SeparableField,
    SparseSeparableField,
)
from .grid import LayerGrid, Schedule
from .integrators import (
    GaussLegendre4,
    ImplicitMidpoint,
    ImplicitRungeKutta,
    ImplicitSolveError,
    Integrator,
    ReversibleRungeKutta,
    RungeKutta,
    SplittingMethod,
    get_integrator,
    list_integrators,
    register_integrator,
)
from .net import GRADIENT_MODES, HamiltonianNet, Solution
from .probe import check_declaration
from .regularization import smoothness_penalty

integrators.set_declaration_check(check_declaration)  # a user's rule is measured when it is registered

__version__ = "0.3.0"

__all__ = [
    "GRADIENT_MODES",
    "AutogradHamiltonianField",
    "AutogradSeparableField",
    "ConvH1Field",
    "ConvH2Field",
    "Field",
    "GaussLegendre4",
    "H1Field",
    "HamiltonianNet",
    "ImplicitMidpoint",
    "ImplicitRungeKutta",
    "ImplicitSolveError",
    "Integrator",
    "LayerGrid",
    "MS1Field",
    "MS2Field",
    "MS3Field",
    "ReversibleRungeKutta",
    "RungeKutta",
    "Schedule",
    "SeparableField",
    "Solution",
    "SparseSeparableField",
    "SplittingMethod",
    "architecture_info",
    "check_declaration",
    "diagnostics",
    "engines",
    "fields",
    "get_activation",
    "get_integrator",
    "integrators",
    "list_activations",
    "list_architectures",
    "list_integrators",
    "list_torchdiffeq_methods",
    "make_field",
    "register_architecture",
    "register_integrator",
    "smoothness_penalty",
]
