"""Segment memories cached by content, shared by every reader of the same segment.

A segment's memory depends on that segment's tokens alone: the encoder compresses segments
independently, and the decoder rotates memory keys when it reads them (``MemoryKV`` holds them
un-rotated). So the K/V of a segment can be kept under a digest of its tokens and of everything
else it depends on (the base weights, the trained parts, the memory's shape and dtype), and any
later text that holds the same aligned segment (another session, another request, the same
document after a restart) reads it instead of compressing it again.

``MemoryCache`` keeps them in host memory up to a byte cap (least recently used dropped first)
and, with a directory, on disk too: one safetensors file per segment, written atomically and
read back when memory no longer holds it. ``MemoryCache.compress`` stands in for
``UIOMemoryModel.compress``: cold, it computes exactly what ``compress`` computes (one call over
the same segments); warm, it returns those same values.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Iterator

import torch

from uio_ds.model.kv import MemoryKV
from uio_ds.model.memory_model import drain

# Options that do not change a segment's memory (how it is read, not what it is).
_READ_ONLY_OPTIONS = ("attention", "position_overflow", "memory_window", "recent_tokens", "sink_tokens",
                      "decoder_recompute")


@dataclass
class CacheStats:
    hits: int = 0
    """Segments read from the cache (memory or disk)."""
    disk_hits: int = 0
    """Of those, segments read from disk."""
    misses: int = 0
    """Segments compressed (and then stored)."""

    def to_dict(self) -> dict:
        return {"hits": self.hits, "disk_hits": self.disk_hits, "misses": self.misses}


def model_digest(model) -> str:
    """What a segment's memory depends on besides its tokens: the base weights (their probe and
    shape), the trained parts (every trainable tensor's bytes) and the memory's config."""
    from uio_ds.model.parts import base_fingerprint, weights_probe

    config = {k: v for k, v in model.config.to_dict().items() if k not in _READ_ONLY_OPTIONS}
    digest = hashlib.sha256(json.dumps([config, base_fingerprint(model.base.config),
                                        model._weights_probe or weights_probe(model.base)],
                                       sort_keys=True, default=str).encode())
    for name, param in model.named_trainable_parameters():
        digest.update(name.encode())
        digest.update(param.detach().contiguous().cpu().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()[:32]


class MemoryCache:
    """Segment memories (K/V before rotation) by content: in memory up to ``max_bytes``, and in
    ``directory`` when one is given (kept across restarts). Thread-safe; one per model."""

    def __init__(self, model, max_bytes: int = 1 << 30, directory: str | None = None):
        if max_bytes < 0:
            raise ValueError(f"max_bytes={max_bytes}: must be >= 0")
        self.model, self.max_bytes, self.directory = model, max_bytes, directory
        self.prefix = model_digest(model)
        self.stats = CacheStats()
        self.bytes = 0
        self._items: OrderedDict[str, tuple[torch.Tensor, torch.Tensor]] = OrderedDict()
        self._lock = threading.Lock()
        if directory is not None:
            os.makedirs(os.path.join(directory, self.prefix), exist_ok=True)

    def key(self, tokens: torch.Tensor) -> str:
        """The digest of one segment's token ids under this model."""
        ids = tokens.detach().to("cpu", torch.int64).contiguous().numpy().tobytes()
        return hashlib.sha256(self.prefix.encode() + ids).hexdigest()[:40]

    def _path(self, key: str) -> str:
        return os.path.join(self.directory, self.prefix, key + ".safetensors")

    def get(self, key: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """(keys, values), each (layers, kv_heads, m, head_dim), or None."""
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
                return found
        if self.directory is None or not os.path.isfile(self._path(key)):
            return None
        from safetensors.torch import load_file

        try:
            saved = load_file(self._path(key), device=str(self.model.device))
        except Exception:  # noqa: BLE001 - a damaged file is a miss: the segment is compressed again
            return None
        pair = (saved["keys"], saved["values"])
        self._remember(key, pair)
        self.stats.disk_hits += 1
        return pair

    def put(self, key: str, keys: torch.Tensor, values: torch.Tensor) -> None:
        pair = (keys.contiguous(), values.contiguous())
        self._remember(key, pair)
        if self.directory is not None and not os.path.isfile(self._path(key)):
            from safetensors.torch import save_file

            staging = f"{self._path(key)}.tmp-{os.getpid()}-{threading.get_ident()}"
            save_file({"keys": pair[0].cpu(), "values": pair[1].cpu()}, staging)
            os.replace(staging, self._path(key))  # a reader never sees half a file

    def _remember(self, key: str, pair: tuple[torch.Tensor, torch.Tensor]) -> None:
        size = sum(t.numel() * t.element_size() for t in pair)
        with self._lock:
            if key in self._items or size > self.max_bytes:
                return
            self._items[key] = pair
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, (k, v) = self._items.popitem(last=False)
                self.bytes -= k.numel() * k.element_size() + v.numel() * v.element_size()

    def compress(self, segments: torch.Tensor, batch_size: int | str | None = "auto") -> tuple[MemoryKV, CacheStats]:
        """``UIOMemoryModel.compress`` through the cache: the memory K/V of texts (B, c*l) made of
        whole segments, and this call's hits and misses. The missing segments are compressed in
        one call (all of them, as ``compress`` itself would, when none is cached)."""
        return drain(self.compress_steps(segments, batch_size))

    def compress_steps(self, segments: torch.Tensor, batch_size: int | str | None = "auto") -> Iterator:
        """``compress`` one encoder call at a time: None after each call but the last, then
        (MemoryKV, this call's CacheStats)."""
        model, l, m = self.model, self.model.segment_length, self.model.num_mem_tokens
        batch, length = segments.shape
        if length == 0 or length % l:
            raise ValueError(f"compress takes whole segments: {length} tokens is not a multiple of segment_length={l}")
        count = length // l
        rows = segments.reshape(batch * count, l)
        keys = [self.key(row) for row in rows]
        found = [self.get(k) for k in keys]
        missing = [i for i, f in enumerate(found) if f is None]
        call = CacheStats(hits=len(keys) - len(missing), misses=len(missing))
        if len(missing) == len(keys):  # nothing cached: the very calls compress makes
            fresh = yield from _until_last(model.compress_steps(segments, batch_size))
            for i, key in enumerate(keys):
                text, seg = divmod(i, count)
                self.put(key, fresh.keys[:, text, :, seg * m:(seg + 1) * m], fresh.values[:, text, :, seg * m:(seg + 1) * m])
            self._count(call)
            yield fresh, call
            return
        if missing:
            fresh = yield from _until_last(model.compress_steps(rows[missing].reshape(1, len(missing) * l), batch_size))
            for j, i in enumerate(missing):
                found[i] = (fresh.keys[:, 0, :, j * m:(j + 1) * m], fresh.values[:, 0, :, j * m:(j + 1) * m])
                self.put(keys[i], *found[i])
        per_text = [(torch.cat([found[t * count + s][0] for s in range(count)], dim=-2),
                     torch.cat([found[t * count + s][1] for s in range(count)], dim=-2)) for t in range(batch)]
        self._count(call)
        yield MemoryKV(torch.stack([k for k, _ in per_text], dim=1), torch.stack([v for _, v in per_text], dim=1)), call

    def _count(self, call: CacheStats) -> None:
        with self._lock:
            self.stats.hits += call.hits
            self.stats.misses += call.misses


def _until_last(steps: Iterator):
    """Pass on every value of ``steps`` but the last, and return the last (for ``yield from``)."""
    previous = next(steps)
    for value in steps:
        yield previous
        previous = value
    return previous
