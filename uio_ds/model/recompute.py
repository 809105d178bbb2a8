"""Activation recompute for the decoder's layers (``UIOConfig.decoder_recompute``).

transformers' own gradient checkpointing drops the KV cache, and here the cache holds the memory,
so the decoder's layers are wrapped by hand instead: under autograd every layer runs inside a
non-reentrant ``torch.utils.checkpoint``, which keeps the layer's inputs and runs it again at
backward time. The cache must then be read-only (a rerun must not extend it), and the rerun, which
happens after the pass has left its adapter, sets that adapter again for its duration.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch


@contextlib.contextmanager
def recomputed_layers(model) -> Iterator[None]:
    """For the duration: every layer of ``model`` (a ``UIOMemoryModel``) recomputed at backward
    under the adapter active on entry, when its config asks for it and autograd is on; otherwise
    nothing changes."""
    if not (model.config.decoder_recompute and torch.is_grad_enabled()):
        yield
        return
    from torch.utils.checkpoint import checkpoint

    adapter = model._active_adapter

    def recomputed(forward):
        def run(*args, **kwargs):
            previous = model._active_adapter
            model._set_adapter(adapter)
            try:
                return forward(*args, **kwargs)
            finally:
                model._set_adapter(previous)

        return lambda *args, **kwargs: checkpoint(run, *args, use_reentrant=False, **kwargs)

    for layer in model.layers:  # an instance attribute shadows the class's forward
        layer.forward = recomputed(layer.forward)
    try:
        yield
    finally:
        for layer in model.layers:
            del layer.forward
