"""The encoder's memory budget when a prompt is read without a graph: how many segments one
encoder call may take so that reading a prompt costs less memory than full attention's KV cache
for the same tokens."""

from __future__ import annotations

import torch

from uio_ds.utils.memory_tracker import TensorMemoryTracker

ENCODE_BUDGET_SHARE = 8
"""Reading a prompt, the encoder's working memory is kept within 1/ENCODE_BUDGET_SHARE of the KV
cache full attention would hold for the same tokens."""


def kv_bytes_per_token(model) -> int:
    """Bytes of K/V one token takes in every layer's cache (the base model's, in its dtype)."""
    return 2 * model.num_layers * model.num_kv_heads * model.head_dim * model.mem_embeddings.element_size()


def encode_batch_for(model, tokens: int) -> int:
    """Segments per encoder call when ``tokens`` tokens are compressed without a graph: as many as
    keep the call's working memory within 1/8 of the KV cache that full attention would hold for
    those tokens (so that reading a prompt costs UIO less memory than it costs full attention, at
    every length), and at least one."""
    budget = tokens * kv_bytes_per_token(model) // ENCODE_BUDGET_SHARE
    return max(1, budget // max(segment_encode_bytes(model), 1))


def segment_encode_bytes(model) -> int:
    """Working memory of compressing one segment (encoder and transfer head, no graph): the peak of
    the tensors the call allocates, measured once per model, device and dtype by compressing a
    segment. Counted by ``TensorMemoryTracker`` on every device, so the process's CUDA peak
    counter (``torch.cuda.max_memory_allocated``) is left as it is for the caller."""
    key = (str(model.device), model.mem_embeddings.dtype)
    measured = getattr(model, "_encode_bytes", {})  # kept on the model: it moves, it is measured again
    if key not in measured:
        ids = torch.full((1, model.segment_length), 3, dtype=torch.long, device=model.device)
        with torch.no_grad(), TensorMemoryTracker(device_type=model.device.type) as tracker:
            model.memory_kv(model.encode(ids))
        measured[key] = int(tracker.peak)
        model._encode_bytes = measured
    return measured[key]
