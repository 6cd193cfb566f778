"""The layer grid (N layers of equal length h on [0, T]) and the schedule of steps every engine walks."""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["LayerGrid", "Schedule"]


class LayerGrid:
    """Layer boundaries ``t_0 = 0 < t_1 < ... < t_N = T`` with ``t_j = j T / N``.

    Weights are constant (or interpolated) inside a layer and jump between layers, so
    finding the layer of a time ``t`` must agree exactly with the boundaries that
    solvers step to. [`layer_of()`][hamode.LayerGrid.layer_of] therefore compares against the boundary tensor
    itself (``searchsorted``, right-continuous: ``t_j`` belongs to layer ``j``), in
    the dtype of ``t``, instead of computing ``floor(t / h)``, which picks the wrong
    layer at some boundaries in floating point.

    Args:
        n_layers: number of layers N (>= 1).
        t_end: final time T (> 0).
    """

    def __init__(self, n_layers: int, t_end: float) -> None:
        if isinstance(n_layers, bool) or not isinstance(n_layers, int):
            raise TypeError(f"n_layers must be an int, got {type(n_layers).__name__}")
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        if isinstance(t_end, bool) or not isinstance(t_end, (int, float)):
            raise TypeError(f"t_end must be a positive number, got {type(t_end).__name__}")
        if not math.isfinite(t_end) or t_end <= 0:
            raise ValueError(f"t_end must be a finite number > 0, got {t_end}")
        self.n_layers = n_layers
        self.t_end = float(t_end)
        self.h = self.t_end / n_layers
        b = torch.arange(n_layers + 1, dtype=torch.float64) * self.t_end / n_layers
        b[-1] = self.t_end
        self._boundaries = b
        self._starts = b.tolist()  # Python floats: no tensor-to-float conversion in the step loop
        self._cache: dict[tuple[torch.dtype, torch.device], Tensor] = {}

    def __repr__(self) -> str:
        return f"LayerGrid(n_layers={self.n_layers}, t_end={self.t_end})"

    def start(self, j: int) -> float:
        """Start time ``t_j`` of layer ``j`` as a Python float."""
        return self._starts[j]

    def boundaries(self, dtype: torch.dtype = torch.float64, device: torch.device | str | None = None) -> Tensor:
        """The N + 1 boundaries ``t_0..t_N`` as a tensor of the given dtype and device."""
        key = (dtype, torch.device(device) if device is not None else torch.device("cpu"))
        if key not in self._cache:
            self._cache[key] = self._boundaries.to(dtype=dtype, device=key[1])
        return self._cache[key]

    def time_grid(self, substeps: int, dtype: torch.dtype = torch.float64, device=None) -> Tensor:
        """``N * substeps + 1`` equally spaced points whose every ``substeps``-th one is a boundary exactly."""
        b = self._boundaries
        frac = torch.arange(substeps, dtype=torch.float64) / substeps
        inner = (b[:-1, None] + frac[None, :] * self.h).reshape(-1)
        grid = torch.cat([inner, b[-1:]])
        grid[::substeps] = b  # boundaries bit-identical to self.boundaries()
        return grid.to(dtype=dtype, device=device)

    def layer_of(self, t: Tensor | float) -> Tensor:
        """Index of the layer containing ``t`` (``t_j`` belongs to layer ``j``; ``T`` to layer ``N - 1``).

        Times before 0 map to layer 0 and times after T to layer N - 1.
        """
        if not isinstance(t, Tensor):
            t = torch.tensor(float(t), dtype=torch.float64)
        inner = self.boundaries(t.dtype, t.device)[1:-1]
        return torch.searchsorted(inner, t.detach().contiguous(), right=True)


class Schedule:
    """The walk every engine takes: for layer j = 0..N-1, ``substeps`` steps of size ``h / substeps``.

    Immutable once built. [`steps()`][hamode.Schedule.steps] yields ``(j, t, dt)`` for each step, ``t`` its start
    time; [`layer_steps()`][hamode.Schedule.layer_steps] the steps of one layer. A step never crosses a layer boundary.

    Args:
        grid: the layer grid.
        substeps: steps per layer (>= 1).
    """

    __slots__ = ("dt", "grid", "substeps")

    def __init__(self, grid: LayerGrid, substeps: int = 1) -> None:
        from .validation import check_int

        if not isinstance(grid, LayerGrid):
            raise TypeError(f"grid must be a LayerGrid, got {type(grid).__name__}")
        object.__setattr__(self, "grid", grid)
        object.__setattr__(self, "substeps", check_int("substeps", substeps, 1))
        object.__setattr__(self, "dt", grid.h / substeps)

    def __setattr__(self, name, value):
        raise AttributeError("a Schedule is immutable: build a new one")

    def __reduce__(self):  # pickle and copy rebuild it (the default restores slots through __setattr__)
        return (Schedule, (self.grid, self.substeps))

    def __repr__(self) -> str:
        return f"Schedule(n_layers={self.n_layers}, t_end={self.grid.t_end}, substeps={self.substeps})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Schedule) and (self.grid.n_layers, self.grid.t_end, self.substeps) == (
            other.grid.n_layers,
            other.grid.t_end,
            other.substeps,
        )

    def __hash__(self) -> int:
        return hash((self.grid.n_layers, self.grid.t_end, self.substeps))

    @property
    def n_layers(self) -> int:
        return self.grid.n_layers

    @property
    def n_steps(self) -> int:
        return self.grid.n_layers * self.substeps

    def layer_steps(self, j: int) -> list[tuple[int, float, float]]:
        """``(j, t, dt)`` for the substeps of layer j, in order."""
        t0, dt = self.grid.start(j), self.dt
        return [(j, t0 + s * dt, dt) for s in range(self.substeps)]

    def steps(self, reverse: bool = False):
        """``(j, t, dt)`` for every step, forwards (or backwards with ``reverse``)."""
        layers = reversed(range(self.n_layers)) if reverse else range(self.n_layers)
        for j in layers:
            steps = self.layer_steps(j)
            yield from (reversed(steps) if reverse else steps)

    def times(self, dtype=torch.float64, device=None) -> Tensor:
        """The ``n_steps + 1`` step boundaries (every ``substeps``-th one a layer boundary, bit-exact)."""
        return self.grid.time_grid(self.substeps, dtype, device)
