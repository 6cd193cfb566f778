"""Gradient diagnostics: backward sensitivity matrices (BSM), their norms, symplecticity, energy, bounds."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .net import HamiltonianNet

__all__ = [
    "SavedBytes",
    "backward_sensitivity",
    "energy_drift",
    "sensitivity_norms",
    "sensitivity_upper_bound",
    "symplecticity_defect",
]


def backward_sensitivity(net: HamiltonianNet, y0: Tensor, layers: Sequence[int] | None = None) -> Tensor:
    """Per-sample backward sensitivity matrices ``S[j, b] = ∂y_N/∂y_j`` (TAC eq. 9).

    Computed with ``dim`` reverse passes through one forward run (samples do not
    interact, so summing over the batch separates them), for any integrator and
    number of substeps.

    Args:
        net: the network.
        y0: inputs of shape ``(B, dim)`` (or any leading shape).
        layers: the boundaries j in ``[0, N]`` to return (default all ``N + 1``).

    Returns:
        ``(len(layers), *y0.shape[:-1], dim, dim)``; row i, column k is ``∂y_N[i]/∂y_j[k]``.
    """
    N = net.n_layers
    wanted = list(range(N + 1)) if layers is None else [int(j) for j in layers]
    for j in wanted:
        if not 0 <= j <= N:
            raise ValueError(f"layers must lie in [0, {N}], got {j}")
    if not wanted:
        raise ValueError("layers must name at least one layer boundary")
    taps: dict[int, Tensor] = {}
    want = set(wanted)

    def tap(j: int, y: Tensor) -> Tensor:
        if j in want:
            e = torch.zeros_like(y, requires_grad=True)
            taps[j] = e
            return y + e
        return y

    with torch.enable_grad():
        yN = net.run_layers(y0.detach(), tap)
        inputs = [taps[j] for j in wanted]
        rows = []
        n = yN.shape[-1]
        for i in range(n):
            grads = torch.autograd.grad(yN[..., i].sum(), inputs, retain_graph=i < n - 1, allow_unused=True)
            rows.append(torch.stack([torch.zeros_like(e) if g is None else g for g, e in zip(grads, inputs)]))
    return torch.stack(rows, dim=-2).detach()


def sensitivity_norms(S: Tensor) -> dict[str, Tensor]:
    """Spectral norms and smallest singular values of BSMs ``S`` (``(L, B, n, n)``).

    Returns a dict with per-sample ``norm`` and ``sigma_min`` (``(L, B)``) and, per
    layer, ``norm_mean``, ``norm_min``, ``norm_max``, ``sigma_min_mean``, ``sigma_min_min``.
    """
    sv = torch.linalg.svdvals(S)
    norm, smin = sv[..., 0], sv[..., -1]
    flat_n, flat_s = norm.flatten(1), smin.flatten(1)
    return {
        "norm": norm,
        "sigma_min": smin,
        "norm_mean": flat_n.mean(1),
        "norm_min": flat_n.min(1).values,
        "norm_max": flat_n.max(1).values,
        "sigma_min_mean": flat_s.mean(1),
        "sigma_min_min": flat_s.min(1).values,
    }


def symplecticity_defect(Phi: Tensor, J: Tensor) -> Tensor:
    """``‖Φ J Φᵀ - J‖_F`` for one Jacobian or a batch of them (``(..., n, n)``).

    Zero (to rounding) for the Jacobian of a symplectic map of a system with structure J.
    """
    if Phi.shape[-2:] != J.shape[-2:]:
        raise ValueError(f"Phi {tuple(Phi.shape)} and J {tuple(J.shape)} must end in the same (n, n)")
    J = J.to(Phi)  # a constant structure matrix (exact ±1 entries) may be stored in another dtype
    return torch.linalg.matrix_norm(Phi @ J @ Phi.mT - J)


@torch.no_grad()
def energy_drift(net: HamiltonianNet, y0: Tensor) -> tuple[Tensor, Tensor]:
    """The Hamiltonian along the trajectory, and its largest deviation from the start.

    Meaningful for time-invariant weights (``weights="constant"``), where the exact
    flow conserves H; with piecewise weights H jumps at the boundaries.

    Returns:
        ``(H, drift)``: H of shape ``(steps + 1, *y0.shape[:-1])`` and ``max_k |H_k - H_0|`` per sample.
    """
    ys = net.trajectory(y0)
    if net.continuous:
        times = net.grid.boundaries(torch.float64)
    else:
        times = net.schedule.times(torch.float64)
    H = torch.stack([net.hamiltonian(t.to(y0.dtype), y) for t, y in zip(times, ys)])
    return H, (H - H[0]).abs().amax(0)


@torch.no_grad()
def sensitivity_upper_bound(net: HamiltonianNet) -> Tensor:
    """Upper bounds on ``‖∂y_N/∂y_j‖₂`` for j = 0..N from the current weights (Galimberti et al., TAC 2023).

    The product over the steps after boundary j of each step's growth bound: for
    forward Euler ``1 + h S ‖J‖₂ ‖K_k‖₂²`` and for semi-implicit Euler
    ``(1 + h S ‖X‖₂ ‖K_{p,k}‖₂²)(1 + h S ‖X‖₂ ‖K_{q,k}‖₂²)``, with S = sup|σ'|;
    every hamode integrator states its own (``Integrator.growth_bound``). Each stage's
    Lipschitz bound is taken at that stage's own time (``Integrator.stage_offsets``, also
    outside the step for methods with negative coefficients), so the bound holds for weights
    that change inside a layer (``weights="linear"``).
    """
    if net.continuous:
        raise ValueError("sensitivity_upper_bound needs a hamode integrator, not a torchdiffeq solve")
    field, step, schedule = net.field, net.integrator, net.schedule
    table = field.weight_table()
    offsets = step.stage_offsets
    factors = []
    for j in range(schedule.n_layers):
        f = field.layer(j, table, schedule.grid)
        g = torch.ones((), dtype=torch.float64)
        for _, t, dt in schedule.layer_steps(j):
            bounds = [f.lipschitz(t + c * dt) for c in offsets]
            g = g * step.growth_bound(dt, bounds).to(torch.float64)
        factors.append(g)
    f = torch.stack(factors)
    # bound[j] = prod_{k >= j} factors[k]; bound[N] = 1
    tail = torch.flip(torch.cumprod(torch.flip(f, [0]), 0), [0])
    return torch.cat([tail, torch.ones(1, dtype=tail.dtype)])


class SavedBytes:
    """Count the bytes autograd saves for backward while the block runs (``saved_tensors_hooks``).

    Tensors sharing storage with ``exclude`` (e.g. the parameters, which exist anyway) are not counted, so
    the count is the activation memory a gradient mode keeps::

        with SavedBytes(exclude=net.parameters()) as saved:
            out = net(y0)
        out.sum().backward()
        saved.bytes
    """

    def __init__(self, exclude: Iterable[Tensor] = ()) -> None:
        self._excluded = {t.data_ptr() for t in exclude}
        self.bytes = 0
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)

    def _pack(self, t: Tensor) -> Tensor:
        if t.data_ptr() not in self._excluded:
            self.bytes += t.numel() * t.element_size()
        return t

    def __enter__(self) -> "SavedBytes":
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)
