"""Separable fields: H2 (TAC), MS3 (Chang et al.) and the block-sparse distributed H2."""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import torch
from torch import Tensor, nn

from ..activations import Activation
from ..architectures import register_architecture
from ..validation import check_int
from .base import Field, InitMode, SeparableMixin, WeightsMode, layer_eval, layer_sums, vjp_factors

__all__ = ["MS3Field", "SeparableField", "SparseSeparableField"]


def _even_half(dim: int, who: str) -> int:
    if isinstance(dim, int) and not isinstance(dim, bool) and dim % 2:
        raise ValueError(f"{who} splits the state into two halves and needs an even dim, got dim={dim}")
    return dim // 2


@register_architecture("H2")
class SeparableField(SeparableMixin, Field):
    """The H2 field (TAC): ``y = [p, q]``, ``H = 1ᵀσ̃(K_p p + b_p) + 1ᵀσ̃(K_q q + b_q)``,

    ``dp/dt = -Xᵀ K_qᵀ σ(K_q q + b_q)``, ``dq/dt = X K_pᵀ σ(K_p p + b_p)``,
    ``J = [[0, -Xᵀ], [X, 0]]``. With ``symplectic_euler`` (p first, then q with the
    new p) this is the H2-DNN whose backward sensitivities cannot vanish.

    Args:
        dim: state size n (even); p = ``y[..., :n/2]``.
        n_layers: number of layers N.
        width: hidden size m of ``K_p, K_q: (m, n/2)`` (default n/2).
        X: ``None`` (identity, fixed), ``"learnable"`` (initialised to the identity)
            or a fixed (n/2, n/2) tensor.
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"`` (see [`Field`][hamode.fields.Field]).
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"`` (see [`Field`][hamode.fields.Field]).
        init: ``"default"`` (K ~ N(0, 1/(n/2)), b = 0) or ``"normal"`` (N(0, 1)).
    """

    default_integrator: ClassVar[str] = "symplectic_euler"

    def __init__(
        self,
        dim: int,
        n_layers: int,
        width: int | None = None,
        X: str | Tensor | None = None,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        half = _even_half(dim, type(self).__name__)
        super().__init__(dim, n_layers, activation, weights)
        factory = {"dtype": dtype, "device": device}
        self.half = half
        self.width = half if width is None else check_int("width", width, 1)
        self._init_weights(init, factory)
        self.learnable_X = False
        if X is None:
            self.register_buffer("X_matrix", torch.eye(half, **factory))
        elif isinstance(X, str):
            if X != "learnable":
                raise ValueError(f"X must be None (identity), 'learnable' or a ({half}, {half}) tensor; got {X!r}")
            self.learnable_X = True
            self.X_param = nn.Parameter(torch.eye(half, **factory))
        else:
            if not isinstance(X, Tensor) or X.shape != (half, half):
                raise ValueError(f"X must be a ({half}, {half}) tensor, got {getattr(X, 'shape', X)!r}")
            self.register_buffer("X_matrix", X.detach().clone().to(**{k: v for k, v in factory.items() if v}))

    def parameters_per_layer(self) -> int:
        """K_p, K_q (m × n/2 each) and b_p, b_q (m each) per layer: n²/2 + n with the default width m = n/2."""
        return 2 * (self.width * self.half + self.width)

    def _init_weights(self, init: str, factory: dict) -> None:
        self._stacked("Kp", (self.width, self.half), self.half, init, factory)
        self._stacked("bp", (self.width,), None, init, factory)
        self._stacked("Kq", (self.width, self.half), self.half, init, factory)
        self._stacked("bq", (self.width,), None, init, factory)

    @property
    def X(self) -> Tensor:
        """The coupling matrix X (n/2, n/2)."""
        return self.X_param if self.learnable_X else self.X_matrix

    def weight_table(self) -> dict[str, Tensor]:
        table = super().weight_table()
        table["X"] = self.X
        return table

    def _dp(self, w: dict[str, Tensor], q: Tensor) -> Tensor:
        Kq = w["Kq"]
        s = self.activation.sigma(torch.matmul(q, Kq.mT) + w["bq"])
        return -torch.matmul(torch.matmul(s, Kq), w["X"])

    def _dq(self, w: dict[str, Tensor], p: Tensor) -> Tensor:
        Kp = w["Kp"]
        s = self.activation.sigma(torch.matmul(p, Kp.mT) + w["bp"])
        return torch.matmul(torch.matmul(s, Kp), w["X"].mT)

    def _energy(self, w: dict[str, Tensor], y: Tensor) -> Tensor:
        p, q = self.split(y)
        sig = self.activation.antiderivative
        return sig(torch.matmul(p, w["Kp"].mT) + w["bp"]).sum(-1) + sig(torch.matmul(q, w["Kq"].mT) + w["bq"]).sum(-1)

    def _structure(self, w: dict[str, Tensor]) -> Tensor:
        X = w["X"]
        zero = torch.zeros_like(X)
        return torch.cat([torch.cat([zero, -X.mT], 1), torch.cat([X, zero], 1)], 0)

    # fused engine: dp/dt = σ(q K_qᵀ + b_q)(-K_q X), dq/dt = σ(p K_pᵀ + b_p)(K_p Xᵀ), products precomputed
    def fused_weights(self, table: dict[str, Tensor]) -> dict[str, Tensor]:
        X, Kp, Kq = table["X"], table["Kp"], table["Kq"]
        KqX, KpX = -torch.matmul(Kq, X), torch.matmul(Kp, X.mT)
        return {
            "Kp": Kp,
            "Kpt": Kp.mT,
            "bp": table["bp"],
            "Kq": Kq,
            "Kqt": Kq.mT,
            "bq": table["bq"],
            "X": X,
            "KqX": KqX,
            "KqXt": KqX.mT,
            "KpX": KpX,
            "KpXt": KpX.mT,
        }

    def _half_eval(self, Kt, b, KX, x, alpha, base):
        return layer_eval(self.activation, x, Kt, b, KX, alpha, base)

    def _half_vjp(self, K, KXt, x, s, c, alpha, base):
        return vjp_factors(self.activation, c, KXt, s, K, x, alpha, base)

    def fused_dp(self, w, q, alpha=1.0, base=None):
        return self._half_eval(w["Kqt"], w["bq"], w["KqX"], q, alpha, base)

    def fused_dp_vjp(self, w, q, s, c, alpha=1.0, base=None):
        return self._half_vjp(w["Kq"], w["KqXt"], q, s, c, alpha, base)

    def fused_dq(self, w, p, alpha=1.0, base=None):
        return self._half_eval(w["Kpt"], w["bp"], w["KpX"], p, alpha, base)

    def fused_dq_vjp(self, w, p, s, c, alpha=1.0, base=None):
        return self._half_vjp(w["Kp"], w["KpXt"], p, s, c, alpha, base)

    def fused_group_grads(self, name, fw, table, factors, a):
        X = fw["X"]
        dKX, dK, db = layer_sums(factors, a)
        if name == "dp":  # K_q X' = -K_q X
            grads = {"Kq": dK.sub_(torch.matmul(dKX, X.mT)), "bq": db}
            if table["X"].requires_grad:
                grads["X"] = -torch.matmul(fw["Kq"].mT, dKX).sum(0)
        else:  # K_p X' = K_p Xᵀ
            grads = {"Kp": dK.add_(torch.matmul(dKX, X)), "bp": db}
            if table["X"].requires_grad:
                grads["X"] = torch.matmul(dKX.mT, fw["Kp"]).sum(0)
        return grads

    def _lipschitz(self, w: dict[str, Tensor]) -> dict[str, Tensor]:
        S, norm = self.activation.slope_bound, torch.linalg.matrix_norm
        X = norm(w["X"], 2)
        dp = S * X * norm(w["Kq"], 2) ** 2
        dq = S * X * norm(w["Kp"], 2) ** 2
        return {"dp": dp, "dq": dq, "full": torch.maximum(dp, dq)}


@register_architecture("MS3")
class MS3Field(SeparableField):
    """MS3 (Chang et al.): y = [y; z], ``dy/dt = K_1ᵀ σ(K_1 z + b_1)``, ``dz/dt = -K_2ᵀ σ(K_2 y + b_2)``.

    This is H2 with X = -I (so J = J1), K_q = K_1, K_p = K_2: ``symplectic_euler``
    gives the published Verlet layer (y first, then z with the new y). The paper's
    names are available as ``K1``, ``b1``, ``K2``, ``b2``.
    """

    def __init__(
        self,
        dim: int,
        n_layers: int,
        width: int | None = None,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        half = _even_half(dim, "MS3Field")
        super().__init__(
            dim, n_layers, width, -torch.eye(half, dtype=dtype, device=device), activation, weights, init, dtype, device
        )

    K1 = property(lambda self: self.Kq, doc="K_1 (acts on z), shape (nodes, m, n/2).")
    b1 = property(lambda self: self.bq, doc="b_1, shape (nodes, m).")
    K2 = property(lambda self: self.Kp, doc="K_2 (acts on y), shape (nodes, m, n/2).")
    b2 = property(lambda self: self.bp, doc="b_2, shape (nodes, m).")


def _adjacency(graph, n_nodes: int | None) -> Tensor:
    if isinstance(graph, Tensor):
        adj = graph.detach().to(torch.bool).cpu()
        if adj.dim() != 2 or adj.shape[0] != adj.shape[1]:
            raise ValueError(f"graph as a tensor must be a square adjacency matrix, got shape {tuple(adj.shape)}")
    else:
        if n_nodes is None:
            raise ValueError("graph given as an edge list needs n_nodes")
        adj = torch.zeros(n_nodes, n_nodes, dtype=torch.bool)
        for edge in graph:
            i, k = edge
            if not (0 <= i < n_nodes and 0 <= k < n_nodes):
                raise ValueError(f"graph edge {edge} names a node outside [0, {n_nodes})")
            adj[i, k] = adj[k, i] = True
    adj = adj | adj.T
    adj.fill_diagonal_(True)  # every node sees itself
    return adj


class SparseSeparableField(SeparableField):
    """The distributed H2 (TAC): K_p, K_q (and a learnable X) block-sparse following a node graph.

    The state is split over ``G`` nodes: node i holds ``p_i`` and ``q_i`` (blocks of
    size ``s = n / (2G)``). Block (i, k) of K_p and K_q is nonzero only if i and k are
    neighbours (self-loops always); X is block-diagonal. Only the nonzero entries are
    parameters (``Kp_values``, ``Kq_values``: (nodes, nnz)), scattered into the dense
    ``K_p, K_q`` once per pass for all layers, so the pattern holds by construction:
    no mask, and an optimiser step cannot fill a zero. A layer update is then two
    rounds of messages between neighbours only (node l forms ``σ(K_q q + b_q)_l`` from
    its neighbours' q, then ``K_qᵀ`` sends it back to its neighbours), so a layer's
    Jacobian has the sparsity of the 2-hop graph.

    Args:
        dim: state size n; ``n / 2`` must be divisible by the number of nodes.
        n_layers: number of layers N.
        graph: a (G, G) adjacency tensor, or a list of undirected edges ``(i, k)`` with ``n_nodes``.
        n_nodes: G, when ``graph`` is an edge list.
        X: ``None`` (identity) or ``"learnable"`` (block-diagonal, initialised to I).
        activation: ``"tanh"``, ``"relu"`` or ``"sigmoid"`` (see [`Field`][hamode.fields.Field]).
        weights: ``"piecewise"``, ``"constant"`` or ``"linear"`` (see [`Field`][hamode.fields.Field]).
        init: ``"default"`` or ``"normal"`` (see [`SeparableField`][hamode.fields.SeparableField]).
    """

    def __init__(
        self,
        dim: int,
        n_layers: int,
        graph: Tensor | Sequence[tuple[int, int]],
        n_nodes: int | None = None,
        X: str | None = None,
        activation: str | Activation = "tanh",
        weights: WeightsMode = "piecewise",
        init: InitMode = "default",
        dtype: torch.dtype | None = None,
        device: torch.device | str | None = None,
    ) -> None:
        half = _even_half(dim, "SparseSeparableField")
        adj = _adjacency(graph, n_nodes)
        G = adj.shape[0]
        if half % G:
            raise ValueError(f"dim/2 = {half} must be divisible by the number of graph nodes ({G})")
        s = half // G
        blocks = adj.repeat_interleave(s, 0).repeat_interleave(s, 1)
        rows, cols = blocks.nonzero(as_tuple=True)
        self._graph_nodes, self._block = G, s
        self._pattern = (rows, cols)
        if X not in (None, "learnable"):
            raise ValueError(f"X must be None (identity) or 'learnable' (block-diagonal) for a sparse field; got {X!r}")
        self._sparse_X = X == "learnable"
        super().__init__(dim, n_layers, None, None, activation, weights, init, dtype, device)
        self.register_buffer("adjacency", adj.to(device=device), persistent=False)
        self.register_buffer("_rows", rows.to(device=device), persistent=False)
        self.register_buffer("_cols", cols.to(device=device), persistent=False)
        if self._sparse_X:
            self.X_blocks = nn.Parameter(torch.eye(s, dtype=dtype, device=device).repeat(G, 1, 1))

    def parameters_per_layer(self) -> int:
        """The nonzeros of K_p and K_q (the graph's blocks) and b_p, b_q per layer."""
        return 2 * (int(self._pattern[0].numel()) + self.width)

    def _init_weights(self, init: str, factory: dict) -> None:
        # fan-in of a row of K is the number of nonzeros in it (neighbours x block size)
        nnz = self._pattern[0].numel()
        fan_in = max(1, nnz // self.half)
        self._stacked("Kp_values", (nnz,), fan_in, init, factory)
        self._stacked("bp", (self.width,), None, init, factory)
        self._stacked("Kq_values", (nnz,), fan_in, init, factory)
        self._stacked("bq", (self.width,), None, init, factory)

    def _dense(self, values: Tensor) -> Tensor:
        n = values.shape[0]
        nodes = torch.arange(n, device=values.device)[:, None]
        dense = values.new_zeros(n, self.half, self.half)
        return dense.index_put((nodes, self._rows[None], self._cols[None]), values)

    @property
    def X(self) -> Tensor:
        if self._sparse_X:
            return torch.block_diag(*self.X_blocks.unbind(0))
        return self.X_matrix

    @property
    def Kp(self) -> Tensor:
        """Dense K_p (nodes, n/2, n/2), zero outside the graph's blocks."""
        return self._dense(self.Kp_values)

    @property
    def Kq(self) -> Tensor:
        """Dense K_q (nodes, n/2, n/2), zero outside the graph's blocks."""
        return self._dense(self.Kq_values)

    def weight_table(self) -> dict[str, Tensor]:
        return {
            "Kp": self.Kp,
            "bp": self.bp,
            "Kq": self.Kq,
            "bq": self.bq,
            "Kp_values": self.Kp_values,
            "Kq_values": self.Kq_values,
            "X": self.X,
        }

    @property
    def stacked_keys(self) -> tuple[str, ...]:
        return ("Kp", "bp", "Kq", "bq", "Kp_values", "Kq_values")

    @property
    def smoothness_keys(self) -> tuple[str, ...]:
        # ‖K_j - K_{j-1}‖_F equals the norm of the difference of the nonzero values.
        return ("Kp_values", "bp", "Kq_values", "bq")
