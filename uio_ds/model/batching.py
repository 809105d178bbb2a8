"""Continuous batching of decoding: one decoder pass gives the next token of every stream in the
batch, whatever the lengths of their memories and residuals.

Each ``MemoryStream`` reads ``[memory ; residual]`` from its decoder cache, and no two streams
need hold as many entries. The batch keeps every member's cache in one buffer per K and V,
``(layers, rows, kv_heads, columns, head_dim)``, its rows right-aligned: every row's entries end
at the same column ``end``, and the columns before a row's first entry are padding that an
attention mask hides. A step writes each row's new K/V at column ``end`` (in place: no copy of the
caches), runs the decoder once over the rows with each row's own position (its cache length) and
the mask, and moves ``end`` on by one. A row whose residual fills a segment is compressed by its
stream (``MemoryStream.advance``) and its new, shorter cache written back right-aligned. When the
columns run out, the rows are packed again against the longest one.

Streams join (``add``) and leave (``remove``) between steps. The batch holds a member's decoder
cache while it is a member; ``remove`` gives it back, so a session can go on alone. Rows are kept
contiguous (the last one moves into a leaver's slot), so a step reads only live rows.

A row decoded in the batch computes what it would alone; only the summation order changes with
the batch's shape (padding masked to an exact zero weight), so logits agree to rounding (tested
against each stream decoding alone).
"""

from __future__ import annotations

import functools

import torch

from uio_ds.model.generation import MemoryStream
from uio_ds.model.kv import cache_from_rotated, cache_tensors, capture_kv


@functools.lru_cache(maxsize=None)
def _slot_cache_class():
    from transformers import DynamicCache
    from transformers.cache_utils import DynamicLayer

    class SlotCache(DynamicCache):
        """The batch's buffer as a transformers cache: each layer reads columns ``[0, end)`` and
        writes its new K/V in place at ``end`` (no concatenation, so no copy of the caches).

        Every layer is a plain full layer, also for a base with sliding-window attention: the
        window is applied by the model's sliding mask over cache columns, and as every row ends
        at column ``end``, the last W columns are each row's last W entries, as alone (where a
        sliding layer keeps only those)."""

        def bind(self, keys: torch.Tensor, values: torch.Tensor, end: int) -> "SlotCache":
            self._buffers, self._end = (keys, values), end
            self.layers = [DynamicLayer() for _ in range(keys.shape[0])]
            for i, layer in enumerate(self.layers):
                layer.keys, layer.values = keys[i, :, :, :end], values[i, :, :, :end]
                layer.dtype, layer.device, layer.is_initialized = keys.dtype, keys.device, True
            return self

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            keys, values = self._buffers
            stop = self._end + key_states.shape[-2]
            keys[layer_idx, :, :, self._end:stop] = key_states
            values[layer_idx, :, :, self._end:stop] = value_states
            layer = self.layers[layer_idx]
            layer.keys, layer.values = keys[layer_idx, :, :, :stop], values[layer_idx, :, :, :stop]
            return layer.keys, layer.values

    return SlotCache


class DecodeBatch:
    """The streams decoding together; ``step`` gives each its next-token logits."""

    def __init__(self, model, slack: int | None = None):
        """``slack``: free columns left after the longest row when the buffer is packed (a repack
        every ``slack`` steps at most; default one segment)."""
        self.model = model
        self.slack = slack or model.segment_length
        self.streams: list[MemoryStream] = []
        self.lengths: list[int] = []  # each row's cache entries, ending at column ``end``
        self.positions: list[int] = []  # each row's next position (more than its entries where a
        # sliding-window layer dropped the oldest)
        self.keys: torch.Tensor | None = None
        self.values: torch.Tensor | None = None
        self.valid: torch.Tensor | None = None  # (rows, columns) bool: entries, not padding
        self.end = 0
        self.repacks = 0

    def __len__(self) -> int:
        return len(self.streams)

    def __contains__(self, stream: MemoryStream) -> bool:
        return any(s is stream for s in self.streams)

    # ------------------------------------------------------------------ membership

    def add(self, stream: MemoryStream) -> None:
        """A stream that has read its prompt (one row) joins; its cache moves into the batch."""
        if stream.residual is None or stream.residual.shape[0] != 1:
            raise ValueError("a stream joins a DecodeBatch after reading its prompt, one row per stream")
        keys, values = cache_tensors(stream.cache)
        if self.keys is None or len(self.streams) == self.keys.shape[1]:
            self._pack(rows=max(1, 2 * len(self.streams)), longest=keys.shape[-2], like=keys)
        self.streams.append(stream)
        self.lengths.append(0)
        self.positions.append(stream.cache.get_seq_length())
        self._place(len(self.streams) - 1, keys, values)
        stream.cache = None  # the batch holds it until ``remove``

    def remove(self, stream: MemoryStream) -> None:
        """``stream`` leaves with its decoder cache back (its row copied out)."""
        slot = next(i for i, s in enumerate(self.streams) if s is stream)
        keys, values = self._row(slot)
        stream.cache = cache_from_rotated(self.model.base, keys.clone(), values.clone())
        for layer in stream.cache.layers:  # a sliding-window layer counts every token it has seen
            if hasattr(layer, "cumulative_length"):
                layer.cumulative_length = self.positions[slot]
        last = len(self.streams) - 1
        if slot != last:  # keep the rows contiguous: the last row moves into the gap
            self.keys[:, slot], self.values[:, slot] = self.keys[:, last], self.values[:, last]
            self.valid[slot] = self.valid[last]
            self.streams[slot], self.lengths[slot] = self.streams[last], self.lengths[last]
            self.positions[slot] = self.positions[last]
        self.streams.pop()
        self.lengths.pop()
        self.positions.pop()
        self.valid[last] = False
        if not self.streams:  # nothing to keep: free the buffer
            self.keys = self.values = self.valid = None
            self.end = 0

    # ------------------------------------------------------------------ decoding

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode one token per member, ``tokens`` (rows,) in member order; returns (rows, vocab)
        logits. Members whose residual fills a segment are compressed (``MemoryStream.advance``)."""
        rows = len(self.streams)
        if tokens.shape != (rows,):
            raise ValueError(f"step needs one token per member: {rows}, got shape {tuple(tokens.shape)}")
        if self.end >= self.keys.shape[3]:
            self._pack()
        end = self.end
        self.valid[:rows, end] = True
        positions = torch.tensor(self.positions, device=self.keys.device).unsqueeze(1)
        # read from the longest row's first entry on; no mask when the rows are of one length
        first = end - max(self.lengths)
        mask = self.valid[:rows, first:end + 1].long() if min(self.lengths) < max(self.lengths) else None
        cache = _slot_cache_class()().bind(self.keys[:, :rows, :, first:], self.values[:, :rows, :, first:], end - first)
        ids = tokens.to(self.keys.device).unsqueeze(1)
        if self.streams[0].recent is None:
            logits = self.model.decoder_forward(ids, cache, 1, positions, mask)[:, -1]
            read = [None] * rows
        else:
            with capture_kv(self.model.base) as found:
                logits = self.model.decoder_forward(ids, cache, 1, positions, mask)[:, -1]
            read = [found[0].select_batch(i, i + 1) for i in range(rows)]
        self.end = end + 1
        for i, stream in enumerate(self.streams):
            self.lengths[i] += 1
            self.positions[i] += 1
            if stream.advance(ids[i:i + 1], read[i]):  # compressed: its cache is now [memory] (+ window)
                keys, values = cache_tensors(stream.cache)
                self.positions[i] = stream.cache.get_seq_length()
                stream.cache = None
                self._place(i, keys, values)
        return logits

    # ------------------------------------------------------------------ the buffer

    def _row(self, slot: int) -> tuple[torch.Tensor, torch.Tensor]:
        start = self.end - self.lengths[slot]
        return self.keys[:, slot:slot + 1, :, start:self.end], self.values[:, slot:slot + 1, :, start:self.end]

    def _place(self, slot: int, keys: torch.Tensor, values: torch.Tensor) -> None:
        """Write a row's whole cache (layers, 1, kv_heads, length, head_dim), right-aligned at ``end``."""
        length = keys.shape[-2]
        self.lengths[slot] = 0
        self.valid[slot] = False
        if length > self.end:
            self._pack(longest=length)
        self.keys[:, slot:slot + 1, :, self.end - length:self.end] = keys
        self.values[:, slot:slot + 1, :, self.end - length:self.end] = values
        self.valid[slot, self.end - length:self.end] = True
        self.lengths[slot] = length

    def _pack(self, rows: int = 0, longest: int = 0, like: torch.Tensor | None = None) -> None:
        """A new buffer: room for ``rows`` rows (at least the current), ``end`` at the longest row
        (or ``longest``), ``slack`` free columns after it; the members' entries copied over."""
        end = max([longest, *self.lengths])
        if self.keys is not None:
            layers, row_cap, heads, _, dim = self.keys.shape
            like = self.keys
        else:
            layers, row_cap, heads, _, dim = like.shape
        row_cap = max(rows, row_cap, len(self.streams))
        keys = torch.zeros(layers, row_cap, heads, end + self.slack, dim, dtype=like.dtype, device=like.device)
        values = torch.zeros_like(keys)
        valid = torch.zeros(row_cap, end + self.slack, dtype=torch.bool, device=like.device)
        for slot, length in enumerate(self.lengths):
            if length:
                old_k, old_v = self._row(slot)
                keys[:, slot:slot + 1, :, end - length:end] = old_k
                values[:, slot:slot + 1, :, end - length:end] = old_v
                valid[slot, end - length:end] = True
        self.keys, self.values, self.valid, self.end = keys, values, valid, end
        self.repacks += 1
