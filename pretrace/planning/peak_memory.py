"""Measure the peak bytes of tensors a computation allocates, on any device.

`torch.cuda.max_memory_allocated` exists only on a GPU; the memory plan (`pretrace.planning.memory_plan`)
must be checked where tests run, on a CPU. `PeakAllocations` sees every tensor an operator
creates (a dispatch mode), counts each storage once while it is alive, and keeps the peak:
what a device allocator would have had to hold for this computation, less fragmentation.
"""

from __future__ import annotations

import weakref

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map_only


class PeakAllocations(TorchDispatchMode):
    """``with PeakAllocations() as m: ...`` then ``m.peak`` (bytes, tensors created inside only)."""

    def __init__(self) -> None:
        super().__init__()
        self.live = 0
        self.peak = 0
        self._alive: dict[int, int] = {}

    def _count(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key, size = storage.data_ptr(), storage.nbytes()
        if size == 0 or key in self._alive:
            return
        self._alive[key] = size
        self.live += size
        self.peak = max(self.peak, self.live)
        weakref.finalize(storage, self._release, key)

    def _release(self, key: int) -> None:
        self.live -= self._alive.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        # A view or an in-place result shares an input's storage: nothing new was allocated (a
        # view of a weight made before the measurement must not count as the weight's bytes).
        inputs = {t.untyped_storage().data_ptr() for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)}
        tree_map_only(torch.Tensor, lambda t: None if t.untyped_storage().data_ptr() in inputs else self._count(t), out)
        return out
