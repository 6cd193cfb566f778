"""ODE right-hand sides: the Hamiltonian fields."""

from .autograd import AutogradHamiltonianField, AutogradSeparableField
from .base import Factors, Field, FusedField, FusedFullField, FusedSeparableField, FusedWeights, LayerRHS
from .conv import ConvField, ConvH1Field, ConvH2Field, Convolution
from .hamiltonian import H1Field
from .ms import MS1Field, MS2Field
from .separable import MS3Field, SeparableField, SparseSeparableField
from .structure import check_skew, j1, j2

__all__ = [
    "AutogradHamiltonianField",
    "AutogradSeparableField",
    "ConvField",
    "ConvH1Field",
    "ConvH2Field",
    "Convolution",
    "Factors",
    "Field",
    "FusedField",
    "FusedFullField",
    "FusedSeparableField",
    "FusedWeights",
    "H1Field",
    "LayerRHS",
    "MS1Field",
    "MS2Field",
    "MS3Field",
    "SeparableField",
    "SparseSeparableField",
    "check_skew",
    "j1",
    "j2",
]
