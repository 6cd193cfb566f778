"""Implicit Runge-Kutta methods (Gauss-Legendre collocation), declared by their Butcher tableau.

A Gauss-Legendre method with s stages has order 2s, is symplectic for every Hamiltonian system with a constant
structure matrix J (separable or not) and is symmetric, so its inverse step is the same method with ``-dt``.

The stage equations ``K_i = f(t + c_i dt, y + dt Σ_j a_ij K_j)`` are solved per step, without autograd, by a
damped simplified Newton iteration (the Jacobian of f per state row at the step's start, refreshed at the stage
points when the iteration contracts slowly; a row whose residual would grow takes half the step) or by plain
fixed-point iteration. Gradients are those of the **discrete** step map, by the implicit function theorem: the
cotangent ``k̄`` of the stage values is replaced by the solution ``μ`` of the transposed stage system
``μ = k̄ + (∂F/∂K)ᵀ μ`` (one dense solve per state row with the Jacobians at the stage points for Newton, or
matrix-free fixed-point iteration); backpropagation never goes through the iterations.

Two paths run the same iteration: the autograd reference (`ImplicitRungeKutta.step()`: the stages are
re-evaluated once with autograd at the solution and a hook applies the transposed solve) and the fused engine
(`fused_step()` / `fused_vjp()`: the field's analytic right-hand
side and VJPs, Jacobians from one batched VJP, one recorded VJP per stage for the parameter gradients).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import ClassVar, Literal

import torch
from torch import Tensor

from ..autograd_context import eager_under_compile, plain_autograd
from .base import Bounds, Integrator, StepOps, register_integrator
from .runge_kutta import check_consistency

__all__ = ["GaussLegendre4", "ImplicitMidpoint", "ImplicitRungeKutta", "ImplicitSolveError"]

Solver = Literal["auto", "newton", "fixed_point"]

MAX_HALVINGS = 10
"""How many times a damped Newton step of an implicit rule may be halved in one iteration."""


class ImplicitSolveError(RuntimeError):
    """The stage equations of an implicit step did not converge; the message says where and what to change."""


class ImplicitRungeKutta(Integrator):
    """A fully implicit Runge-Kutta method: ``a`` (s x s), ``b``, ``c``, solved per step.

    Subclasses declare ``a``, ``b``, ``c`` and ``order`` (and ``symplectic``, ``reversible`` where they hold).
    Instances take the solve's settings; ``get_integrator(name)`` gives the defaults.

    Args:
        rtol: each sample's iteration stops when the largest change of its stage values is at most ``rtol`` times
            its scale (the larger of its stage values and its state over ``|dt|``; None: ``16 * eps`` of the state's
            dtype: 3.6e-15 in float64, 1.9e-6 in float32); a sample that stalls at rounding level (within
            `STALL_EPS` eps of its scale, with no new smallest change for `STALL_ITERATIONS` iterations)
            is accepted too, any other raises [`ImplicitSolveError`][hamode.integrators.ImplicitSolveError] naming it.
        max_iter: iterations per step before [`ImplicitSolveError`][hamode.integrators.ImplicitSolveError].
        solver: ``"newton"`` (damped simplified Newton with the per-row Jacobian, for fields that act on each state row
            ``y[..., :]`` independently: [`Field.row_local`][hamode.fields.Field.row_local], true of every dense
            hamode field; refused on the
            others), ``"fixed_point"`` (no Jacobians, no assumption on the field; converges when
            ``|dt| Lip(f) ρ(A) < 1``) or ``"auto"`` (the default: newton on row-local fields, fixed_point on the
            others, e.g. the convolutional fields, whose Jacobian couples neighbouring pixels).
    """

    a: ClassVar[tuple[tuple[float, ...], ...]] = ()
    b: ClassVar[tuple[float, ...]] = ()
    c: ClassVar[tuple[float, ...]] = ()
    implicit: ClassVar[bool] = True

    def __init__(self, rtol: float | None = None, max_iter: int = 100, solver: Solver = "auto") -> None:
        if rtol is not None and (
            isinstance(rtol, bool) or not isinstance(rtol, (int, float)) or not (math.isfinite(rtol) and rtol > 0)
        ):
            raise ValueError(f"rtol must be a number > 0 or None (16 eps of the dtype), got {rtol!r}")
        if isinstance(max_iter, bool) or not isinstance(max_iter, int) or max_iter < 1:
            raise ValueError(f"max_iter must be an int >= 1, got {max_iter!r}")
        if solver not in ("auto", "newton", "fixed_point"):
            raise ValueError(f"solver must be 'auto', 'newton' or 'fixed_point', got {solver!r}")
        self.rtol, self.max_iter, self.solver = rtol, max_iter, solver

    def __init_subclass__(cls, **kwargs) -> None:
        super().__init_subclass__(**kwargs)
        if "b" not in cls.__dict__:
            return
        b = tuple(float(x) for x in cls.b)
        s = len(b)
        A = tuple(tuple(float(x) for x in row) for row in cls.a)
        c = tuple(float(x) for x in cls.c)
        if len(A) != s or any(len(row) != s for row in A) or len(c) != s:
            raise ValueError(f"{cls.__name__}: a must be {s} x {s} and c must have {s} entries (one per stage)")
        check_consistency(cls.__name__, A, b, c)
        cls.a, cls.b, cls.c = A, b, c
        cls.evaluations = float(s)  # per iteration; the solver statistics count the iterations
        cls.stage_offsets = c

    def __repr__(self) -> str:
        return f"{type(self).__name__}(rtol={self.rtol}, max_iter={self.max_iter}, solver={self.solver!r})"

    # ---------------------------------------------------------------- the solve (no autograd)
    def _tolerance(self, dtype: torch.dtype) -> tuple[float, float]:
        eps = torch.finfo(dtype).eps
        return (16 * eps if self.rtol is None else self.rtol), STALL_EPS * eps

    def _stage_inputs(self, y: Tensor, K: Tensor, dt: float) -> list[Tensor]:
        return [y + dt * sum(aij * K[j] for j, aij in enumerate(row) if aij != 0.0) for row in self.a]

    def _evaluate(self, f, t, y: Tensor, K: Tensor, dt: float) -> Tensor:
        return torch.stack([f(t + ci * dt, yi) for ci, yi in zip(self.c, self._stage_inputs(y, K, dt))])

    def _row_jacobian(self, f, t, y: Tensor) -> Tensor:
        """``∂f/∂y`` per state row: ``(rows, n, n)`` by n reverse passes (rows do not interact)."""
        n = y.shape[-1]
        with torch.enable_grad():
            yy = y.detach().reshape(-1, n).requires_grad_(True)
            out = f(t, yy)
            rows = [torch.autograd.grad(out[:, k].sum(), yy, retain_graph=k < n - 1)[0] for k in range(n)]
        return torch.stack(rows, dim=1)

    def _newton_matrix(self, jacobians: Sequence[Tensor], dt: float, transpose: bool = False) -> Tensor:
        """``I - dt [a_ij J_i]`` (or its transpose) per row: ``(rows, s n, s n)``; ``jacobians[i]`` at stage i."""
        s = len(self.b)
        n = jacobians[0].shape[-1]
        blocks = []
        for i in range(s):
            row = []
            for j in range(s):
                block = -dt * self.a[i][j] * jacobians[i]
                if i == j:
                    block = block + torch.eye(n, dtype=block.dtype, device=block.device)
                row.append(block)
            blocks.append(torch.cat(row, dim=-1))
        M = torch.cat(blocks, dim=-2)
        return M.mT if transpose else M

    def solve_stages(self, f, t, y: Tensor, dt: float, stats: dict | None = None) -> Tensor:
        """The converged stage derivatives ``K`` (``(s, *y.shape)``), computed without autograd."""
        with torch.no_grad():
            y = y.detach()

            def evaluate(K: Tensor) -> Tensor:
                return self._evaluate(f, t, y, K, dt)

            def jacobians(K: Tensor | None) -> list[Tensor]:
                if K is None:  # the simplified Newton matrix: one Jacobian at the step's midpoint
                    return [self._row_jacobian(f, t + 0.5 * dt, y)] * len(self.b)
                points = zip(self.c, self._stage_inputs(y, K, dt))
                return [self._row_jacobian(f, t + ci * dt, yi) for ci, yi in points]

            where = f"layer {getattr(f, 'j', '?')} (t = {float(t):.6g}, dt = {dt:g})"
            solver = self.solver_for(getattr(f, "field", None))
            return self._iterate(evaluate, jacobians, y, f(t, y), dt, stats, where, solver)

    def solver_for(self, field) -> Literal["newton", "fixed_point"]:
        """The solver this rule uses on ``field`` (``"auto"`` resolved); ``"newton"`` on a field whose rows are
        coupled is refused (its per-row Jacobians would not be the field's Jacobian)."""
        row_local = getattr(field, "row_local", True)
        if self.solver == "auto":
            return "newton" if row_local else "fixed_point"
        if self.solver == "newton" and not row_local:
            raise ValueError(
                f"{self.name}: solver='newton' solves with per-row Jacobians, but {type(field).__name__} couples the "
                "rows of its state (a convolution couples neighbouring pixels); use solver='fixed_point' or 'auto'"
            )
        return self.solver

    def _iterate(self, evaluate, jacobians, y: Tensor, k0: Tensor, dt: float, stats: dict | None, where: str, solver):
        """Solve ``K = evaluate(K)`` from ``K_i = k0``; ``jacobians(K)``: the per-row ``∂f/∂y`` at the stage points
        of ``K`` (``None``: the simplified matrix's). Newton steps are damped per state row: a row whose residual
        would grow takes half the step (up to `MAX_HALVINGS` times) and its Jacobians are refreshed at the
        new stage points, so the iteration does not diverge from a poor start at large steps.

        Every sample is solved on its own terms (`_samples()`: a state row of a row-local field, a batch element
        of an image field): it stops when its own (undamped) correction is within ``rtol`` of its own scale, the
        larger of its stage values and its state over ``|dt|`` (the solve's error reaches the step as ``dt`` times
        the error of K), and from then on takes no further step, so its result does not depend on the other
        samples of the batch."""
        rtol, floor = self._tolerance(y.dtype)
        s, n = len(self.b), y.shape[-1]
        K = torch.stack([k0] * s)
        groups = _samples(K, solver == "newton")
        G = K - evaluate(K)
        evaluations, jacobian_evals = 1 + s, 0
        newton = solver == "newton"
        lu = None
        if newton:
            lu = torch.linalg.lu_factor(self._newton_matrix(jacobians(None), dt))
            jacobian_evals += 1
        # the solve's error enters the step as dt x (error of K): measured against the sample's state as well
        state_scale = _sample_max(y.unsqueeze(0), groups) / abs(dt) if y.numel() else None
        previous = torch.full((groups,), math.inf, dtype=torch.float64, device=y.device)
        done = torch.zeros(groups, dtype=torch.bool, device=y.device)
        change = scale = None
        stop = _Stopping(rtol, floor, groups, y.device)
        for it in range(1, self.max_iter + 1):
            delta = -G if lu is None else -_per_row(functools.partial(torch.linalg.lu_solve, *lu), G)
            change = _sample_max(delta, groups) if K.numel() else delta.new_zeros(groups, dtype=torch.float64)
            if not bool(torch.isfinite(change[~done]).all()):
                break
            delta = _freeze(delta, done, groups)  # converged samples keep their solution
            K_new = K + delta
            G_new = K_new - evaluate(K_new)
            evaluations += s
            damped = torch.zeros(groups, dtype=torch.bool, device=y.device)
            if newton and K.numel():
                K_new, G_new, damped, extra = self._damp(evaluate, K, G, delta, K_new, G_new, floor)
                evaluations += s * extra
            K, G = K_new, G_new
            scale = torch.maximum(_sample_max(K, groups), state_scale) if K.numel() else change
            done = done | stop(change, scale)
            if bool(done.all()):
                if stats is not None:
                    stats["iterations"] = stats.get("iterations", 0) + it
                    stats["max_iterations"] = max(stats.get("max_iterations", 0), it)
                    stats["nfe"] = stats.get("nfe", 0) + evaluations + n * jacobian_evals
                return K
            # Newton with the Jacobians at the current stage points wherever it contracts slower than Newton should
            slow = ~done & (damped | (change > NEWTON_CONTRACTION * previous))
            if newton and bool(slow.any()):
                fresh = torch.linalg.lu_factor(self._newton_matrix(jacobians(K), dt))
                lu = tuple(torch.where(_rows_mask(slow, old), new, old) for new, old in zip(fresh, lu))
                jacobian_evals += s
            previous = torch.where(done, previous, change)
        open_ = (~done).nonzero().flatten()
        if scale is None or not bool(torch.isfinite(change[open_]).all()):
            detail = "its stage values are not finite"
            worst = int(open_[0])
        else:
            worst = int(open_[(change[open_] / scale[open_].clamp_min(1e-300)).argmax()])
            detail = (
                f"its last correction {float(change[worst]):.3g} against {rtol:.3g} x {float(scale[worst]):.3g} "
                "required, not stalled at rounding level"
            )
        raise ImplicitSolveError(
            f"{self.name or type(self).__name__}: the stage equations of {where} did not converge in "
            f"{self.max_iter} {solver} iterations for {len(open_)} sample(s) (the worst, sample {worst}: {detail}). "
            "Use a smaller h (or more substeps), a larger max_iter or a looser rtol"
            + (", or solver='newton' (on row-local fields)." if solver == "fixed_point" else ".")
        )

    def _damp(self, evaluate, K, G, delta, K_new, G_new, floor):
        """Halve the Newton step of each state row whose residual max-norm would grow (and is above rounding
        level), re-evaluating all rows once per halving. Returns ``(K, G, damped, halvings)``."""
        s, n = K.shape[0], K.shape[-1]

        def row_norm(R: Tensor) -> Tensor:
            return R.reshape(s, -1, n).abs().amax(dim=(0, 2))

        before = row_norm(G)
        tiny = floor * row_norm(K)  # rounding level of each row's own stage values
        lam = torch.ones_like(before)
        halvings = 0
        while True:
            after = row_norm(G_new)
            worse = ~(after <= torch.maximum(before, tiny))  # NaN counts as worse
            if not bool(worse.any()) or halvings == MAX_HALVINGS:
                return K_new, G_new, lam < 1, halvings
            halvings += 1
            lam = torch.where(worse, 0.5 * lam, lam)
            step = lam.reshape(1, -1, 1) * delta.reshape(s, -1, n)
            K_new = K + step.reshape(K.shape)
            G_new = K_new - evaluate(K_new)

    # ---------------------------------------------------------------- the step (autograd through the IFT)
    @eager_under_compile  # the solve is eager (data-dependent iterations): torch.compile runs it behind a graph break
    def step(self, f, t, y: Tensor, dt: float, stats: dict | None = None) -> Tensor:
        if not plain_autograd():
            raise RuntimeError(
                f"{self.name}: implicit steps solve their stage equations eagerly and take their gradients by the "
                "implicit function theorem, which torch.func transforms (vmap, grad, jacrev, jacfwd) and forward-mode "
                "AD do not see; use an explicit rule there, or reverse-mode autograd (loss.backward, autograd.grad)"
            )
        K = self.solve_stages(f, t, y, dt, stats)
        if not torch.is_grad_enabled():
            return y + dt * _weighted(self.b, K)
        K0 = K.requires_grad_(True)
        Y = self._stage_inputs(y, K0, dt)
        stages = [f(t + ci * dt, yi) for ci, yi in zip(self.c, Y)]
        Kn = torch.stack(stages)
        if not Kn.requires_grad:
            return y + dt * _weighted(self.b, K.detach())
        Kn.register_hook(self._adjoint(K0, Y, stages, dt, f))
        # the value is the converged K (as without autograd), the gradient is the hooked one of Kn
        return y + dt * _weighted(self.b, K.detach() + (Kn - Kn.detach()))

    def _adjoint(self, K0: Tensor, Y: list[Tensor], stages: list[Tensor], dt: float, f):
        def hook(g: Tensor | None) -> Tensor | None:
            if g is None:  # an undefined cotangent stays undefined
                return None
            if torch.is_grad_enabled():
                raise RuntimeError(
                    f"{self.name}: a backward with create_graph=True (second derivatives) is not supported by the "
                    "implicit-function gradient of implicit steps; use an explicit rule for double backward"
                )
            if self.solver_for(getattr(f, "field", None)) == "newton":
                return self._adjoint_dense(g, Y, stages, dt)
            return self._adjoint_fixed_point(g, stages, K0, f)

        return hook

    def _adjoint_dense(self, g: Tensor, Y: list[Tensor], stages: list[Tensor], dt: float) -> Tensor:
        n = g.shape[-1]
        jac = []
        for yi, ki in zip(Y, stages):  # ∂f/∂y at each stage point, per row
            with torch.enable_grad():  # the backward runs without grad mode: the row sums need a graph
                rows = [torch.autograd.grad(ki[..., k].sum(), yi, retain_graph=True)[0] for k in range(n)]
            jac.append(torch.stack(rows, dim=-2).reshape(-1, n, n))
        return self._transposed_solve(jac, g, dt)

    def _transposed_solve(self, jacobians: Sequence[Tensor], kbar: Tensor, dt: float) -> Tensor:
        """``μ`` with ``(I - dt [a_ij J_i])ᵀ μ = k̄``, one dense solve per state row (``jacobians[i]`` at stage i)."""
        M = self._newton_matrix(jacobians, dt, transpose=True)
        return _per_row(lambda rhs: torch.linalg.solve(M, rhs), kbar)

    def _adjoint_fixed_point(self, g: Tensor, stages: list[Tensor], K0: Tensor, f) -> Tensor:
        def transposed_jvp(mu: Tensor) -> Tensor:
            # through the stage values themselves, not the hooked stack (that would call this hook again)
            return torch.autograd.grad(stages, K0, list(mu), retain_graph=True)[0]

        return self._adjoint_iterate(g, transposed_jvp, getattr(f, "j", "?"))

    def _adjoint_iterate(self, kbar: Tensor, transposed, layer) -> Tensor:
        """``μ = k̄ + (∂F/∂K)ᵀ μ`` by fixed-point iteration; ``transposed(μ)`` is ``(∂F/∂K)ᵀ μ``; per sample as in
        `_iterate()` (the adjoint runs on fields whose rows are coupled: samples are batch elements)."""
        rtol, floor = self._tolerance(kbar.dtype)
        groups = _samples(kbar, False)
        mu, change = kbar, None
        stop = _Stopping(rtol, floor, groups, kbar.device)
        done = torch.zeros(groups, dtype=torch.bool, device=kbar.device)
        for _ in range(self.max_iter):
            new = kbar + transposed(mu)
            step = new - mu
            change, scale = _sample_max(step, groups), _sample_max(new, groups)
            mu = mu + _freeze(step, done, groups)
            done = done | stop(change, scale)
            if bool(done.all()):
                return mu
        raise ImplicitSolveError(
            f"{self.name}: the adjoint stage equations of layer {layer} did not converge in {self.max_iter} "
            f"fixed-point iterations for {int((~done).sum())} sample(s) (largest last change "
            f"{float(change[~done].max()):.3g}); use solver='newton' or a smaller h"
        )

    # ---------------------------------------------------------------- fused engine
    # The same iteration on the field's analytic right-hand side (ops.f) and VJPs: no autograd graph. The tape holds
    # each stage's input and activation context at the converged solution (the last evaluation of the iteration);
    # the VJP solves the transposed stage system with unrecorded VJPs and records one VJP per stage (with the
    # solution μ_i), so the parameter gradients are exact for the discrete step.
    def fused_step(self, ops: StepOps, j, y, dt):
        contexts: list = []

        def evaluate(K: Tensor) -> Tensor:
            contexts.clear()
            out = []
            for yi in self._stage_inputs(y, K, dt):
                ki, ctx = ops.f(j, yi)
                out.append(ki)
                contexts.append(ctx)
            return torch.stack(out)

        k0, ctx0 = ops.f(j, y)

        def jacobians(K: Tensor | None) -> list[Tensor]:
            if K is None:  # the weights are constant inside a layer here: the Jacobian at y is the midpoint's
                return [self._fused_jacobian(ops, j, y, ctx0)] * len(self.b)
            return [self._fused_jacobian(ops, j, yi, ctx) for yi, ctx in zip(self._stage_inputs(y, K, dt), contexts)]

        solver = self.solver_for(ops.field)
        K = self._iterate(evaluate, jacobians, y, k0, dt, ops.stats, f"layer {j} (dt = {dt:g})", solver)
        Y = self._stage_inputs(y, K, dt)
        tape = tuple(item for pair in zip(Y, contexts) for item in pair)
        return y + dt * _weighted(self.b, K), tape

    def fused_vjp(self, ops: StepOps, j, tape, g, dt):
        Y, contexts = tape[0::2], tape[1::2]
        kbar = torch.stack([(dt * bi) * g for bi in self.b])
        if self.solver_for(ops.field) == "newton":
            jac = [self._fused_jacobian(ops, j, yi, ctx) for yi, ctx in zip(Y, contexts)]
            mu = self._transposed_solve(jac, kbar, dt)
        else:
            s = len(self.b)

            def transposed(mu: Tensor) -> Tensor:  # Σ_i dt a_im (∂f/∂y at stage i)ᵀ μ_i, for each stage m
                vj = torch.stack([ops.state_vjp(j, yi, ctx, mi) for yi, ctx, mi in zip(Y, contexts, mu)])
                return torch.stack([dt * _weighted([self.a[i][m] for i in range(s)], vj) for m in range(s)])

            mu = self._adjoint_iterate(kbar, transposed, j)
        out = g
        for yi, ctx, mi in zip(Y, contexts, mu):  # the recorded VJPs: the parameter factors of the step
            out = ops.f_vjp(j, yi, ctx, mi, 1.0, out)
        return out

    def fused_inverse(self, ops: StepOps, j, state, dt):
        return self.fused_step(ops, j, state, -dt)[0]

    def _fused_jacobian(self, ops: StepOps, j, y: Tensor, ctx) -> Tensor:
        """``∂f/∂y`` per row, ``(rows, n, n)``, by one unrecorded analytic VJP on n copies of the rows (copy k with
        the cotangent ``e_k`` gives row k of each Jacobian)."""
        rows, n = y.shape
        units = torch.eye(n, dtype=y.dtype, device=y.device).repeat_interleave(rows, dim=0)
        vjp = ops.state_vjp(j, y.repeat(n, 1), _repeat_rows(ctx, n), units)
        return vjp.reshape(n, rows, n).transpose(0, 1)

    # ---------------------------------------------------------------- inverse and bounds
    def inverse_step(self, f, t, y_next: Tensor, dt: float, stats: dict | None = None) -> Tensor:
        """The inverse of a symmetric method's step is the method with ``-dt`` from the step's end (to the
        solve's tolerance)."""
        if not self.reversible:
            raise NotImplementedError(f"integrator {self.name!r} is not reversible")
        return self.step(f, t + dt, y_next, -dt, stats)

    def growth_bound(self, dt: float, bounds: Bounds | Sequence[Bounds]) -> Tensor:
        """``1 + |dt| Σ|b_i| κ`` with ``κ = L / (1 - |dt| α L)`` (``L`` the largest stage Lipschitz bound,
        ``α = max_i Σ_j |a_ij|``): a bound on ``‖∂K_i/∂y‖`` wherever the stage equations contract
        (``|dt| α L < 1``); infinite otherwise."""
        stage = self._stage_bounds(bounds)
        L = torch.stack([torch.as_tensor(b["full"], dtype=torch.float64) for b in stage]).amax(0)
        h = abs(dt)
        alpha = max(sum(abs(x) for x in row) for row in self.a)
        denom = 1 - h * alpha * L
        kappa = torch.where(denom > 0, L / denom.clamp_min(1e-300), torch.full_like(L, math.inf))
        return 1 + h * sum(abs(x) for x in self.b) * kappa


STALL_ITERATIONS = 5
"""A sample whose change is within `STALL_EPS` eps of its scale but has not reached a new minimum for this
many iterations has stalled at rounding level and is accepted (an oscillating but still contracting iteration,
whose change is not monotone, keeps going)."""
STALL_EPS = 128
"""The largest change (in eps of the dtype, relative to the sample's stage values) a stalled iteration is accepted
with; above it the solve raises [`ImplicitSolveError`][hamode.integrators.ImplicitSolveError] in every dtype (it was
``sqrt(eps)``: 3.4e-4 in
float32, which accepted unconverged solves)."""
NEWTON_CONTRACTION = 0.1
"""A Newton iteration whose change shrinks by less than this factor is refreshed with the Jacobians at the current
stage points (simplified Newton with a stale Jacobian contracts only linearly; in float64 that cost 19–24
iterations at large steps)."""


class _Stopping:
    """The iterations' stopping test, per sample: its change is within ``rtol`` of its scale (or 0), or it stalled at
    rounding level (no new smallest change for `STALL_ITERATIONS` iterations, the smallest within ``floor``
    of its scale)."""

    __slots__ = ("best", "floor", "rtol", "since_best")

    def __init__(self, rtol: float, floor: float, groups: int, device) -> None:
        self.rtol, self.floor = rtol, floor
        self.best = torch.full((groups,), math.inf, dtype=torch.float64, device=device)
        self.since_best = torch.zeros(groups, dtype=torch.int64, device=device)

    def __call__(self, change: Tensor, scale: Tensor) -> Tensor:
        scale = scale.clamp_min(torch.finfo(torch.float64).tiny)  # an absolute floor for an all-zero sample
        converged = (change <= self.rtol * scale) | (change == 0)
        improved = change < self.best
        self.best = torch.where(improved, change, self.best)
        self.since_best = torch.where(improved, torch.zeros_like(self.since_best), self.since_best + 1)
        return converged | ((self.since_best >= STALL_ITERATIONS) & (self.best <= self.floor * scale))


def _samples(K: Tensor, rows: bool) -> int:
    """How many samples the stages ``K`` (``(s, *state)``) hold: state rows for a row-local field (``rows``),
    batch elements (the state's leading axis) otherwise."""
    return K[0].numel() // K.shape[-1] if rows else K.shape[1]


def _sample_max(x: Tensor, groups: int) -> Tensor:
    """The largest absolute value of each sample's entries of ``x`` (``(s, *state)``), in float64: ``(groups,)``."""
    return x.detach().reshape(x.shape[0], groups, -1).abs().amax(dim=(0, 2)).to(torch.float64)


def _rows_mask(mask: Tensor, like: Tensor) -> Tensor:
    """A per-row mask shaped to select rows of ``like`` (rows first)."""
    return mask.reshape(-1, *[1] * (like.dim() - 1))


def _freeze(step: Tensor, done: Tensor, groups: int) -> Tensor:
    """``step`` with the entries of the converged samples set to zero."""
    if not bool(done.any()):
        return step
    keep = (~done).to(step.dtype).reshape(1, groups, 1)
    return (step.reshape(step.shape[0], groups, -1) * keep).reshape(step.shape)


def _per_row(solve, G: Tensor) -> Tensor:
    """``solve`` applied to each state row's stacked stage vector: ``(s, *rows, n)`` <-> ``(rows, s n, 1)``."""
    s, n = G.shape[0], G.shape[-1]
    rhs = G.reshape(s, -1, n).permute(1, 0, 2).reshape(-1, s * n, 1)
    return solve(rhs).reshape(-1, s, n).permute(1, 0, 2).reshape(G.shape)


def _repeat_rows(ctx, n: int):
    """A fused evaluation's context (a tensor or a tuple of tensors, rows first) for n stacked copies of its rows."""
    if isinstance(ctx, tuple):
        return tuple(_repeat_rows(c, n) for c in ctx)
    return ctx.repeat(n, *([1] * (ctx.dim() - 1)))


def _weighted(weights: Sequence[float], K: Tensor) -> Tensor:
    out = None
    for w, k in zip(weights, K):
        if w != 0.0:
            out = w * k if out is None else out + w * k
    return out if out is not None else torch.zeros_like(K[0])


_R3 = math.sqrt(3.0)


@register_integrator("implicit_midpoint")
class ImplicitMidpoint(ImplicitRungeKutta):
    """The implicit midpoint rule (Gauss-Legendre, s = 1): ``y_{k+1} = y_k + dt f(y_k/2 + y_{k+1}/2)``.
    Order 2, symplectic for every Hamiltonian field, symmetric (reversible)."""

    order = 2
    symplectic = True
    reversible = True
    a = ((0.5,),)
    b = (1.0,)
    c = (0.5,)


@register_integrator("gauss_legendre4")
class GaussLegendre4(ImplicitRungeKutta):
    """The two-stage Gauss-Legendre collocation method (Hammer & Hollingsworth 1955). Order 4, symplectic for
    every Hamiltonian field, symmetric (reversible)."""

    order = 4
    symplectic = True
    reversible = True
    a = ((0.25, 0.25 - _R3 / 6), (0.25 + _R3 / 6, 0.25))
    b = (0.5, 0.5)
    c = (0.5 - _R3 / 6, 0.5 + _R3 / 6)
