"""HOMER: training-free hierarchical context merging (Song et al., ICLR 2024, arXiv 2404.10308).

A long input is [prefix ; context ; suffix] (instruction, document, question). The context
is cut into a power-of-two number of chunks, and each chunk is read as [prefix ; chunk ;
suffix] by the frozen base model, layer by layer:

* the first ``warmup_layers`` layers process chunks independently;
* at later layers adjacent chunks are merged pairwise, hierarchically, until one remains.
  Before a merge each chunk keeps only half of its context tokens, those that the final
  tokens attend to most at that layer (the significance, averaged over heads and the
  last ``significance_queries`` queries), so a merged chunk is no longer than one chunk.
  The score is calibrated against position: it is divided by the mean score that tokens
  at the same position received in all chunks scored at that layer so far, which removes
  the bias every chunk shares (attention to recent and initial positions);
* propagative refinement: the K/V that lower layers hold for a dropped token are dropped
  too, so every layer's cache holds the same tokens;
* depth-first order: a chunk pair is merged as soon as both halves reach the merge layer,
  so at most O(log n) chunks are alive at a time and peak memory grows logarithmically.

The prefix and suffix are never pruned. The result is a fixed-size cache (``target_tokens``
caps it further) followed by the suffix, from which generation continues. Merged chunks
read their tokens at contiguous positions, and the final cache is rotated at contiguous
positions 0..N-1 (K/V are kept un-rotated as in ``uio_ds.model.kv``): this implementation's
reading of how positions are handled after a merge.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from uio_ds.model.kv import MemoryKV, forward_after_cache, prefix_cache, rotate_half


@dataclass
class _Chunk:
    hidden: torch.Tensor  # (1, n, H) input of the next layer
    layer: int  # next layer to run
    keys: list = field(default_factory=list)  # per finished layer: (1, kv_heads, n, head_dim), un-rotated
    values: list = field(default_factory=list)
    protected: torch.Tensor | None = None  # (n,) True for prefix / suffix tokens


class HOMER:
    """Hierarchical context merging over a Hugging Face Llama-family causal LM."""

    def __init__(self, base, chunk_tokens: int = 1024, warmup_layers: int | None = None,
                 target_tokens: int | None = None, significance_queries: int = 16, calibrate: bool = True):
        layers = base.config.num_hidden_layers
        warmup_layers = layers // 4 if warmup_layers is None else warmup_layers
        problems = []
        if chunk_tokens < 2:
            problems.append(f"chunk_tokens={chunk_tokens}: must be >= 2")
        if not 0 <= warmup_layers < layers:
            problems.append(f"warmup_layers={warmup_layers}: must be in [0, {layers})")
        if target_tokens is not None and target_tokens < 1:
            problems.append(f"target_tokens={target_tokens}: must be >= 1")
        if problems:
            raise ValueError("HOMER: " + "; ".join(problems))
        self.base = base
        self.chunk_tokens, self.warmup_layers = chunk_tokens, warmup_layers
        self.target_tokens, self.significance_queries, self.calibrate = target_tokens, significance_queries, calibrate
        cfg = base.config
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.stats: dict = {}
        self.cache_kv: MemoryKV | None = None
        self.cache = None

    # ------------------------------------------------------------------ layers

    def _positions(self, n: int, device) -> torch.Tensor:
        return torch.arange(n, device=device).unsqueeze(0)

    def _run_layers(self, chunk: _Chunk, stop: int) -> None:
        """Run layers chunk.layer..stop-1 at contiguous positions, collecting un-rotated K/V."""
        base, n = self.base, chunk.hidden.shape[1]
        dtype, device = chunk.hidden.dtype, chunk.hidden.device
        position_ids = self._positions(n, device)
        rope = base.model.rotary_emb(chunk.hidden, position_ids)
        mask = torch.full((n, n), torch.finfo(dtype).min, dtype=dtype, device=device).triu(1)[None, None]
        for index in range(chunk.layer, stop):
            layer = base.model.layers[index]
            captured = {}
            hooks = [
                layer.self_attn.k_proj.register_forward_hook(lambda m, i, o, c=captured: c.__setitem__("k", o)),
                layer.self_attn.v_proj.register_forward_hook(lambda m, i, o, c=captured: c.__setitem__("v", o)),
            ]
            try:
                chunk.hidden = layer(chunk.hidden, attention_mask=mask, position_ids=position_ids,
                                     position_embeddings=rope)
            finally:
                for h in hooks:
                    h.remove()
            chunk.keys.append(captured["k"].view(1, n, self.kv_heads, self.head_dim).transpose(1, 2))
            chunk.values.append(captured["v"].view(1, n, self.kv_heads, self.head_dim).transpose(1, 2))
        chunk.layer = stop

    def _significance(self, chunk: _Chunk) -> torch.Tensor:
        """Attention the last queries pay to every token at the chunk's next layer, averaged over
        heads and queries: (n,)."""
        layer = self.base.model.layers[chunk.layer]
        n = chunk.hidden.shape[1]
        h = layer.input_layernorm(chunk.hidden)
        queries = min(self.significance_queries, n)
        q = layer.self_attn.q_proj(h[:, -queries:]).view(1, queries, self.heads, self.head_dim).transpose(1, 2)
        k = layer.self_attn.k_proj(h).view(1, n, self.kv_heads, self.head_dim).transpose(1, 2)
        cos, sin = self.base.model.rotary_emb(h, self._positions(n, h.device))
        cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
        q = q * cos[:, :, -queries:] + rotate_half(q) * sin[:, :, -queries:]
        k = (k * cos + rotate_half(k) * sin).repeat_interleave(self.heads // self.kv_heads, dim=1)
        scores = (q @ k.transpose(-1, -2)).float() / math.sqrt(self.head_dim)
        causal = torch.arange(n, device=h.device)[None, :] > torch.arange(n - queries, n, device=h.device)[:, None]
        weights = scores.masked_fill(causal, float("-inf")).softmax(-1)
        return weights.mean(dim=(0, 1, 2))

    def _keep(self, chunk: _Chunk, keep_context: int) -> torch.Tensor:
        """Indices (sorted) of the tokens a chunk keeps: all protected ones and the ``keep_context``
        most significant others, after positional calibration."""
        score = self._significance(chunk)
        if self.calibrate:
            key = (chunk.layer, score.shape[0])
            total, count = self._baseline.get(key, (torch.zeros_like(score), 0))
            total, count = total + score, count + 1
            self._baseline[key] = (total, count)
            score = score / (total / count + 1e-12)
        context = (~chunk.protected).nonzero().squeeze(1)
        keep_context = min(keep_context, len(context))
        chosen = context[score[context].topk(keep_context).indices]
        return torch.cat([chosen, chunk.protected.nonzero().squeeze(1)]).sort().values

    @staticmethod
    def _select(chunk: _Chunk, index: torch.Tensor) -> _Chunk:
        """The chunk restricted to ``index``, in hidden states and in every finished layer's K/V."""
        return _Chunk(chunk.hidden[:, index], chunk.layer, [k[:, :, index] for k in chunk.keys],
                      [v[:, :, index] for v in chunk.values], chunk.protected[index])

    def _merge(self, left: _Chunk, right: _Chunk, prefix: int, suffix: int) -> _Chunk:
        """[prefix ; left context ; right context ; suffix]: each side reduced to half of its context."""
        keep = lambda c: max(1, int((~c.protected).sum()) // 2)  # noqa: E731
        left, right = self._select(left, self._keep(left, keep(left))), self._select(right, self._keep(right, keep(right)))
        n_left = left.hidden.shape[1]
        # the prefix comes from the left chunk, the suffix (which read the later context) from the right
        left_part = torch.arange(0, n_left - suffix, device=left.hidden.device)
        right_part = torch.arange(prefix, right.hidden.shape[1], device=right.hidden.device)
        cat = lambda a, b: torch.cat([a, b], dim=-2)  # noqa: E731
        merged = _Chunk(
            torch.cat([left.hidden[:, left_part], right.hidden[:, right_part]], dim=1),
            left.layer,
            [cat(a[:, :, left_part], b[:, :, right_part]) for a, b in zip(left.keys, right.keys)],
            [cat(a[:, :, left_part], b[:, :, right_part]) for a, b in zip(left.values, right.values)],
            torch.cat([left.protected[left_part], right.protected[right_part]]),
        )
        self.stats["merges"] += 1
        return merged

    # ------------------------------------------------------------------ the merge tree

    def _merge_layers(self, levels: int) -> list[int]:
        """Layer at which level i of the tree (1 = first merge) merges, spread over the layers after warm-up."""
        layers = self.base.config.num_hidden_layers
        span = layers - self.warmup_layers
        return [self.warmup_layers + (i * span) // max(levels, 1) for i in range(levels)]

    def _build(self, leaves: list[torch.Tensor], lo: int, hi: int, depth: int, prefix: int, suffix: int) -> _Chunk:
        """Depth-first: the merged chunk of leaves[lo:hi], run up to the merge layer above it."""
        # a node at depth d is merged with its sibling at level (levels - d), tree leaves first
        stop = self._merge_layers_of[self._levels - depth] if depth > 0 else self.base.config.num_hidden_layers
        if hi - lo == 1:
            embeds = self.base.get_input_embeddings()(leaves[lo])
            protected = torch.zeros(leaves[lo].shape[1], dtype=torch.bool, device=embeds.device)
            protected[:prefix] = True
            protected[leaves[lo].shape[1] - suffix :] = True
            chunk = _Chunk(embeds, 0, protected=protected)
            self._alive(+1)
            self._run_layers(chunk, stop)
            return chunk
        mid = (lo + hi) // 2
        left = self._build(leaves, lo, mid, depth + 1, prefix, suffix)
        right = self._build(leaves, mid, hi, depth + 1, prefix, suffix)
        merged = self._merge(left, right, prefix, suffix)
        self._alive(-1)  # two chunks became one
        self._run_layers(merged, stop)
        return merged

    def _alive(self, delta: int) -> None:
        self.stats["alive"] += delta
        self.stats["max_alive_chunks"] = max(self.stats["max_alive_chunks"], self.stats["alive"])

    # ------------------------------------------------------------------ public

    @torch.no_grad()
    def prefill(self, context: torch.Tensor, prefix: torch.Tensor | None = None,
                suffix: torch.Tensor | None = None) -> torch.Tensor:
        """Read [prefix ; context ; suffix] (each (1, n) ids); returns the next-token logits (1, vocab).

        The context is cut into the smallest power of two of chunks that keeps each chunk (with
        prefix and suffix) within ``chunk_tokens``."""
        device = self.base.get_input_embeddings().weight.device
        empty = torch.zeros(1, 0, dtype=torch.long, device=device)
        prefix = empty if prefix is None else prefix.to(device)
        suffix = empty if suffix is None else suffix.to(device)
        context = context.to(device)
        room = self.chunk_tokens - prefix.shape[1] - suffix.shape[1]
        if room < 2:
            raise ValueError(f"prefix and suffix ({prefix.shape[1] + suffix.shape[1]} tokens) leave no room in "
                             f"chunk_tokens={self.chunk_tokens}")
        count = 1 << max(0, math.ceil(math.log2(max(1, math.ceil(context.shape[1] / room)))))
        size = math.ceil(context.shape[1] / count)
        leaves = [torch.cat([prefix, context[:, i * size : (i + 1) * size], suffix], dim=1) for i in range(count)]
        levels = count.bit_length() - 1
        self._merge_layers_of, self._levels = self._merge_layers(levels), levels
        self._baseline: dict = {}
        self.stats = {"chunks": count, "levels": levels, "merges": 0, "alive": 0, "max_alive_chunks": 0,
                      "merge_layers": list(self._merge_layers_of)}
        root = self._build(leaves, 0, count, 0, prefix.shape[1], suffix.shape[1])
        if self.target_tokens is not None and root.hidden.shape[1] > self.target_tokens:
            # one more reduction, at the last layer's attention, refined down through every layer
            keep_context = max(0, self.target_tokens - int(root.protected.sum()))
            root.layer -= 1
            index = self._keep(root, keep_context)
            root.layer += 1
            root = self._select(root, index)
        self.cache_kv = MemoryKV(torch.stack(root.keys), torch.stack(root.values))
        self.cache = prefix_cache(self.base, self.cache_kv)
        self.stats["cache_tokens"] = self.cache_kv.num_tokens
        last = self.base.model.norm(root.hidden[:, -1:])
        return self.base.lm_head(last)[:, -1]

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read more tokens after the merged cache; returns the logits after the last one."""
        return forward_after_cache(self.base, tokens, self.cache, logits_to_keep=1)[:, -1]
