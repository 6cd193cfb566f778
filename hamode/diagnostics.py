"""Gradient diagnostics: backward sensitivity matrices (BSM), their norms, symplecticity, energy, bounds."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from .net import HamiltonianNet
from .validation import check_int

__all__ = [
    "SavedBytes",
    "backward_sensitivity",
    "energy_drift",
    "layer_sensitivity",
    "sensitivity_norm_estimate",
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
        ``(len(layers), *y0.shape[:-1], dim, dim)``; row i, column k is ``∂y_N[i]/∂y_j[k]``. For image fields
        (``(B, C, H, W)`` states) the state of a sample is flattened: ``(len(layers), B, C H W, C H W)``, whose
        structure matrix is ``field.flat_structure(H, W)``; use
        [`sensitivity_norm_estimate()`][hamode.diagnostics.sensitivity_norm_estimate] beyond small
        images.
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

    rank = net.field.state_rank  # image fields: one sample's state is (C, H, W), flattened to C H W coordinates
    with torch.enable_grad():
        yN = net.run_layers(y0.detach(), tap).flatten(-rank)
        inputs = [taps[j] for j in wanted]
        rows = []
        n = yN.shape[-1]
        for i in range(n):
            grads = torch.autograd.grad(yN[..., i].sum(), inputs, retain_graph=i < n - 1, allow_unused=True)
            rows.append(
                torch.stack([(torch.zeros_like(e) if g is None else g).flatten(-rank) for g, e in zip(grads, inputs)])
            )
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


def sensitivity_norm_estimate(
    net: HamiltonianNet, y0: Tensor, layer: int = 0, max_iter: int = 100, rtol: float = 1e-10, seed: int = 0
) -> dict[str, Tensor | int]:
    """Matrix-free ``‖∂y_N/∂y_j‖₂`` and the smallest singular value of ``∂y_N/∂y_j`` per sample.

    For states too large for [`backward_sensitivity()`][hamode.diagnostics.backward_sensitivity] (images: ``C H W``
    coordinates per sample). Lanczos
    iteration on ``AᵀA`` (``A = ∂y_N/∂y_j``) with full reorthogonalisation, one VJP (``Aᵀu``) and one JVP
    (``A v``, by differentiating a VJP once more) per iteration, run for all samples at once (they do not
    interact); the extreme Ritz values of the tridiagonal matrix give ``σ_max²`` and ``σ_min²``. It stops when
    both changed by at most ``rtol`` (relative) in an iteration, after ``max_iter`` iterations, or when the
    Krylov space is exhausted (then the values are exact to rounding: at most ``C H W`` iterations).

    Args:
        net: the network (explicit rules or torchdiffeq solves; the implicit rules offer no second derivatives).
        y0: inputs.
        layer: the boundary j in ``[0, N]``.
        max_iter: Lanczos iterations at most.
        rtol: the stopping tolerance on the extreme Ritz values.
        seed: seeds the starting vectors.

    Returns:
        ``{"norm": (B,), "sigma_min": (B,), "iterations": int}``.
    """
    N = net.n_layers
    if not 0 <= int(layer) <= N:
        raise ValueError(f"layer must lie in [0, {N}], got {layer}")
    check_int("max_iter", max_iter, 1)
    if isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not 0 < rtol < 1:
        raise ValueError(f"rtol must be a number in (0, 1), got {rtol!r}")
    if net.integrator is not None and net.integrator.implicit:
        raise ValueError(
            f"sensitivity_norm_estimate needs JVPs (second derivatives of the flow), which {net.integrator_name} "
            "does not offer; use backward_sensitivity (exact, one reverse pass per state coordinate)"
        )
    rank = net.field.state_rank
    tap: dict[str, Tensor] = {}

    def at_boundary(j: int, y: Tensor) -> Tensor:
        if j == layer:
            tap["e"] = torch.zeros_like(y, requires_grad=True)
            return y + tap["e"]
        return y

    with torch.enable_grad():
        yN = net.run_layers(y0.detach(), at_boundary)
        e = tap["e"]
        u0 = torch.zeros_like(yN, requires_grad=True)
        (vjp_u0,) = torch.autograd.grad(yN, e, u0, create_graph=True)  # Aᵀ u0, linear in u0

        def AtA(v: Tensor) -> Tensor:
            (Av,) = torch.autograd.grad(vjp_u0, u0, v, retain_graph=True)
            (AtAv,) = torch.autograd.grad(yN, e, Av, retain_graph=True)
            return AtAv.detach()

        shape = e.shape
        batch = shape[: e.dim() - rank]
        n = math.prod(shape[e.dim() - rank :])
        gen = torch.Generator(device="cpu").manual_seed(seed)
        q = torch.randn(shape, generator=gen, dtype=e.dtype).to(e.device).reshape(-1, n)
        q = q / q.norm(dim=1, keepdim=True)
        rows = q.shape[0]
        Q = [q]
        alphas: list[Tensor] = []
        betas: list[Tensor] = []
        active = torch.ones(rows, dtype=torch.bool, device=e.device)
        sizes = torch.zeros(rows, dtype=torch.long)
        previous = None
        iterations = 0
        while iterations < min(max_iter, n):
            iterations += 1
            w = AtA(q.reshape(shape)).reshape(-1, n)
            alpha = (q * w).sum(1)
            w = w - alpha[:, None] * q - (betas[-1][:, None] * Q[-2] if betas else 0.0)
            for _ in range(2):  # full reorthogonalisation, twice
                basis = torch.stack(Q, 1)  # (rows, k, n)
                w = w - torch.einsum("rkn,rk->rn", basis, torch.einsum("rkn,rn->rk", basis, w))
            beta = w.norm(dim=1)
            alphas.append(alpha)
            sizes += active.long().cpu()
            scale = torch.stack(alphas, 1).abs().amax(1)
            exhausted = beta <= 1e-10 * scale.clamp_min(torch.finfo(e.dtype).tiny)
            active = active & ~exhausted
            betas.append(torch.where(active, beta, torch.zeros_like(beta)))
            q = torch.where(active[:, None], w / beta.clamp_min(torch.finfo(e.dtype).tiny)[:, None], 0.0)
            Q.append(q)
            extremes = _ritz_extremes(alphas, betas, sizes)
            if not bool(active.any()):
                break
            if previous is not None and bool(((extremes - previous).abs() <= rtol * extremes.abs()).all()):
                break
            previous = extremes
    return {
        "norm": extremes[:, 1].clamp_min(0).sqrt().reshape(batch),
        "sigma_min": extremes[:, 0].clamp_min(0).sqrt().reshape(batch),
        "iterations": iterations,
    }


def layer_sensitivity(
    net: HamiltonianNet,
    y0: Tensor,
    layers: Sequence[int] | None = None,
    exact_limit: int = 64,
    max_iter: int = 30,
    rtol: float = 1e-6,
) -> dict[str, Tensor | str]:
    """``‖∂y_N/∂y_j‖₂`` and ``σ_min(∂y_N/∂y_j)`` per layer boundary, for any state: exact (the BSM of
    [`backward_sensitivity()`][hamode.diagnostics.backward_sensitivity], one reverse pass per coordinate) when a
    state has at most ``exact_limit``
    coordinates, else the matrix-free [`sensitivity_norm_estimate()`][hamode.diagnostics.sensitivity_norm_estimate]
    (Lanczos; its norm is a lower estimate that
    converges from below, its ``σ_min`` an upper estimate that converges from above).

    Args:
        net: the network.
        y0: its input states.
        layers: boundaries j in ``[0, N]`` (default all ``N + 1``).
        exact_limit: the largest state (coordinates of one state) for the exact BSM.
        max_iter: Lanczos iterations per boundary for larger states.
        rtol: Lanczos stopping tolerance.

    Returns:
        ``{"layers": (L,), "norm": (L, *batch), "sigma_min": (L, *batch), "method": "exact" | "lanczos",
        "matrices": the BSMs of [`backward_sensitivity()`][hamode.diagnostics.backward_sensitivity] (exact) or None
        (lanczos)}``.
    """
    N = net.n_layers
    wanted = list(range(N + 1)) if layers is None else [int(j) for j in layers]
    check_int("exact_limit", exact_limit, 1)
    rank = net.field.state_rank
    size = math.prod(y0.shape[y0.dim() - rank :])
    if size <= exact_limit:
        S = backward_sensitivity(net, y0, wanted)
        sv = torch.linalg.svdvals(S)
        norm, smin, method, matrices = sv[..., 0], sv[..., -1], "exact", S
    else:
        found = [sensitivity_norm_estimate(net, y0, j, max_iter=max_iter, rtol=rtol) for j in wanted]
        norm = torch.stack([f["norm"] for f in found])
        smin = torch.stack([f["sigma_min"] for f in found])
        method, matrices = "lanczos", None
    return {"layers": torch.tensor(wanted), "norm": norm, "sigma_min": smin, "method": method, "matrices": matrices}


def _ritz_extremes(alphas: list[Tensor], betas: list[Tensor], sizes: Tensor) -> Tensor:
    """``(rows, 2)``: the smallest and largest eigenvalue of each row's Lanczos tridiagonal matrix (its own size)."""
    a = torch.stack(alphas, 1)
    b = torch.stack(betas, 1)
    out = []
    for r in range(a.shape[0]):
        k = int(sizes[r])
        T = torch.diag(a[r, :k]) + torch.diag(b[r, : k - 1], 1) + torch.diag(b[r, : k - 1], -1)
        ev = torch.linalg.eigvalsh(T)
        out.append(torch.stack([ev[0], ev[-1]]))
    return torch.stack(out)


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
