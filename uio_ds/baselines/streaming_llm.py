"""StreamingLLM (Xiao et al., 2023, "Efficient Streaming Language Models with Attention Sinks").

The frozen base model keeps the K/V of the first ``sink_tokens`` tokens of the text (the
attention sinks) and of the most recent ``window_tokens`` tokens; everything in between is
dropped. Positions are those within the cache: sinks at 0.., the window after them, the
new tokens after that, so the position range in use never grows.

Text is read in chunks of ``chunk_tokens``: a chunk attends to the kept K/V plus its own
causal past, then its K/V join the window. ``chunk_tokens=1`` is the exact token-by-token
method; larger chunks are the usual fast approximation (a token sees at most
sinks + window + chunk - 1 earlier tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uio_ds.model.kv import MemoryKV, capture_kv, forward_after_cache, prefix_cache


class StreamingLLM:
    """Sink + recent-window inference over a Hugging Face Llama-family causal LM."""

    def __init__(self, base, sink_tokens: int = 4, window_tokens: int = 1020, chunk_tokens: int | None = None):
        chunk_tokens = chunk_tokens or max(1, window_tokens // 4)
        problems = [f"{name}={value}: must be >= {low}" for name, value, low in
                    (("sink_tokens", sink_tokens, 0), ("window_tokens", window_tokens, 1), ("chunk_tokens", chunk_tokens, 1))
                    if value < low]
        needed = sink_tokens + window_tokens + chunk_tokens
        if needed > base.config.max_position_embeddings:
            problems.append(f"sink_tokens + window_tokens + chunk_tokens = {needed} exceeds the model's "
                            f"{base.config.max_position_embeddings} positions")
        if problems:
            raise ValueError("StreamingLLM: " + "; ".join(problems))
        self.base = base
        self.sink_tokens, self.window_tokens, self.chunk_tokens = sink_tokens, window_tokens, chunk_tokens
        self.reset()

    def reset(self) -> None:
        """Forget the text read so far (call between documents)."""
        self.sinks: MemoryKV | None = None
        self.recent: MemoryKV | None = None
        self.tokens_seen = 0

    @property
    def cached_tokens(self) -> int:
        return sum(kv.num_tokens for kv in (self.sinks, self.recent) if kv is not None)

    def _kept(self) -> MemoryKV | None:
        parts = [kv for kv in (self.sinks, self.recent) if kv is not None and kv.num_tokens]
        return MemoryKV.cat(parts) if parts else None

    def _read(self, input_ids: torch.Tensor, logits_to_keep: int = 0) -> torch.Tensor:
        """One chunk: attend to the kept K/V, then fold the chunk's K/V into sinks and window."""
        cache = prefix_cache(self.base, self._kept())
        with capture_kv(self.base) as found:
            logits = forward_after_cache(self.base, input_ids, cache, logits_to_keep)
        new = found[0]
        take = min(max(self.sink_tokens - self.tokens_seen, 0), new.num_tokens)
        if take:
            head = new.token_slice(0, take)
            self.sinks = head if self.sinks is None else MemoryKV.cat([self.sinks, head])
            new = new.token_slice(take, new.num_tokens)
        if new.num_tokens:
            recent = new if self.recent is None else MemoryKV.cat([self.recent, new])
            self.recent = recent.token_slice(max(0, recent.num_tokens - self.window_tokens), recent.num_tokens)
        self.tokens_seen += input_ids.shape[1]
        return logits

    @torch.no_grad()
    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Read a prompt (B, P) chunk by chunk; returns the next-token logits (B, vocab)."""
        logits = None
        for start in range(0, input_ids.shape[1], self.chunk_tokens):
            logits = self._read(input_ids[:, start : start + self.chunk_tokens], logits_to_keep=1)
        return logits[:, -1]

    @torch.no_grad()
    def read(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Read (B, n) more tokens chunk by chunk, as ``prefill`` does; returns the logits at every
        one of them (B, n, vocab)."""
        return torch.cat([self._read(input_ids[:, start : start + self.chunk_tokens])
                          for start in range(0, input_ids.shape[1], self.chunk_tokens)], dim=1)

    def state(self) -> tuple:
        """What has been read, to come back to with ``restore`` (the K/V are never changed in place)."""
        return self.sinks, self.recent, self.tokens_seen

    def restore(self, state: tuple) -> None:
        self.sinks, self.recent, self.tokens_seen = state

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read (B, k) more tokens; returns the logits after the last one."""
        return self._read(tokens, logits_to_keep=1)[:, -1]

    @torch.no_grad()
    def score(self, input_ids: torch.Tensor) -> tuple[float, int, list[float]]:
        """Summed next-token loss of a document (B, T) read from the start, the number of scored
        tokens, and the loss of every scored position (for per-position breakdowns)."""
        self.reset()
        losses = []
        for start in range(0, input_ids.shape[1], self.chunk_tokens):
            chunk = input_ids[:, start : start + self.chunk_tokens]
            logits = self._read(chunk)
            targets = input_ids[:, start + 1 : start + 1 + chunk.shape[1]]
            logits = logits[:, : targets.shape[1]]
            nll = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), reduction="none")
            losses += nll.view(targets.shape).mean(0).tolist()
        batch = input_ids.shape[0]
        return sum(losses) * batch, batch * (input_ids.shape[1] - 1), losses
