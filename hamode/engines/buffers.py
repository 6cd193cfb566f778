"""The fused engine's scratch buffers: one pool of free buffer sets per field, kept by the engine.

The pools live here, in a weak-keyed table (a field's pool goes when the field goes), not on the field: a field
knows nothing of them, and copying or pickling a field copies no scratch memory. A pool holds free sets for one
signature (the fused weights' shapes, dtypes and devices, and whether inference mode is on) and is emptied when
the signature changes, so it cannot hand out a buffer of the wrong kind.
"""

from __future__ import annotations

import weakref

import torch
from torch import Tensor, nn

__all__ = ["BufferSet", "free_buffer_sets", "give_back", "take_buffers"]

_POOLS: weakref.WeakKeyDictionary[nn.Module, dict[tuple, list[BufferSet]]] = weakref.WeakKeyDictionary()


class BufferSet:
    """Buffers for one pass's fused weights and the per-node views into them.

    A view costs about a microsecond, as much as a small layer's products, so the views are made once per
    buffer set and each pass copies its weights into the buffers (one copy per key). A set belongs to one
    pass at a time: [`FusedOps`][hamode.engines.FusedOps] takes it from its field's pool and gives it back when
    it is freed (after the backward, or when the graph is dropped), so two pending passes never share buffers.
    """

    __slots__ = ("bufs", "nodes", "signature")

    def __init__(self, field, fw: dict[str, Tensor], signature: tuple) -> None:
        shared = field.fused_shared_keys
        self.signature = signature
        self.bufs = {k: torch.empty(v.shape, dtype=v.dtype, device=v.device) for k, v in fw.items()}
        common = {k: v for k, v in self.bufs.items() if k in shared}
        keys = [k for k in self.bufs if k not in shared]
        if keys:
            columns = [self.bufs[k].unbind(0) for k in keys]
            self.nodes = [{**common, **dict(zip(keys, vals))} for vals in zip(*columns)]
        else:
            self.nodes = [common] * field.n_nodes


def take_buffers(field, fw: dict[str, Tensor]) -> BufferSet:
    """A free buffer set of ``field``'s pool (or a new one) holding a copy of the fused weights ``fw``."""
    # inference tensors (made under torch.inference_mode) cannot be written outside it, and the other way round
    inference = torch.is_inference_mode_enabled()
    signature = (inference, *((k, v.shape, v.dtype, v.device) for k, v in fw.items()))
    pool = _POOLS.setdefault(field, {})
    for key in [k for k in pool if k != signature]:  # the field changed dtype, device, shapes or inference mode
        del pool[key]
    free = pool.get(signature)
    buffers = free.pop() if free else BufferSet(field, fw, signature)
    for k, buf in buffers.bufs.items():
        buf.copy_(fw[k])
    return buffers


def give_back(field, buffers: BufferSet) -> None:
    """Return a pass's buffer set to its field's pool (dropped if the pool has moved to another signature)."""
    pool = _POOLS.get(field)
    if pool is not None and (not pool or buffers.signature in pool):
        pool.setdefault(buffers.signature, []).append(buffers)


def free_buffer_sets(field) -> int:
    """How many free buffer sets ``field``'s pool holds (0 without a pool)."""
    return sum(map(len, _POOLS.get(field, {}).values()))
