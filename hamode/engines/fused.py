"""The fused gradient engine: one autograd.Function runs any (field, integrator) pair.

The forward runs every layer without an autograd graph. The backward sweeps the layers
in reverse with the integrator's step VJP, written through the field's analytic
vector-Jacobian products, and collects the per-evaluation factors from which all
parameter gradients are formed at the end in a few batched matrix products (one
``bmm`` over the layers instead of small products per layer). Per-layer products that
are the same for every sample (``K Jᵀ``, ``K_q X``, ...) are computed once for all layers.

Storage policies:
    backprop: the forward keeps each step's tape (stage inputs and activations): exact, memory O(L).
    reversible: the forward keeps only y(T); the backward rebuilds each state with the exact
        inverse step and recomputes that step's tape: memory O(1) in depth.

Applies to fields that provide [`FusedField`][hamode.fields.FusedField] and integrators with a fused
step (every declared splitting and Runge-Kutta method), for piecewise-constant and constant
weights; [`HamiltonianNet`][hamode.HamiltonianNet] runs the autograd reference elsewhere (linear weights,
torchdiffeq, autograd fields) and wherever the fused Function cannot be traced or transformed
(see [`engines`][hamode.engines]).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..fields import Field
from ..fields.base import Factors, FusedField, FusedWeights
from ..integrators import Integrator
from .buffers import give_back, take_buffers
from .common import FusedSpec, parameter_gradients, remember_weights, weights_of_the_forward
from .reference import reference_gradients

__all__ = [
    "FACTOR_BUDGET_BYTES",
    "FusedFlow",
    "FusedOps",
    "fused_applies",
    "fused_forward",
    "fused_inverse_flow",
    "reconstruct",
]

FACTOR_BUDGET_BYTES = 2**20
"""The backward forms parameter gradients in batches of layers whose recorded factors fit in this
many bytes, so the reversible mode's memory stays flat in depth (and backprop's adds at most this)."""
LARGE_ROWS = 2048
"""From this many rows (samples x leading dims) per evaluation, batching layers saves no per-op overhead
and stacking would only copy: gradients are then formed one layer at a time, from views."""


class FusedOps:
    """The field's fused right-hand sides for one pass: the [`StepOps`][hamode.integrators.StepOps] a fused step calls.

    Holds one dict of per-layer weight views (built once, shared by the forward and the
    backward of a step) and records each VJP's parameter factors and scale by half-field
    ("f", or "dp"/"dq"). The field's methods are bound once: this object sits in the
    innermost loop.
    """

    __slots__ = (
        "_af",
        "_buffers",
        "_dpe",
        "_dpv",
        "_dqe",
        "_dqv",
        "_fe",
        "_fv",
        "_gf",
        "alphas",
        "field",
        "fw",
        "groups",
        "stats",
        "w",
    )

    def __init__(self, field: FusedField, fw: FusedWeights, stats: dict | None = None) -> None:
        self.field, self.fw, self.stats = field, fw, stats
        self._buffers = take_buffers(field, fw)
        nodes = self._buffers.nodes
        self.w = nodes * field.n_layers if field.weights == "constant" else nodes
        self.groups: dict[str, list[Factors]] = {"f": [], "dp": [], "dq": []}
        self.alphas: dict[str, list[float]] = {"f": [], "dp": [], "dq": []}
        if field.separable:  # a FusedSeparableField
            self._dpe, self._dpv = field.fused_dp, field.fused_dp_vjp
            self._dqe, self._dqv = field.fused_dq, field.fused_dq_vjp
            self._fe = self._fv = None  # the full field from the two halves (no bound method of self: no cycle)
        else:
            self._fe, self._fv = field.fused_f, field.fused_f_vjp
            self._dpe = self._dpv = self._dqe = self._dqv = None
        self._gf, self._af = self.groups["f"], self.alphas["f"]

    def reset(self) -> None:
        for v in (*self.groups.values(), *self.alphas.values()):
            v.clear()

    def __del__(self) -> None:
        buffers = getattr(self, "_buffers", None)
        if buffers is not None:
            self._buffers = None
            give_back(self.field, buffers)

    def f(self, j, y, alpha=1.0, base=None):
        if self._fe is None:
            return self._halves_f(self.w[j], y, alpha, base)
        return self._fe(self.w[j], y, alpha, base)

    def f_vjp(self, j, y, ctx, c, alpha=1.0, base=None):
        if self._fv is None:  # separable: each half records its own factors
            return self._halves_f_vjp(self.w[j], y, ctx, c, alpha, base, True)
        g, factors = self._fv(self.w[j], y, ctx, c, alpha, base)
        self._gf.append(factors)  # the lists are cleared in place by reset(), never replaced
        self._af.append(alpha)
        return g

    def state_vjp(self, j, y, ctx, c):
        """``(∂f/∂y)ᵀ c`` without recording parameter factors (for the inner solves of implicit steps)."""
        if self._fv is None:
            return self._halves_f_vjp(self.w[j], y, ctx, c, 1.0, None, False)
        return self._fv(self.w[j], y, ctx, c)[0]

    # a separable field's full f and its VJP, for the Runge-Kutta and implicit rules
    def _halves_f(self, w, y, alpha=1.0, base=None):
        split, join = self.field.split, self.field.join
        p, q = split(y)
        bp, bq = split(base) if base is not None else (None, None)
        kp, sq = self._dpe(w, q, alpha, bp)
        kq, sp = self._dqe(w, p, alpha, bq)
        return join(kp, kq), (sq, sp)

    def _halves_f_vjp(self, w, y, ctx, c, alpha, base, record: bool):
        split = self.field.split
        p, q = split(y)
        cp, cq = split(c)
        bp, bq = split(base) if base is not None else (None, None)
        gq, fq = self._dpv(w, q, ctx[0], cp, alpha, bq)
        gp, fp = self._dqv(w, p, ctx[1], cq, alpha, bp)
        if record:
            self.groups["dp"].append(fq)
            self.alphas["dp"].append(alpha)
            self.groups["dq"].append(fp)
            self.alphas["dq"].append(alpha)
        return self.field.join(gp, gq)

    def dp(self, j, q, alpha=1.0, base=None):
        return self._dpe(self.w[j], q, alpha, base)

    def dp_vjp(self, j, q, ctx, c, alpha=1.0, base=None):
        g, factors = self._dpv(self.w[j], q, ctx, c, alpha, base)
        self.groups["dp"].append(factors)
        self.alphas["dp"].append(alpha)
        return g

    def dq(self, j, p, alpha=1.0, base=None):
        return self._dqe(self.w[j], p, alpha, base)

    def dq_vjp(self, j, p, ctx, c, alpha=1.0, base=None):
        g, factors = self._dqv(self.w[j], p, ctx, c, alpha, base)
        self.groups["dq"].append(factors)
        self.alphas["dq"].append(alpha)
        return g

    def recorded_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for facs in self.groups.values() for f in facs for t in f)

    def slots(self, n_nodes: int):
        """Yield ``(name, factors, a)``: the s-th evaluation of each node's half-field ``name``, stacked
        over nodes as ``(nodes, B, ·)`` (a view, no copy, when there is one node), and its alphas (a
        float when equal across nodes, else ``(nodes, 1, 1)``).

        The backward walked the layers in reverse with each layer's evaluations contiguous, and every
        layer makes the same evaluations, so after reversing, evaluation s of every node sits at s::k.
        """
        for name, facs in self.groups.items():
            if not facs:
                continue
            facs, alphas = facs[::-1], self.alphas[name][::-1]
            k = len(facs) // n_nodes
            for s in range(k):
                sel, al = facs[s::k], alphas[s::k]
                if n_nodes == 1:
                    factors = tuple(t.unsqueeze(0) for t in sel[0])
                else:
                    factors = tuple(torch.stack([f[c] for f in sel]) for c in range(len(sel[0])))
                if all(x == al[0] for x in al):
                    a = float(al[0])
                else:
                    ref = factors[0]
                    a = torch.tensor(al, dtype=ref.dtype, device=ref.device).reshape(n_nodes, 1, 1)
                yield name, factors, a


def fused_applies(field: Field, integrator: Integrator | None, reversible: bool = False) -> bool:
    """Whether the fused engine covers this field and integrator, its weights (and reversibility)."""
    if integrator is None or not (field.supports_fused and integrator.supports_fused):
        return False
    if field.weights not in ("piecewise", "constant"):
        return False
    return not reversible or integrator.reversible


def _flatten_tapes(tapes: list[tuple]) -> tuple[list[Tensor], object]:
    """All tapes of a pass share one structure: a tuple whose items are tensors or (nested) tuples of tensors (a
    field's context may itself be a tuple). Returns the flat tensors and that structure: ``None`` for a tape of bare
    tensors, the items' widths (0 for a bare tensor) where each item is a tensor or a tuple of tensors, else the
    tape's tree (``None`` at each tensor)."""
    if not tapes:
        return [], None
    first = tapes[0]
    if all(isinstance(item, Tensor) for item in first):
        return [t for tape in tapes for t in tape], None
    if all(isinstance(item, Tensor) or all(isinstance(t, Tensor) for t in item) for item in first):
        widths = tuple(len(item) if isinstance(item, tuple) else 0 for item in first)
        return [t for tape in tapes for item in tape for t in (item if isinstance(item, tuple) else (item,))], widths
    flat: list[Tensor] = []
    for tape in tapes:
        _leaves(tape, flat)
    return flat, _Tree(_structure(first))


class _Tree(tuple):
    """A tape structure nested deeper than one level (``_flatten_tapes``)."""


def _structure(item) -> object:
    return None if isinstance(item, Tensor) else tuple(_structure(i) for i in item)


def _leaves(item, out: list[Tensor]) -> None:
    if isinstance(item, Tensor):
        out.append(item)
    else:
        for i in item:
            _leaves(i, out)


def _rebuild(structure, leaves) -> object:
    return next(leaves) if structure is None else tuple(_rebuild(s, leaves) for s in structure)


def _tape(flat: list[Tensor], structure, k: int, stride: int) -> tuple:
    """Tape k from the flat list (``stride`` tensors per tape), in the structure ``_flatten_tapes`` returned."""
    chunk = flat[k * stride : (k + 1) * stride]
    if structure is None:
        return tuple(chunk)
    if isinstance(structure, _Tree):
        return _rebuild(structure, iter(chunk))
    out, i = [], 0
    for w in structure:
        if w:
            out.append(tuple(chunk[i : i + w]))
            i += w
        else:
            out.append(chunk[i])
            i += 1
    return tuple(out)


def _flush(field, ops: FusedOps, fw, table, acc: dict[str, Tensor], lo: int, hi: int) -> None:
    """Form the parameter gradients of layers [lo, hi) from the recorded factors and add them to ``acc``."""
    if field.weights == "constant":
        n0, n1 = 0, 1
    else:
        n0, n1 = lo, hi
    shared = field.fused_shared_keys
    fw_nodes = {key: (v if key in shared else v[n0:n1]) for key, v in fw.items()}
    for name, factors, a in ops.slots(n1 - n0):
        for key, gk in field.fused_group_grads(name, fw_nodes, table, factors, a).items():
            if key in shared:
                acc[key] = acc[key] + gk if key in acc else gk
            else:
                if key not in acc:
                    acc[key] = gk.new_zeros(table[key].shape)
                acc[key][n0:n1] += gk
    ops.reset()


def _layers_per_flush(out: Tensor, recorded: int) -> int:
    """How many layers' factors to stack before forming their gradients: one layer at a time where the factors hold
    the rows of a large state (stacking would only copy them), else as many as fit in FACTOR_BUDGET_BYTES (few
    per-op overheads for many layers; factors already summed over the rows by a native VJP are this small too)."""
    rows = out.shape[0]
    if rows >= LARGE_ROWS and recorded >= rows * out.element_size():
        return 1
    return max(1, FACTOR_BUDGET_BYTES // max(1, recorded))


def _split(spec: FusedSpec, y: Tensor):
    return spec.field.split(y) if spec.integrator.needs_separable else y


def _join(spec: FusedSpec, state) -> Tensor:
    return spec.field.join(*state) if spec.integrator.needs_separable else state


def _run(spec: FusedSpec, y: Tensor, ops: FusedOps, tapes: list | None) -> Tensor:
    # the fused steps use only dt (piecewise-constant weights), the same for every step of the schedule
    step, schedule = spec.integrator.fused_step, spec.schedule
    dt, substeps = schedule.dt, range(schedule.substeps)
    state = _split(spec, y)
    for j in range(schedule.n_layers):
        for _ in substeps:
            state, tape = step(ops, j, state, dt)
            if tapes is not None:
                tapes.append(tape)
    return _join(spec, state)


def _ops(field, stats: dict | None = None) -> FusedOps:
    return FusedOps(field, field.fused_weights(field.weight_table()), stats)


@torch.no_grad()
def fused_forward(spec: FusedSpec, y0: Tensor) -> Tensor:
    """y(T) without autograd (inference)."""
    return _run(spec, spec.field.fused_rows(y0), _ops(spec.field, spec.stats), None).reshape(y0.shape)


@torch.no_grad()
def fused_inverse_flow(spec: FusedSpec, y_end: Tensor) -> Tensor:
    """The exact inverse steps from ``y(T)`` back to ``y(0)`` (reversible integrators)."""
    ops, inverse = _ops(spec.field), spec.integrator.fused_inverse
    state = _split(spec, spec.field.fused_rows(y_end))
    dt = spec.schedule.dt
    for j in reversed(range(spec.schedule.n_layers)):
        for _ in range(spec.schedule.substeps):
            state = inverse(ops, j, state, dt)
    return _join(spec, state).reshape(y_end.shape)


class FusedFlow(torch.autograd.Function):
    """``FusedFlow.apply(spec, y0, *field_parameters) -> y(T)``; the buffers are checked, not differentiated.

    A backward run with ``create_graph=True`` (double backward, gradient penalties, Hessian-vector
    products) is recomputed on the autograd reference path, whose gradient graph has the second
    derivatives; the first derivatives agree with the fused ones to rounding.
    """

    @staticmethod
    def forward(ctx, spec: FusedSpec, y0: Tensor, *params: Tensor) -> Tensor:
        field = spec.field
        with torch.no_grad():
            ops = _ops(field, spec.stats)
            tapes: list | None = None if spec.reversible else []
            out = _run(spec, field.fused_rows(y0), ops, tapes)
        ctx.spec, ctx.shape, ctx.ops = spec, y0.shape, ops
        remember_weights(ctx, field)
        flat, ctx.tape_structure = _flatten_tapes(tapes or [])
        ctx.tape_stride = len(flat) // len(tapes) if tapes else 0
        ctx.save_for_backward(y0, out, *flat)
        return out.reshape(y0.shape)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        with weights_of_the_forward(ctx, "fused"):  # the weights the forward used, whatever the module holds now
            return FusedFlow._backward(ctx, g_out)

    @staticmethod
    def _backward(ctx, g_out: Tensor):
        spec: FusedSpec = ctx.spec
        field, step, schedule = spec.field, spec.integrator, spec.schedule
        y0, out, *flat = ctx.saved_tensors
        params = list(field.parameters())
        if torch.is_grad_enabled():  # create_graph=True: differentiate the reference path instead
            return (None, *reference_gradients(spec, y0, g_out, params))
        with torch.enable_grad():
            table = field.weight_table()  # keeps the graph parameters -> (derived) weights
        ops, fw = ctx.ops, ctx.ops.fw
        ops.reset()
        ops.stats = None  # the reversible backward's re-solves are not the forward's statistics
        with torch.no_grad():
            g = _split(spec, field.fused_rows(g_out))
            state = _split(spec, out) if spec.reversible else None
            acc: dict[str, Tensor] = {}
            chunk, upper = None, schedule.n_layers  # layers [j, upper) recorded and not yet flushed
            structure, stride = ctx.tape_structure, ctx.tape_stride
            k = schedule.n_steps
            dt, substeps = schedule.dt, range(schedule.substeps)
            for j in reversed(range(schedule.n_layers)):
                for _ in substeps:
                    k -= 1
                    if spec.reversible:
                        state, tape = step.fused_inverse_with_tape(ops, j, state, dt)
                    else:
                        tape = _tape(flat, structure, k, stride)
                    g = step.fused_vjp(ops, j, tape, g, dt)
                if chunk is None:  # every layer records the same: size the batches once
                    chunk = _layers_per_flush(out, ops.recorded_bytes())
                if upper - j >= chunk or j == 0:
                    _flush(field, ops, fw, table, acc, j, upper)
                    upper = j
            g_y0 = _join(spec, g).reshape(ctx.shape)
            grads = acc
        return (None, g_y0, *parameter_gradients(table, grads, params))


def reconstruct(net, y_end: Tensor) -> Tensor:
    """Run the exact inverse steps from ``y(T)`` back to ``y(0)``: what the reversible backward
    rebuilds. The gap to the true input measures the floating-point drift of the reconstruction. For a rule whose
    state has several copies (the reversible Runge-Kutta pair), ``y_end`` and the result are that whole state."""
    copies = 1 if net.integrator is None else net.integrator.copies
    if copies > 1 and (y_end.dim() < net.field.state_rank + 1 or y_end.shape[0] != copies):
        raise ValueError(
            f"reconstruct: {net.integrator_name!r} carries a second state z beside y, which y(T) alone does not "
            f"give: pass its whole final state (shape ({copies}, ...), as the reversible backward keeps it)"
        )
    if not fused_applies(net.field, net.integrator, reversible=True):
        raise ValueError(
            f"reconstruct needs a reversible integrator with the fused engine; {net.integrator_name!r} "
            f"on {type(net.field).__name__} with weights={net.field.weights!r} is not"
        )
    return fused_inverse_flow(FusedSpec(net.field, net.integrator, net.schedule, True), y_end)
