"""Peak bytes of tensor memory allocated by the code inside a ``with`` block, on any device.

``TensorMemoryTracker`` is a TorchDispatchMode: every operator output that owns new
storage (not a view, not an in-place result) is counted from its creation until the
storage is freed, so ``peak`` is the high-water mark of memory the block itself
allocated: activations, saved tensors, gradients, temporaries. Tensors that existed
before the block (weights) are not counted. It works for real tensors on the CPU and
for fake tensors on a fake CUDA device, which is how GPU memory is estimated without
a GPU.

Allocations can be attributed to named parts (``with tracker.label("decoder"): ...``); at
the high-water mark the live bytes of each part are recorded in ``peak_by_label``.
"""

from __future__ import annotations

import contextlib
import weakref
from functools import partial
from typing import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves


class TensorMemoryTracker(TorchDispatchMode):
    """Track live and peak bytes of storages created inside the block.

    ``device_type`` ('cpu', 'cuda', ...) restricts counting to one kind of device; None counts all.
    """

    def __init__(self, device_type: str | None = None, default_label: str = "other"):
        super().__init__()
        self.device_type = device_type
        self.current = 0
        self.peak = 0
        self.by_label: dict[str, int] = {}
        """Live bytes per label now."""
        self.peak_by_label: dict[str, int] = {}
        """Live bytes per label at the high-water mark."""
        self._labels = [default_label]
        self._live: dict[int, tuple[weakref.ref, int, str]] = {}

    def reset_peak(self) -> None:
        """Start a new high-water mark from what is live now."""
        self.peak = self.current
        self.peak_by_label = dict(self.by_label)

    @contextlib.contextmanager
    def label(self, name: str) -> Iterator[None]:
        """Attribute storage created inside this block to ``name``."""
        self._labels.append(name)
        try:
            yield
        finally:
            self._labels.pop()

    def relabel(self, tensor: torch.Tensor, name: str) -> None:
        """Attribute the (tracked) storage of ``tensor`` to ``name`` from now on."""
        key = id(tensor.untyped_storage())
        entry = self._live.get(key)
        if entry is None:
            return
        ref, nbytes, old = entry
        self._live[key] = (ref, nbytes, name)
        self._move(old, -nbytes)
        self._move(name, nbytes)

    def _move(self, name: str, nbytes: int) -> None:
        self.by_label[name] = self.by_label.get(name, 0) + nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        returns = func._schema.returns
        aliased = [r.alias_info is not None for r in returns]
        outputs = out if isinstance(out, (tuple, list)) and len(returns) > 1 else (out,)
        for i, value in enumerate(outputs):
            if i < len(aliased) and aliased[i]:
                continue  # a view or an in-place result: no new storage
            for t in tree_leaves(value):
                if isinstance(t, torch.Tensor):
                    self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        if self.device_type is not None and t.device.type != self.device_type:
            return
        storage = t.untyped_storage()
        key = id(storage)
        entry = self._live.get(key)
        if entry is not None and entry[0]() is storage:
            return
        nbytes = storage.nbytes()
        ref = weakref.ref(storage, partial(self._freed, key))
        label = self._labels[-1]
        self._live[key] = (ref, nbytes, label)
        self.current += nbytes
        self._move(label, nbytes)
        if self.current > self.peak:
            self.peak = self.current
            self.peak_by_label = dict(self.by_label)

    def _freed(self, key: int, ref: weakref.ref) -> None:
        entry = self._live.get(key)
        if entry is not None and entry[0] is ref:
            del self._live[key]
            self.current -= entry[1]
            self._move(entry[2], -entry[1])
