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

Applies to fields with ``supports_fused`` and integrators with ``supports_fused`` for
piecewise-constant and constant weights; :class:`hamode.HamiltonianNet` falls back to the
autograd reference (``fast=False``) elsewhere (linear weights, torchdiffeq, autograd fields).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from .net import HamiltonianNet

__all__ = ["FACTOR_BUDGET_BYTES", "FusedFlow", "FusedOps", "fused_applies", "fused_forward", "reconstruct"]

FACTOR_BUDGET_BYTES = 2**20
"""The backward forms parameter gradients in batches of layers whose recorded factors fit in this
many bytes, so the reversible mode's memory stays flat in depth (and backprop's adds at most this)."""
LARGE_ROWS = 2048
"""From this many rows (samples x leading dims) per evaluation, batching layers saves no per-op overhead
and stacking would only copy: gradients are then formed one layer at a time, from views."""


_VIEWS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _node_weights(field, fw: dict[str, Tensor]) -> list[dict[str, Tensor]]:
    """One dict of weights per node, each entry a view into a buffer kept per field across passes.

    Making a view costs about a microsecond, as much as a small layer's products, so the views are
    made once per field (and dtype, device and shapes) and each pass copies its weights into the
    buffers, one copy per key. A pass's views thus hold the weights of the latest pass; the weights can
    only differ between two passes if a parameter changed in place, which the backward refuses.
    """
    sig = tuple((k, v.shape, v.dtype, v.device) for k, v in fw.items())
    entry = _VIEWS.get(field)
    if entry is None or entry[0] != sig:
        shared = field.fused_shared_keys
        bufs = {k: torch.empty(v.shape, dtype=v.dtype, device=v.device) for k, v in fw.items()}
        per_node = {k: v.unbind(0) for k, v in bufs.items() if k not in shared}
        common = {k: v for k, v in bufs.items() if k in shared}
        nodes = [{**common, **{k: v[i] for k, v in per_node.items()}} for i in range(field.n_nodes)]
        entry = (sig, bufs, nodes)
        _VIEWS[field] = entry
    for k, buf in entry[1].items():
        buf.copy_(fw[k])
    return entry[2]


class FusedOps:
    """The field's fused right-hand sides for one pass.

    Holds one dict of per-layer weight views (built once, shared by the forward and the
    backward of a step) and records each VJP's parameter factors and scale by half-field
    ("f", or "dp"/"dq"). The field's methods are bound once: this object sits in the
    innermost loop.
    """

    __slots__ = ("_af", "_dpe", "_dpv", "_dqe", "_dqv", "_fe", "_fv", "_gf", "alphas", "field", "fw", "groups", "w")

    def __init__(self, field, fw: dict[str, Tensor]) -> None:
        self.field, self.fw = field, fw
        nodes = _node_weights(field, fw)
        self.w = nodes * field.n_layers if field.weights == "constant" else nodes
        self.groups: dict[str, list] = {"f": [], "dp": [], "dq": []}
        self.alphas: dict[str, list[float]] = {"f": [], "dp": [], "dq": []}
        self._fe, self._fv = getattr(field, "_f_eval", None), getattr(field, "_f_vjp", None)
        self._dpe, self._dpv = getattr(field, "_dp_eval", None), getattr(field, "_dp_vjp", None)
        self._dqe, self._dqv = getattr(field, "_dq_eval", None), getattr(field, "_dq_vjp", None)
        self._gf, self._af = self.groups["f"], self.alphas["f"]

    def reset(self) -> None:
        for v in (*self.groups.values(), *self.alphas.values()):
            v.clear()

    def f(self, j, y, alpha=1.0, base=None):
        return self._fe(self.w[j], y, alpha, base)

    def f_vjp(self, j, y, ctx, c, alpha=1.0, base=None):
        g, factors = self._fv(self.w[j], y, ctx, c, alpha, base)
        if type(factors) is dict:  # a separable field's full f records per half-field
            for key, fac in factors.items():
                self.groups[key].append(fac)
                self.alphas[key].append(alpha)
        else:
            self._gf.append(factors)  # the lists are cleared in place by reset(), never replaced
            self._af.append(alpha)
        return g

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


def fused_applies(net: "HamiltonianNet", reversible: bool = False) -> bool:
    """Whether the fused engine covers this net's field, integrator, weights (and reversibility)."""
    step = net.integrator
    if step is None or not (net.field.supports_fused and step.supports_fused):
        return False
    if net.field.weights not in ("piecewise", "constant"):
        return False
    return not reversible or step.reversible


def _flatten_tapes(tapes: list[tuple]) -> tuple[list[Tensor], tuple[int, ...]]:
    """All tapes of a pass share one structure: a tuple whose items are tensors or tuples of tensors.
    Returns the flat tensors and the structure (item widths, 0 for a bare tensor)."""
    if not tapes:
        return [], ()
    widths = tuple(len(item) if isinstance(item, tuple) else 0 for item in tapes[0])
    if not any(widths):
        return [t for tape in tapes for t in tape], widths
    return [t for tape in tapes for item in tape for t in (item if isinstance(item, tuple) else (item,))], widths


def _tape(flat: list[Tensor], widths: tuple[int, ...], k: int, stride: int) -> tuple:
    """Tape k from the flat list (``stride`` tensors per tape)."""
    chunk = flat[k * stride : (k + 1) * stride]
    if not any(widths):
        return tuple(chunk)
    out, i = [], 0
    for w in widths:
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


def _split(net, y: Tensor):
    return net.field.split(y) if net.integrator.needs_separable else y


def _join(net, state) -> Tensor:
    return net.field.join(*state) if net.integrator.needs_separable else state


def _run(net: "HamiltonianNet", y: Tensor, ops: FusedOps, tapes: list | None) -> Tensor:
    step, dt = net.integrator, net.grid.h / net.substeps
    state = _split(net, y)
    for j in range(net.n_layers):
        for _ in range(net.substeps):
            state, tape = step.fused_step(ops, j, state, dt)
            if tapes is not None:
                tapes.append(tape)
    return _join(net, state)


@torch.no_grad()
def fused_forward(net: "HamiltonianNet", y0: Tensor) -> Tensor:
    """y(T) without autograd (inference)."""
    field = net.field
    ops = FusedOps(field, field.fused_weights(field.weight_table()))
    return _run(net, y0.reshape(-1, field.dim), ops, None).reshape(y0.shape)


class FusedFlow(torch.autograd.Function):
    """``FusedFlow.apply(net, reversible, y0, *field_parameters) -> y(T)``."""

    @staticmethod
    def forward(ctx, net: "HamiltonianNet", reversible: bool, y0: Tensor, *params: Tensor) -> Tensor:
        field = net.field
        with torch.no_grad():
            ops = FusedOps(field, field.fused_weights(field.weight_table()))
            tapes: list | None = None if reversible else []
            out = _run(net, y0.reshape(-1, field.dim), ops, tapes)
        ctx.net, ctx.reversible, ctx.shape, ctx.ops = net, reversible, y0.shape, ops
        ctx.versions = [p._version for p in params]
        flat, ctx.tape_widths = _flatten_tapes(tapes or [])
        ctx.save_for_backward(out, *flat)
        return out.reshape(y0.shape)

    @staticmethod
    def backward(ctx, g_out: Tensor):
        net: HamiltonianNet = ctx.net
        field, step = net.field, net.integrator
        out, *flat = ctx.saved_tensors
        params = list(field.parameters())
        if [p._version for p in params] != ctx.versions:
            raise RuntimeError(
                "a parameter of the field was modified in place between the forward and the "
                "backward pass of a fused HamiltonianNet; call backward before changing it"
            )
        with torch.enable_grad():
            table = field.weight_table()  # keeps the graph parameters -> (derived) weights
        ops, fw = ctx.ops, ctx.ops.fw
        ops.reset()
        with torch.no_grad():
            dt = net.grid.h / net.substeps
            g = _split(net, g_out.reshape(-1, field.dim))
            state = _split(net, out) if ctx.reversible else None
            acc: dict[str, Tensor] = {}
            chunk, upper = None, net.n_layers  # layers [j, upper) recorded and not yet flushed
            widths = ctx.tape_widths
            stride = sum(max(w, 1) for w in widths)
            k = net.n_layers * net.substeps
            for j in reversed(range(net.n_layers)):
                for _ in range(net.substeps):
                    k -= 1
                    if ctx.reversible:
                        state = step.fused_inverse(ops, j, state, dt)
                        tape = step.fused_step(ops, j, state, dt)[1]
                    else:
                        tape = _tape(flat, widths, k, stride)
                    g = step.fused_vjp(ops, j, tape, g, dt)
                if chunk is None:  # every layer records the same: size the batches once
                    rows = out.shape[0]
                    chunk = 1 if rows >= LARGE_ROWS else max(1, FACTOR_BUDGET_BYTES // max(1, ops.recorded_bytes()))
                if upper - j >= chunk or j == 0:
                    _flush(field, ops, fw, table, acc, j, upper)
                    upper = j
            g_y0 = _join(net, g).reshape(ctx.shape)
            grads = acc
        keys = [key for key in grads if table[key].requires_grad]
        wanted = [i for i, p in enumerate(params) if p.requires_grad]
        param_grads: list[Tensor | None] = [None] * len(params)
        if keys and wanted:
            got = torch.autograd.grad(
                [table[key] for key in keys],
                [params[i] for i in wanted],
                [grads[key] for key in keys],
                allow_unused=True,
            )
            for i, gi in zip(wanted, got):
                param_grads[i] = gi
        return (None, None, g_y0, *param_grads)


@torch.no_grad()
def reconstruct(net: "HamiltonianNet", y_end: Tensor) -> Tensor:
    """Run the exact inverse steps from ``y(T)`` back to ``y(0)``: what the reversible backward
    rebuilds. The gap to the true input measures the floating-point drift of the reconstruction."""
    if not fused_applies(net, reversible=True):
        raise ValueError(
            f"reconstruct needs a reversible integrator with the fused engine; {net.integrator_name!r} "
            f"on {type(net.field).__name__} with weights={net.field.weights!r} is not"
        )
    field = net.field
    ops = FusedOps(field, field.fused_weights(field.weight_table()))
    dt = net.grid.h / net.substeps
    state = _split(net, y_end.reshape(-1, field.dim))
    for j in reversed(range(net.n_layers)):
        for _ in range(net.substeps):
            state = net.integrator.fused_inverse(ops, j, state, dt)
    return _join(net, state).reshape(y_end.shape)
