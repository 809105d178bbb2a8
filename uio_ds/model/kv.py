"""Key/value plumbing shared by the memory model and the baselines.

K/V are kept un-rotated (as k_proj / v_proj produce them) and rotated when a cache is
built, because their RoPE position depends on what precedes them in that cache: memories
of earlier segments for UIO, the sink and window tokens for StreamingLLM, the kept tokens
for HOMER. A prefix built here followed by ``forward_after_cache`` equals the base model
reading the prefix tokens and the new tokens in one pass (tested).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
from dataclasses import dataclass
from typing import Iterator

import torch


@dataclass
class MemoryKV:
    """Memory keys and values of one or more segments, un-rotated.

    ``keys`` and ``values`` have shape ``(num_layers, batch, kv_heads, tokens, head_dim)``.
    RoPE is applied when a cache is built, because a memory's position depends on
    how many memories precede it in that cache.
    """

    keys: torch.Tensor
    values: torch.Tensor

    @property
    def num_tokens(self) -> int:
        return self.keys.shape[-2]

    @property
    def batch_size(self) -> int:
        return self.keys.shape[1]

    @staticmethod
    def cat(parts: list["MemoryKV"]) -> "MemoryKV":
        """Concatenate memories in order along the token axis (earliest first)."""
        if len(parts) == 1:
            return parts[0]
        return MemoryKV(torch.cat([p.keys for p in parts], dim=-2), torch.cat([p.values for p in parts], dim=-2))

    def token_slice(self, start: int, stop: int) -> "MemoryKV":
        return MemoryKV(self.keys[..., start:stop, :], self.values[..., start:stop, :])

    def select_batch(self, start: int, stop: int) -> "MemoryKV":
        return MemoryKV(self.keys[:, start:stop], self.values[:, start:stop])

    def per_text(self, num_texts: int) -> "MemoryKV":
        """Rows ordered (text, segment) -> one row per text, its segments in order along the tokens."""

        def regroup(x: torch.Tensor) -> torch.Tensor:
            layers, rows, heads, m, dim = x.shape
            count = rows // num_texts
            x = x.view(layers, num_texts, count, heads, m, dim).transpose(2, 3)
            return x.reshape(layers, num_texts, heads, count * m, dim)

        if self.batch_size % num_texts:
            raise ValueError(f"{self.batch_size} memory rows cannot be split evenly over {num_texts} texts")
        return MemoryKV(regroup(self.keys), regroup(self.values))


class RecentKV:
    """The raw K/V a decoder keeps of the text it read itself (un-rotated, detached): the last
    ``tokens`` tokens (the recent window) and the text's first ``sinks`` tokens (attention sinks).
    The next decoder pass reads ``[sinks ; memories ; window]`` before its own tokens (``around``);
    a sink is read only once it has left the window, so no token is read twice."""

    def __init__(self, tokens: int, sinks: int = 0):
        self.tokens, self.sinks = tokens, sinks
        self.kv: MemoryKV | None = None  # the window
        self.head: MemoryKV | None = None  # the first ``sinks`` tokens read
        self.seen = 0

    @property
    def sink_kv(self) -> MemoryKV | None:
        """The sinks the decoder reads now: those of the first ``sinks`` tokens outside the window."""
        window = self.kv.num_tokens if self.kv is not None else 0
        shown = min(self.sinks, self.seen - window)
        return self.head.token_slice(0, shown) if shown > 0 else None

    @property
    def num_tokens(self) -> int:
        """Raw tokens the next decoder pass reads: the sinks shown and the window."""
        sinks = self.sink_kv
        return (self.kv.num_tokens if self.kv is not None else 0) + (sinks.num_tokens if sinks is not None else 0)

    def add(self, kv: MemoryKV) -> None:
        """Append a pass's K/V (its tokens in order): the first ``sinks`` of the text are kept for
        good, the window keeps the last ``tokens``."""
        kv = MemoryKV(kv.keys.detach(), kv.values.detach())
        held = self.head.num_tokens if self.head is not None else 0
        if held < self.sinks:
            new = kv.token_slice(0, self.sinks - held)
            self.head = new if self.head is None else MemoryKV.cat([self.head, new])
        self.seen += kv.num_tokens
        kv = kv if self.kv is None else MemoryKV.cat([self.kv, kv])
        self.kv = kv.token_slice(max(0, kv.num_tokens - self.tokens), kv.num_tokens) if self.tokens else None

    def around(self, memory: MemoryKV | None) -> MemoryKV | None:
        """What a decoder pass reads before its own tokens: ``[sinks ; memory ; window]``."""
        parts = [p for p in (self.sink_kv, memory, self.kv) if p is not None]
        return MemoryKV.cat(parts) if parts else None

    def map(self, fn) -> "RecentKV":
        """A copy with ``fn`` applied to each ``MemoryKV`` held (e.g. one row of a batch)."""
        out = RecentKV(self.tokens, self.sinks)
        out.kv = None if self.kv is None else fn(self.kv)
        out.head = None if self.head is None else fn(self.head)
        out.seen = self.seen
        return out


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rotate_keys(base, keys: torch.Tensor, start: int = 0) -> torch.Tensor:
    """RoPE of ``keys`` (layers, batch, kv_heads, tokens, head_dim) at positions start, start+1, ..."""
    positions = torch.arange(start, start + keys.shape[-2], device=keys.device).unsqueeze(0)
    cos, sin = base.model.rotary_emb(keys[0], positions)
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    return keys * cos + rotate_half(keys) * sin


@functools.lru_cache(maxsize=None)
def _read_only_cache_class():
    from transformers import DynamicCache

    class ReadOnlyCache(DynamicCache):
        """A prefix cache that a forward pass reads but never extends: each layer gets
        [prefix ; its new K/V] and the prefix stays as it was, so a layer run twice (activation
        recompute) sees the same keys and values both times."""

        def update(self, key_states, value_states, layer_idx, *args, **kwargs):
            layer = self.layers[layer_idx]
            return torch.cat([layer.keys, key_states], dim=-2), torch.cat([layer.values, value_states], dim=-2)

    return ReadOnlyCache


def cache_from_rotated(base, keys: torch.Tensor, values: torch.Tensor, read_only: bool = False):
    """A DynamicCache holding already-rotated keys and their values, layer by layer
    (``read_only``: never extended by the passes that read it)."""
    from transformers import DynamicCache

    cache = (_read_only_cache_class() if read_only else DynamicCache)(config=base.config)
    for i in range(keys.shape[0]):
        DynamicCache.update(cache, keys[i], values[i], i)
    return cache


def cache_tensors(cache) -> tuple[torch.Tensor, torch.Tensor]:
    """The keys (as the cache holds them, rotated) and values of a DynamicCache, stacked:
    (layers, batch, kv_heads, tokens, head_dim) each."""
    lengths = {layer.keys.shape[-2] for layer in cache.layers}
    if len(lengths) > 1:
        raise ValueError(f"the cache's layers hold different numbers of entries {sorted(lengths)}: a base that mixes "
                         "sliding-window and full layers is not supported here")
    return torch.stack([layer.keys for layer in cache.layers]), torch.stack([layer.values for layer in cache.layers])


def prefix_cache(base, memory: MemoryKV | None, read_only: bool = False):
    """A transformers DynamicCache holding ``memory`` with keys rotated at positions 0..M-1."""
    from transformers import DynamicCache

    if memory is None or memory.num_tokens == 0:
        return DynamicCache(config=base.config)
    return cache_from_rotated(base, rotate_keys(base, memory.keys), memory.values, read_only)


def cache_argument(base) -> str:
    """The name under which ``base``'s forward takes a KV cache: ``cache`` from transformers 5.25
    on, ``past_key_values`` before (5.25 still takes the old name, with a warning that it goes in
    5.40)."""
    return _cache_argument(type(base))


@functools.lru_cache(maxsize=None)
def _cache_argument(cls) -> str:
    return "cache" if "cache" in inspect.signature(cls.forward).parameters else "past_key_values"


def forward_after_cache(base, input_ids: torch.Tensor, cache=None, logits_to_keep: int = 0,
                        positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The base causal LM over ``input_ids`` at the positions that follow ``cache``; returns logits.
    ``cache`` is extended in place.

    Rows whose caches are padded to one length (``DecodeBatch``) give their own ``positions``
    (batch, tokens) and an ``attention_mask`` (batch, cached + new tokens) that hides the padding."""
    if positions is None:
        offset = cache.get_seq_length() if cache is not None else 0
        positions = torch.arange(offset, offset + input_ids.shape[1], device=input_ids.device).unsqueeze(0)
    extra = {} if attention_mask is None else {"attention_mask": attention_mask}
    out = base(input_ids=input_ids, position_ids=positions, use_cache=cache is not None,
               logits_to_keep=logits_to_keep, **{cache_argument(base): cache}, **extra)
    return out.logits


@contextlib.contextmanager
def capture_kv(base) -> Iterator[list]:
    """Collect the un-rotated K/V that every layer's k_proj / v_proj produce inside the block.

    Yields a list that receives one ``MemoryKV`` (layers, batch, kv_heads, tokens, head_dim)
    per forward pass of the base model."""
    cfg = base.config
    heads = cfg.num_key_value_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    layers = base.model.layers
    keys: list = []
    values: list = []
    found: list[MemoryKV] = []

    def grab(store):
        def hook(_module, _inputs, out):
            store.append(out.view(out.shape[0], out.shape[1], heads, head_dim).transpose(1, 2))
            if store is values and len(values) == len(layers):
                found.append(MemoryKV(torch.stack(keys), torch.stack(values)))
                keys.clear()
                values.clear()
        return hook

    hooks = []
    for layer in layers:
        hooks.append(layer.self_attn.k_proj.register_forward_hook(grab(keys)))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(grab(values)))
    try:
        yield found
    finally:
        for h in hooks:
            h.remove()
