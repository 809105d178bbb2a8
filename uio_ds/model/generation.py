"""Streaming generation with a UIO memory model.

Prefill compresses every full segment of the prompt in parallel, then runs the
decoder over the residual (1..l tokens). Decoding feeds one token at a time
into a KV cache of ``[memory ; residual]``. When the residual reaches l tokens
(after its logits are taken), it is compressed into a new memory and its raw
K/V is dropped, exactly as a segment of a training document would be.

``MemoryStream(model, use_memory=False)`` reads the same way without memory: a full residual is
dropped instead of compressed, so the decoder sees the current segment alone (the ``no_memory``
baseline, as generation would run it).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Iterator, Sequence

import torch

from uio_ds.model.inputs import check_token_ids
from uio_ds.model.kv import MemoryKV, cache_from_rotated, cache_tensors, capture_kv, rotate_keys
from uio_ds.model.memory_cache import CacheStats, MemoryCache
from uio_ds.model.memory_model import UIOMemoryModel, drain
from uio_ds.model.positions import split_segments


class MemoryStream:
    """Memories, residual tokens and decoder cache of a batch of equal-length texts."""

    def __init__(self, model: UIOMemoryModel, encode_batch_size: int | str | None = "auto",
                 memory_cache: MemoryCache | None = None, use_memory: bool = True):
        """``encode_batch_size``: segments per batched encoder call during prefill, which bounds
        the encoder's working memory for long prompts ("auto": from a budget, see
        ``UIOMemoryModel.encode_batch_for``; None compresses all segments at once).
        ``memory_cache``: segments read before (by any stream) are taken from it, not compressed
        again; ``cache_stats`` counts this stream's hits and misses. ``use_memory=False``: nothing
        is compressed and there is no raw window; a full residual is dropped, so the decoder reads
        each segment alone."""
        self.model = model
        self.encode_batch_size = encode_batch_size
        self.memory_cache = memory_cache
        self.use_memory = use_memory
        self.cache_stats = CacheStats()
        self.memory: MemoryKV | None = None
        self.residual: torch.Tensor | None = None
        self.cache = None
        self._rotated: torch.Tensor | None = None  # memory keys with RoPE at their fixed positions
        self.num_compressions = 0
        # with a raw recent window: its K/V, and the K/V of the residual's tokens as the decoder read them
        self.recent = model.recent_kv() if use_memory else None
        self._pending: list[MemoryKV] = []

    @property
    def memory_tokens(self) -> int:
        return self.memory.num_tokens if self.memory is not None else 0

    def _compress(self, segments: torch.Tensor) -> MemoryKV:
        """Memory K/V of ``segments`` (B, c*l), one row per text, segments in order."""
        return drain(self._compress_steps(segments))

    def _compress_steps(self, segments: torch.Tensor) -> Iterator:
        """``_compress`` one encoder call at a time (None after each but the last, then the MemoryKV)."""
        self.num_compressions += segments.shape[1] // self.model.segment_length
        if self.memory_cache is None:
            yield from self.model.compress_steps(segments, self.encode_batch_size)
            return
        for out in self.memory_cache.compress_steps(segments, self.encode_batch_size):
            if out is None:
                yield None
                continue
            memory, call = out
            self.cache_stats.hits += call.hits
            self.cache_stats.misses += call.misses
            yield memory

    def _append_memory(self, kv: MemoryKV) -> None:
        model = self.model
        old_tokens = self.memory_tokens
        memory = kv if self.memory is None else MemoryKV.cat([self.memory, kv])
        # Under 'drop_oldest' the memories outside the window are released, not just hidden;
        # under 'error' the whole text was checked before any work (UIOMemoryModel.check_length).
        self.residual = self.residual[:, :0]
        if self.recent is not None:
            # The segment just compressed joins the raw window as the decoder read it. The decoder
            # reads the memories of the segments before the window (as many as the memory window and
            # the positions allow), then the window: training's read_memories, one segment at a time.
            self.recent.add(MemoryKV.cat(self._pending))
            self._pending = []
            covered = min(model.recent_segments, self.num_compressions) * model.num_mem_tokens
            split = memory.num_tokens - covered
            older = model.fit_positions(memory.token_slice(0, split) if split else None, 1, self.recent.num_tokens)
            newest = memory.token_slice(split, memory.num_tokens) if covered else None
            self.memory = MemoryKV.cat([p for p in (older, newest) if p is not None])
            self.cache = model.build_cache(self.recent.around(older))
            return
        self.memory = model.fit_positions(memory, 1)
        if model.config.position_overflow == "error" and model.config.memory_window is None:
            # Memories keep their positions for good: rotate only the new one, at its fixed place.
            new = rotate_keys(model.base, kv.keys, start=old_tokens)
            self._rotated = new if self._rotated is None else torch.cat([self._rotated, new], dim=-2)
            self.cache = cache_from_rotated(model.base, self._rotated, self.memory.values)
        else:
            self.cache = model.build_cache(self.memory)

    def _append_raw(self) -> None:
        """``memory_window=0``: no memory is ever read, so nothing is compressed; the segment just
        read joins the raw window (and sinks) as the decoder read it."""
        self.residual = self.residual[:, :0]
        self.recent.add(MemoryKV.cat(self._pending))
        self._pending = []
        self.cache = self.model.build_cache(self.recent.around(None))

    def prefill(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Read the prompt (B, P); return the next-token logits (B, vocab)."""
        return drain(self.prefill_steps(input_ids))

    def prefill_steps(self, input_ids: torch.Tensor) -> Iterator:
        """``prefill`` in steps of bounded work (``extend_steps``)."""
        self.residual = input_ids[:, :0]
        self.cache = self.model.build_cache(None)
        self.recent, self._pending = self.model.recent_kv() if self.use_memory else None, []
        return self.extend_steps(input_ids)

    def extend(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read ``tokens`` (B, k >= 1) after the current state, as if they had been part of the
        prompt; return the logits after the last one. The residual is first filled up to a segment
        boundary through the decoder; whole segments after it are compressed in parallel and the
        last 1..l tokens go through the decoder (a session's next turn costs its own length)."""
        return drain(self.extend_steps(tokens))

    def extend_steps(self, tokens: torch.Tensor) -> Iterator:
        """``extend`` one piece of work at a time (an encoder call of ``encode_batch_size``
        segments, or one decoder pass): yields None after each piece but the last, then the logits.
        Run to its end it is ``extend``, call for call, so the result is the same; a server runs
        other requests' decoding steps between the pieces (chunked prefill)."""
        if tokens.shape[1] == 0:
            raise ValueError("extend needs at least one token")
        l = self.model.segment_length
        if self.recent is not None:
            # every segment must pass through the decoder, in order, to give the raw window its K/V
            while tokens.shape[1] > 0:
                take = min(l - self.residual.shape[1], tokens.shape[1])
                logits = self.feed(tokens[:, :take])
                tokens = tokens[:, take:]
                yield logits if tokens.shape[1] == 0 else None
            return
        if self.residual.shape[1] > 0:
            take = min(l - self.residual.shape[1], tokens.shape[1])
            logits = self.feed(tokens[:, :take])
            tokens = tokens[:, take:]
            if tokens.shape[1] == 0:
                yield logits
                return
            yield None
        residual_start = split_segments(tokens.shape[1], l)[-1][0]
        if residual_start > 0 and self.use_memory:  # without memory, whole segments before the last are not read
            memory = None
            for memory in self._compress_steps(tokens[:, :residual_start]):
                if memory is None:
                    yield None
            self._append_memory(memory)
            del memory  # the stream holds what it keeps of it; a local reference would outlive the decoder pass
            yield None
        yield self.feed(tokens[:, residual_start:])

    def feed(self, tokens: torch.Tensor) -> torch.Tensor:
        """Decode ``tokens`` (B, k) after the current state; return the logits after the last one.
        The tokens must not run past the residual's segment (``score`` cuts them there)."""
        return self._decode(tokens, logits_to_keep=1)[:, -1]

    def score(self, tokens: torch.Tensor) -> torch.Tensor:
        """Read ``tokens`` (B, k) after the current state as generation reads them, the residual
        compressed whenever it fills a segment, and return the logits at every position (B, k,
        vocab): position i predicts token i + 1. These are the logits ``feed`` gives token by
        token, in one decoder pass per segment touched (teacher forcing through memory)."""
        out = []
        while tokens.shape[1] > 0:
            take = min(self.model.segment_length - self.residual.shape[1], tokens.shape[1])
            out.append(self._decode(tokens[:, :take], logits_to_keep=0))
            tokens = tokens[:, take:]
        return torch.cat(out, dim=1)

    def _decode(self, tokens: torch.Tensor, logits_to_keep: int) -> torch.Tensor:
        if self.recent is None:
            logits = self.model.decoder_forward(tokens, self.cache, logits_to_keep=logits_to_keep)
            self.advance(tokens)
        else:
            with capture_kv(self.model.base) as found:
                logits = self.model.decoder_forward(tokens, self.cache, logits_to_keep=logits_to_keep)
            self.advance(tokens, found[0])
        return logits

    def advance(self, tokens: torch.Tensor, read_kv: MemoryKV | None = None) -> bool:
        """Record ``tokens`` (B, k) as read by the decoder after the current state: ``feed`` without
        the decoder pass, for a pass run elsewhere over this stream's cache (``DecodeBatch``).
        ``read_kv``: their un-rotated K/V, which a raw recent window keeps. When the residual
        reaches a segment it is compressed (without memory: dropped) and the decoder cache rebuilt:
        returns whether it was."""
        if self.recent is not None:
            if read_kv is None:
                raise ValueError("a stream with a raw recent window needs the K/V of the tokens it reads")
            self._pending.append(read_kv)
        self.residual = torch.cat([self.residual, tokens], dim=1)
        if self.residual.shape[1] == self.model.segment_length:
            if self.use_memory and not self.model.reads_memory:
                self._append_raw()
            elif self.use_memory:
                self._append_memory(self._compress(self.residual))
            else:
                self.residual, self.cache = self.residual[:, :0], self.model.build_cache(None)
            return True
        return False

    def rows(self) -> list["MemoryStream"]:
        """One stream per row of this batch, each as this one would be for that text alone (its
        memories, residual, decoder cache and raw window): prompts read together go on decoding
        apart. This stream is not to be used afterwards."""
        if self.residual is None:
            raise ValueError("rows() needs a stream that has read its prompt")
        count = self.residual.shape[0]
        if count == 1:
            return [self]
        out = []
        for b in range(count):
            row = MemoryStream(self.model, self.encode_batch_size, self.memory_cache)
            row.cache_stats = CacheStats(self.cache_stats.hits, self.cache_stats.misses)
            row.num_compressions = self.num_compressions
            row.residual = self.residual[b:b + 1]
            row.memory = None if self.memory is None else _own(self.memory.select_batch(b, b + 1))
            row._rotated = None if self._rotated is None else self._rotated[:, b:b + 1].clone()
            keys, values = cache_tensors(self.cache)
            row.cache = cache_from_rotated(self.model.base, keys[:, b:b + 1].clone(), values[:, b:b + 1].clone())
            if self.recent is not None:
                row.recent = self.recent.map(lambda kv: _own(kv.select_batch(b, b + 1)))
                row._pending = [_own(kv.select_batch(b, b + 1)) for kv in self._pending]
            out.append(row)
        return out

    def repeat(self, count: int) -> "MemoryStream":
        """``count`` copies of this one-row stream as one batch stream (memories, residual, decoder
        cache and raw window; ``rows`` the other way round): a prompt read once, then several
        continuations of it read together. This stream is left as it was."""
        if self.residual is None or self.residual.shape[0] != 1:
            raise ValueError("repeat() needs a one-row stream that has read its prompt")

        def copies(x: torch.Tensor) -> torch.Tensor:  # every K/V tensor here has the batch on axis 1
            return x.expand(x.shape[0], count, *x.shape[2:]).contiguous()

        out = MemoryStream(self.model, self.encode_batch_size, self.memory_cache, self.use_memory)
        out.num_compressions = self.num_compressions
        out.residual = self.residual.expand(count, -1)
        out.memory = None if self.memory is None else MemoryKV(copies(self.memory.keys), copies(self.memory.values))
        out._rotated = None if self._rotated is None else copies(self._rotated)
        if self.cache.get_seq_length() > 0:
            keys, values = cache_tensors(self.cache)
            out.cache = cache_from_rotated(self.model.base, copies(keys), copies(values))
        else:
            out.cache = self.model.build_cache(None)
        if self.recent is not None:
            out.recent = self.recent.map(lambda kv: MemoryKV(copies(kv.keys), copies(kv.values)))
            out._pending = [MemoryKV(copies(kv.keys), copies(kv.values)) for kv in self._pending]
        return out


def _own(kv: MemoryKV) -> MemoryKV:
    """A copy that does not keep a larger batch's storage alive."""
    return MemoryKV(kv.keys.clone(), kv.values.clone())


def sample_next(
    logits: torch.Tensor,
    do_sample: bool,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Greedy or temperature / top-k / top-p sampling of one token per row."""
    if not do_sample:
        return logits.argmax(dim=-1)
    scores = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(scores, min(top_k, scores.shape[-1]), dim=-1).values[..., -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if top_p < 1.0:
        sorted_scores, order = scores.sort(dim=-1, descending=True)
        probs = sorted_scores.softmax(-1)
        # drop a token when the tokens ranked above it already hold top_p of the mass
        drop = probs.cumsum(-1) - probs > top_p
        scores = scores.scatter(-1, order, sorted_scores.masked_fill(drop, float("-inf")))
    probs = scores.softmax(-1)
    return torch.multinomial(probs.cpu(), 1, generator=generator).squeeze(-1).to(logits.device)


@dataclass
class GenerationResult:
    sequences: torch.Tensor
    """Prompt followed by the generated tokens, (B, P + generated)."""
    num_generated: int
    prefill_seconds: float
    decode_seconds: float
    num_compressions: int
    memory_tokens: int
    finished: list[bool] = field(default_factory=list)

    @property
    def prompt_length(self) -> int:
        return self.sequences.shape[1] - self.num_generated

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.sequences.shape[0] * self.prompt_length / max(self.prefill_seconds, 1e-9)

    @property
    def decode_tokens_per_second(self) -> float:
        return self.sequences.shape[0] * self.num_generated / max(self.decode_seconds, 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def generate(
    model: UIOMemoryModel,
    input_ids: torch.Tensor,
    max_new_tokens: int,
    *,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    stop_token_ids: Sequence[int] = (),
    pad_token_id: int | None = None,
    seed: int | None = None,
    encode_batch_size: int | str | None = "auto",
    on_tokens: Callable[[torch.Tensor], None] | None = None,
    memory_cache: MemoryCache | None = None,
    stop_when: Callable[[torch.Tensor], torch.Tensor] | None = None,
    use_memory: bool = True,
) -> GenerationResult:
    """Generate up to ``max_new_tokens`` after equal-length prompts ``input_ids`` (B, P).

    Rows that emit a token of ``stop_token_ids`` are finished; they are padded with
    ``pad_token_id`` (default: their stop token) until every row has finished.
    ``stop_when`` finishes rows the same way on a condition a token id cannot state (a stop
    string that several tokens spell): it gets the tokens generated so far (B, n) and returns one
    bool per row.
    ``on_tokens`` receives each new column of tokens (B,), for streaming output.
    ``memory_cache``: segments of the prompt read before come from it (``MemoryCache``).
    ``use_memory=False``: the decoder reads each segment alone (``MemoryStream``'s no-memory reading).
    """
    if input_ids.ndim != 2 or input_ids.shape[1] == 0:
        raise ValueError(f"input_ids must be a non-empty (batch, length) tensor, got shape {tuple(input_ids.shape)}")
    check_token_ids(input_ids, model.vocab_size, "input_ids")
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens={max_new_tokens}: must be >= 0")
    if do_sample and temperature <= 0:
        raise ValueError(f"temperature={temperature}: must be > 0 when sampling (or use do_sample=False)")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p={top_p}: must be in (0, 1]")
    # Fail before any work when the whole text would pass the position range (without memory
    # a decoder call reads one segment at most).
    if use_memory:
        model.check_length(input_ids.shape[1] + max_new_tokens)
    device = model.device
    input_ids = input_ids.to(device)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    stops = torch.tensor(list(stop_token_ids), dtype=torch.long, device=device)

    stream = MemoryStream(model, encode_batch_size, memory_cache, use_memory)
    _sync(device)
    start = time.perf_counter()
    logits = stream.prefill(input_ids)
    _sync(device)
    prefill_seconds = time.perf_counter() - start

    batch = input_ids.shape[0]
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    fill = torch.full((batch,), -1, dtype=torch.long, device=device)
    new_tokens: list[torch.Tensor] = []
    start = time.perf_counter()
    for step in range(max_new_tokens):
        token = sample_next(logits, do_sample, temperature, top_k, top_p, generator)
        token = torch.where(finished, fill, token)
        new_tokens.append(token)
        if on_tokens is not None:
            on_tokens(token)
        if stops.numel() or stop_when is not None:
            just_stopped = torch.isin(token, stops) & ~finished
            if stop_when is not None:
                said = torch.as_tensor(stop_when(torch.stack(new_tokens, dim=1)), dtype=torch.bool, device=device)
                just_stopped |= said & ~finished
            fill = torch.where(just_stopped, token if pad_token_id is None else torch.full_like(token, pad_token_id), fill)
            finished |= just_stopped
            if bool(finished.all()):
                break
        if step + 1 < max_new_tokens:
            logits = stream.feed(token.unsqueeze(1))
    _sync(device)
    decode_seconds = time.perf_counter() - start
    generated = torch.stack(new_tokens, dim=1) if new_tokens else input_ids[:, :0]
    return GenerationResult(
        sequences=torch.cat([input_ids, generated], dim=1),
        num_generated=generated.shape[1],
        prefill_seconds=prefill_seconds,
        decode_seconds=decode_seconds,
        num_compressions=stream.num_compressions,
        memory_tokens=stream.memory_tokens,
        finished=finished.tolist(),
    )
