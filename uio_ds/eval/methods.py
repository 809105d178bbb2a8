"""The long-context methods an evaluation compares, behind one small interface.

Every method scores a document (the loss of each token given the text before it, read
from the document's start, nothing carried over from another document) and answers a
prompt greedily:

* ``uio``: the memory model: every earlier segment as compressed memory;
* ``no_memory``: the same decoder seeing only the current segment (what memory must beat);
* ``streaming``: StreamingLLM, attention sinks + a recent window: l KV entries in all unless
  ``streaming_window`` says otherwise;
* ``full``: the base model attending to everything, up to its position range;
* ``homer``: HOMER's hierarchical merging of the text before the current segment into a
  fixed-size cache (the last tokens of that text are its suffix, never pruned).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from uio_ds.baselines import HOMER, StreamingLLM
from uio_ds.formats import IGNORE_INDEX
from uio_ds.model.generation import MemoryStream, generate
from uio_ds.model.kv import forward_after_cache
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.positions import segment_targets, split_segments


def _token_losses(logits: torch.Tensor, targets: torch.Tensor) -> list[float]:
    nll = F.cross_entropy(logits[0].float(), targets[0].to(logits.device).clamp(min=0), reduction="none")
    return [v for v, t in zip(nll.tolist(), targets[0].tolist()) if t != IGNORE_INDEX]


def _greedy_base(base, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
    out = base.generate(ids, max_new_tokens=max_new_tokens, do_sample=False,
                        pad_token_id=base.config.pad_token_id or 0)
    return out[0, ids.shape[1] :].tolist()


class Method:
    """Ids may come on any device (a tokenizer makes them on the host): each method moves them
    to its model's device, and hands back plain Python numbers."""

    name = "method"
    max_tokens: int | None = None
    """Longest text the method can read (None: unbounded)."""

    def token_losses(self, ids: torch.Tensor) -> list[float]:
        """Loss of tokens 1..T-1 of a (1, T) document, each given the tokens before it."""
        raise NotImplementedError

    def greedy(self, ids: torch.Tensor, max_new_tokens: int) -> list[int]:
        """Greedy continuation of a (1, P) prompt."""
        raise NotImplementedError

    def last_losses(self, ids: torch.Tensor, n: int) -> list[float]:
        """Loss of the last ``n`` tokens of a (1, T) text (an answer after its prompt)."""
        return self.token_losses(ids)[-n:]

    def answer(self, prompt: torch.Tensor, answer: torch.Tensor, max_new_tokens: int) -> tuple[list[int], list[float]]:
        """Greedy continuation of a (1, P) prompt, and the loss of each token of ``answer`` (1, n)
        read after it: what a question is scored by."""
        return self.greedy(prompt, max_new_tokens), self.last_losses(torch.cat([prompt, answer], dim=1), answer.shape[1])

    def kv_entries(self, n: int) -> int | None:
        """The most K/V entries one query reads (its own among them) while the method reads an
        ``n``-token text: the budget that comparisons hold equal. None where it is not fixed."""
        return None


class UIOMethod(Method):
    def __init__(self, model: UIOMemoryModel, use_memory: bool = True, encode_batch_size: int | str | None = "auto"):
        self.model, self.use_memory, self.encode_batch_size = model, use_memory, encode_batch_size
        self.name = "uio" if use_memory else "no_memory"
        self.max_tokens = model.max_tokens_supported() if use_memory else None

    @torch.no_grad()
    def token_losses(self, ids, first_segment: int = 0):
        """Losses of the tokens of segments ``first_segment``.. (earlier segments are only read)."""
        model = self.model
        ids = ids.to(model.device)
        bounds = split_segments(ids.shape[1], model.segment_length)
        memory = None
        if self.use_memory and len(bounds) > 1 and model.reads_memory:
            memory = model.compress(ids[:, : bounds[-1][0]], self.encode_batch_size)
        losses = []
        recent = model.recent_kv() if self.use_memory else None
        m = model.num_mem_tokens
        for t, (a, b) in enumerate(bounds):
            if t < first_segment and recent is None:
                continue  # a segment before the scored ones matters only through its memory, or its raw K/V
            first, stop = model.read_memories(t)
            prefix = memory.token_slice(first * m, stop * m) if memory is not None and stop > first else None
            logits = model.decode(ids[:, a:b], prefix, recent=recent).logits
            if t >= first_segment:
                losses += _token_losses(logits, segment_targets(ids, a, b))
        return losses

    def kv_entries(self, n):
        if not self.use_memory:
            return min(n, self.model.segment_length)
        return self.model.peak_positions(n)  # memories read, the raw window, the segment

    def last_losses(self, ids, n):
        # only the segments that score the last n tokens are decoded: token j is scored at
        # position j - 1, so the first of them is scored in segment (T - n - 1) // l
        first = (ids.shape[1] - n - 1) // self.model.segment_length
        return self.token_losses(ids, first_segment=first)[-n:]

    @torch.no_grad()
    def answer(self, prompt, answer, max_new_tokens):
        """The prompt is read once: a copy of its stream scores the answer (as generation reads
        it), the stream itself continues greedily (as ``generate`` does)."""
        if not self.use_memory:
            return super().answer(prompt, answer, max_new_tokens)
        self.model.check_length(prompt.shape[1] + max(max_new_tokens, answer.shape[1]))
        stream = MemoryStream(self.model, self.encode_batch_size)
        logits = stream.prefill(prompt.to(self.model.device))
        answer = answer.to(self.model.device)
        scored = [logits[:, None]]
        if answer.shape[1] > 1:
            scored.append(stream.repeat(1).score(answer[:, :-1]))
        losses = F.cross_entropy(torch.cat(scored, dim=1)[0].float(), answer[0], reduction="none").tolist()
        out = []
        for step in range(max_new_tokens):
            token = logits.argmax(-1)
            out.append(int(token))
            if step + 1 < max_new_tokens:
                logits = stream.feed(token[:, None])
        return out, losses

    @torch.no_grad()
    def greedy(self, ids, max_new_tokens):
        ids = ids.to(self.model.device)
        if self.use_memory:
            result = generate(self.model, ids, max_new_tokens, encode_batch_size=self.encode_batch_size)
            return result.sequences[0, ids.shape[1] :].tolist()
        # without memory the decoder sees the current segment only: the prompt's residual
        start = split_segments(ids.shape[1], self.model.segment_length)[-1][0]
        with self.model.adapter(self.model.decoder_adapter):
            return _greedy_base(self.model.base, ids[:, start:], max_new_tokens)


class StreamingMethod(Method):
    name = "streaming"

    def __init__(self, base, sink_tokens: int = 4, window_tokens: int = 1020, chunk_tokens: int | None = None):
        self.streaming = StreamingLLM(base, sink_tokens, window_tokens, chunk_tokens)

    def kv_entries(self, n):
        s = self.streaming
        return min(n, s.sink_tokens + s.window_tokens + s.chunk_tokens)  # the cache, then a chunk read at once

    def token_losses(self, ids):
        return self.streaming.score(ids.to(self.streaming.base.device))[2]

    @torch.no_grad()
    def greedy(self, ids, max_new_tokens):
        self.streaming.reset()
        return self._continue(self.streaming.prefill(ids.to(self.streaming.base.device)), max_new_tokens)

    def _continue(self, logits, max_new_tokens):
        out = []
        for step in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)
            out.append(int(token))
            if step + 1 < max_new_tokens:
                logits = self.streaming.step(token)
        return out

    @torch.no_grad()
    def answer(self, prompt, answer, max_new_tokens):
        """The prompt is read once: the answer is scored read after it (as a reply is read), then
        the reading goes back to the prompt's end and continues greedily."""
        s = self.streaming
        s.reset()
        logits = s.prefill(prompt.to(s.base.device))
        after_prompt = s.state()
        answer = answer.to(s.base.device)
        scored = [logits[:, None]]
        if answer.shape[1] > 1:
            scored.append(s.read(answer[:, :-1]))
        losses = F.cross_entropy(torch.cat(scored, dim=1)[0].float(), answer[0], reduction="none").tolist()
        s.restore(after_prompt)
        return self._continue(logits, max_new_tokens), losses


class FullAttention(Method):
    name = "full"

    def __init__(self, base):
        self.base = base
        self.max_tokens = base.config.max_position_embeddings

    def kv_entries(self, n):
        return n

    @torch.no_grad()
    def token_losses(self, ids):
        ids = ids[:, : self.max_tokens].to(self.base.device)
        logits = self.base(ids).logits[:, :-1]
        return _token_losses(logits, ids[:, 1:])

    @torch.no_grad()
    def greedy(self, ids, max_new_tokens):
        if ids.shape[1] + max_new_tokens > self.max_tokens:
            raise ValueError(f"full attention reads at most {self.max_tokens} tokens")
        return _greedy_base(self.base, ids.to(self.base.device), max_new_tokens)


class HOMERMethod(Method):
    name = "homer"

    def __init__(self, base, chunk_tokens: int, segment_length: int, edge_tokens: int = 16):
        edge = min(edge_tokens, chunk_tokens // 4)  # prefix + suffix take at most half a chunk
        self.homer = HOMER(base, chunk_tokens=chunk_tokens, significance_queries=edge)
        self.segment_length, self.edge = segment_length, edge

    def _read(self, ids: torch.Tensor) -> torch.Tensor:
        """Merge ``ids`` into the cache; the first and last ``edge`` tokens are prefix and suffix."""
        e = min(self.edge, ids.shape[1] // 4)
        return self.homer.prefill(ids[:, e : ids.shape[1] - e], ids[:, :e], ids[:, ids.shape[1] - e :])

    @torch.no_grad()
    def token_losses(self, ids):
        ids, losses = ids.to(self.homer.base.device), []
        for t, (a, b) in enumerate(split_segments(ids.shape[1], self.segment_length)):
            targets = segment_targets(ids, a, b)
            if t == 0:
                logits = forward_after_cache(self.homer.base, ids[:, a:b])
            else:
                self._read(ids[:, :a])
                logits = forward_after_cache(self.homer.base, ids[:, a:b], self.homer.cache)
            losses += _token_losses(logits, targets)
        return losses

    @torch.no_grad()
    def greedy(self, ids, max_new_tokens):
        logits, out = self._read(ids.to(self.homer.base.device)), []
        for _ in range(max_new_tokens):
            token = logits.argmax(-1, keepdim=True)
            out.append(int(token))
            logits = self.homer.step(token)
        return out


def build_methods(model: UIOMemoryModel, names: list[str], sink_tokens: int = 4,
                  streaming_window: int | None = None) -> list[Method]:
    """The named methods over one memory model's base weights.

    ``streaming_window`` is the number of KV entries StreamingLLM reads (sinks included); by default
    l, the decoder's own window.
    """
    window = streaming_window or model.segment_length
    if window <= sink_tokens:
        raise ValueError(f"streaming window {window} must exceed the {sink_tokens} attention sinks")
    out = []
    for name in names:
        if name == "uio":
            out.append(UIOMethod(model, use_memory=True))
        elif name == "no_memory":
            out.append(UIOMethod(model, use_memory=False))
        elif name == "streaming":
            out.append(StreamingMethod(model.base, sink_tokens, window - sink_tokens))
        elif name == "full":
            out.append(FullAttention(model.base))
        elif name == "homer":
            out.append(HOMERMethod(model.base, chunk_tokens=2 * model.segment_length,
                                   segment_length=model.segment_length))
        else:
            raise ValueError(f"unknown method {name!r}: choose from uio, no_memory, streaming, full, homer")
    return out
