"""The scheduler: one worker thread that owns the model and runs every request.

Requests wait in a queue. Each round the worker admits what has arrived (waiting
``batch_wait_s`` after the first arrival for others sent at the same moment), reads one piece of
the oldest prompts (an encoder call or a decoder pass: chunked prefill, so a long prompt does not
stop the running streams), then gives every decoding request its next token from one decoder
pass (continuous batching, ``DecodeBatch``: rows of any memory and residual length; requests join
as their prompts are read and leave as they finish). Prompts of equal length that arrive
together are read as one batch, up to ``max_batch`` rows, then decode as rows of their own.

A request may name a session. The session keeps the conversation's ``MemoryStream`` (memories,
residual tokens, decoder cache) and its tokens between requests; when the next request's
prompt starts with those tokens, only the new ones are read (``MemoryStream.extend``), so a
follow-up question costs its own length, not the document's. Sessions are capped in number
(least recently used dropped first) and expire after ``session_ttl_s`` without use.

Text is streamed as it is decoded: a token that ends inside a multi-byte character, or text
that may be the start of a stop sequence, is held back until it is settled.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch

from uio_ds.model.batching import DecodeBatch
from uio_ds.model.generation import MemoryStream, sample_next
from uio_ds.model.inputs import token_id_problem
from uio_ds.model.memory_cache import MemoryCache
from uio_ds.model.positions import PositionRangeError
from uio_ds.serve.errors import Overloaded, RequestError
from uio_ds.serve.requests import Event, SamplingParams, Usage
from uio_ds.serve.sessions import Session, SessionStore
from uio_ds.serve.text import TextStream

if TYPE_CHECKING:  # prometheus_client is needed only where metrics are served
    from uio_ds.serve.metrics import ServingMetrics


@dataclass
class _Request:
    prompt_ids: list[int]
    params: SamplingParams
    emit: Callable[[Event], None]
    session: str | None
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    generated: list[int] = field(default_factory=list)
    text: TextStream | None = None
    generator: torch.Generator | None = None
    finished: str | None = None
    reused: int = 0
    cancelled: bool = False
    cache_before: tuple[int, int] = (0, 0)  # the stream's memory-cache (hits, misses) when this request began
    stream: MemoryStream | None = None  # its own stream, once its prompt is read
    logits: torch.Tensor | None = None  # the next token's, (1, vocab)
    arrived: float = field(default_factory=time.monotonic)
    last_token_at: float | None = None


def _send(request: "_Request", event: Event) -> None:
    """Hand ``event`` to the request's consumer; a consumer that has gone away (a closed event
    loop, a dropped connection) must not stop the worker, and its request stops early."""
    try:
        request.emit(event)
    except Exception:  # noqa: BLE001
        request.finished = request.finished or "gone"


class _Group:
    """Requests whose prompts are read together (one ``MemoryStream``, a row each): equal-length
    prompts that arrived together, or one session's request."""

    def __init__(self, requests: list[_Request], stream: MemoryStream, steps):
        self.requests, self.stream, self.steps = requests, stream, steps
        """``steps``: the ``extend_steps`` generator that reads the prompt, a piece a call."""


class Scheduler:
    """Owns the model on one worker thread; ``submit`` queues a request from any thread."""

    def __init__(self, model, tokenizer, model_name: str = "uio", max_batch: int = 8, max_sessions: int = 32,
                 session_ttl_s: float = 1800.0, stop_token_ids: list[int] | None = None, batch_wait_s: float = 0.05,
                 memory_cache: MemoryCache | None = None, max_queue: int = 64, metrics: ServingMetrics | None = None,
                 prefill_groups: int = 1, prefill_chunk: int | None = None, prefill_share: float = 0.5):
        """``memory_cache``: segment memories shared by every request and session (and, with a
        directory, kept across restarts). ``max_queue``: requests queued or running at most; one
        more is refused (``Overloaded``). ``metrics``: where latencies, outcomes, batch sizes and
        cache hits are reported. ``max_batch``: requests decoded together at most (more wait for a
        row) and prompts of one length read together at most. ``prefill_groups``: prompts read
        at once, a piece each per round, oldest first (one: the first to arrive gets its first
        token first, instead of every prompt's first token after all of them are read).
        ``prefill_chunk``: segments per encoder call while reading a prompt (None: as many as the
        encoder's memory budget allows). ``prefill_share``: while requests are decoding, the share
        of the worker's time that reading prompts may take (1: a piece every round), which bounds
        how much a long prompt slows the running streams."""
        if max_queue < 1:
            raise ValueError(f"max_queue={max_queue}: must be >= 1")
        if max_batch < 1:
            raise ValueError(f"max_batch={max_batch}: must be >= 1")
        if prefill_chunk is not None and prefill_chunk < 1:
            raise ValueError(f"prefill_chunk={prefill_chunk}: must be >= 1 segment (or None)")
        if not 0 < prefill_share <= 1:
            raise ValueError(f"prefill_share={prefill_share}: must be in (0, 1]")
        self.model, self.tokenizer, self.model_name = model.eval(), tokenizer, model_name
        self.memory_cache, self.max_queue, self.metrics = memory_cache, max_queue, metrics
        self.max_batch, self.batch_wait_s = max_batch, batch_wait_s
        self.sessions = SessionStore(max_sessions, session_ttl_s)
        stops = set(stop_token_ids or [])
        if tokenizer.eos_token_id is not None:
            stops.add(tokenizer.eos_token_id)
        generation = getattr(model.base, "generation_config", None)
        eos = getattr(generation, "eos_token_id", None)
        stops.update(eos if isinstance(eos, list) else [eos] if eos is not None else [])
        self.stop_token_ids = sorted(stops)
        self._queue: queue.Queue[_Request | None] = queue.Queue()
        self.prefill_groups, self.prefill_chunk, self.prefill_share = prefill_groups, prefill_chunk, prefill_share
        self._prefill_debt = 0.0  # seconds of prompt reading not yet paid for by decoding time
        self._prefilling: list[_Group] = []  # prompts being read, in arrival order
        self._ready: list[_Request] = []  # prompts read: decoding in the batch, or waiting for a row
        self._batch = DecodeBatch(model)
        self._requests: dict[str, _Request] = {}  # queued or running, by id (for cancel and the queue bound)
        if metrics is not None:
            metrics.track_queue(lambda: len(self._requests))
        self._thread = threading.Thread(target=self._run, name="uio-serving", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ requests

    def check(self, prompt_ids: list[int], params: SamplingParams) -> None:
        """Raise ``RequestError`` for a request that cannot be served, before it is queued."""
        problems = params.problems()
        if not prompt_ids:
            problems.append("the prompt is empty")
        problem = token_id_problem(prompt_ids, self.model.vocab_size, "the prompt's token ids")
        if problem:
            problems.append(problem)
        if problems:
            raise RequestError("; ".join(problems))
        try:
            self.model.check_length(len(prompt_ids) + params.max_tokens)
        except PositionRangeError as err:
            raise RequestError(f"prompt of {len(prompt_ids)} tokens + max_tokens={params.max_tokens}: {err}") from None

    def submit(self, prompt_ids: list[int], params: SamplingParams, emit: Callable[[Event], None],
               session: str | None = None) -> str:
        """Queue a request; ``emit`` is called from the worker thread with each ``Event``. Returns
        the request's id (``cancel`` takes it). A busy session raises ``SessionBusy`` here."""
        self.check(prompt_ids, params)
        if len(self._requests) >= self.max_queue:
            if self.metrics is not None:
                self.metrics.rejected.labels("overloaded").inc()
            raise Overloaded(f"the server holds {len(self._requests)} requests (max_queue={self.max_queue}): "
                             "retry later")
        if session is not None:
            self.sessions.reserve(session)
        request = _Request(list(prompt_ids), params, emit, session)
        self._requests[request.id] = request
        self._queue.put(request)
        return request.id

    def cancel(self, request_id: str) -> None:
        """Stop a request whose client has gone (a dropped connection): it ends at the next decoding
        step, its session kept as far as it got. Any thread; an unknown or finished id is ignored."""
        request = self._requests.get(request_id)
        if request is not None:
            request.cancelled = True

    def generate(self, prompt_ids: list[int], params: SamplingParams, session: str | None = None,
                 on_text: Callable[[str], None] | None = None) -> Event:
        """Blocking convenience: run one request, calling ``on_text`` with each delta; returns the
        final event with the whole text."""
        done, parts = threading.Event(), []
        final: list[Event] = []

        def emit(event: Event) -> None:
            if event.text:
                parts.append(event.text)
                if on_text:
                    on_text(event.text)
            if event.finish_reason or event.error:
                final.append(event)
                done.set()

        self.submit(prompt_ids, params, emit, session)
        done.wait()
        event = final[0]
        if event.error:
            raise RuntimeError(event.error)
        return Event("".join(parts), event.finish_reason, event.usage, token_ids=event.token_ids)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=30)

    # ------------------------------------------------------------------ the worker

    def _run(self) -> None:
        while True:
            arrived = []
            try:
                arrived.append(self._queue.get(block=not (self._prefilling or self._ready or self._batch)))
                # clients that send at the same moment arrive a few milliseconds apart: wait a
                # moment for them, so that prompts of one length are read as one batch
                deadline = time.monotonic() + self.batch_wait_s
                while (wait := deadline - time.monotonic()) > 0:
                    arrived.append(self._queue.get(timeout=wait))
            except queue.Empty:
                pass
            while True:
                try:
                    arrived.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if None in arrived:
                return
            with torch.no_grad():
                self._admit(arrived)
                if self._prefilling and (self._prefill_debt <= 0 or not self._ready):
                    start = time.monotonic()
                    for group in self._prefilling[:self.prefill_groups]:
                        self._advance(group)
                    self._prefill_debt += time.monotonic() - start
                start = time.monotonic()
                self._decode()
                if self._prefilling:  # decoding time pays for reading prompts, at prefill_share
                    self._prefill_debt -= (time.monotonic() - start) * self.prefill_share / (1 - self.prefill_share + 1e-9)
                else:
                    self._prefill_debt = 0.0

    def _admit(self, arrived: list[_Request]) -> None:
        by_length: dict[int, list[_Request]] = {}
        for r in arrived:
            if r.session is None:
                by_length.setdefault(len(r.prompt_ids), []).append(r)
            else:
                self._start([r])
        for same in by_length.values():
            for i in range(0, len(same), self.max_batch):
                self._start(same[i:i + self.max_batch])

    def _start(self, requests: list[_Request]) -> None:
        """A new group: its prompt is read a piece at a time (one encoder call or decoder pass a
        round, ``MemoryStream.extend_steps``), between the decoding steps of the running requests."""
        for r in requests:
            r.text = TextStream(self.tokenizer, r.params.stop)
            if r.params.seed is not None:
                r.generator = torch.Generator().manual_seed(r.params.seed)
        device = self.model.device
        session = self.sessions.take(requests[0].session) if requests[0].session is not None else None
        r = requests[0]
        if session is not None and len(r.prompt_ids) > session.fed and r.prompt_ids[:session.fed] == session.ids[:session.fed]:
            stream = session.stream  # the conversation so far is in memory: read the new tokens only
            r.cache_before = (stream.cache_stats.hits, stream.cache_stats.misses)
            steps = stream.extend_steps(torch.tensor([r.prompt_ids[session.fed:]], device=device))
            r.reused = session.fed
        else:
            stream = MemoryStream(self.model, self.prefill_chunk or "auto", self.memory_cache)
            steps = stream.prefill_steps(torch.tensor([q.prompt_ids for q in requests], device=device))
        self._prefilling.append(_Group(requests, stream, steps))

    def _advance(self, group: _Group) -> None:
        """One piece of a group's prompt; once it is read, each request decodes on its own stream."""
        if all(r.cancelled for r in group.requests):  # every client left while its prompt was read
            self._drop(group, "cancelled")
            return
        try:
            logits = next(group.steps)
            streams = group.stream.rows() if logits is not None else None
        except Exception as err:  # noqa: BLE001  (reported to the client; the server goes on)
            self._drop(group, "error", f"{type(err).__name__}: {err}")
            return
        if logits is None:
            return
        self._prefilling.remove(group)
        if self.metrics is not None:
            before, stats = group.requests[0].cache_before, group.stream.cache_stats
            self.metrics.cache_segments.labels("hit").inc(stats.hits - before[0])
            self.metrics.cache_segments.labels("miss").inc(stats.misses - before[1])
        for b, (r, stream) in enumerate(zip(group.requests, streams)):
            r.stream, r.logits = stream, logits[b:b + 1]
            self._ready.append(r)

    def _drop(self, group: _Group, outcome: str, error: str | None = None) -> None:
        """End every request of a group that stops before decoding (an error, or no one left)."""
        for q in group.requests:
            q.finished = outcome
            self._ended(q, outcome)
            if error is not None:
                _send(q, Event(error=error))
            if q.session is not None:
                self.sessions.put(q.session, None)
        self._prefilling.remove(group)

    def _decode(self) -> None:
        """One token for every decoding request: each samples from its logits, the finished leave,
        the waiting join (up to ``max_batch``), and one decoder pass over the batch gives each its
        next logits (``DecodeBatch``: the rows' memories and residuals may differ in length)."""
        members = {id(r.stream): r for r in self._ready}
        running = [members[id(s)] for s in self._batch.streams]
        waiting = [r for r in self._ready if r.stream not in self._batch]
        room = self.max_batch - len(running)
        for r in running + waiting[:max(room, 0)]:
            self._sample(r)
        for r in waiting[max(room, 0):]:
            if r.cancelled:  # its client left while it waited for a row: its stream is freed now
                r.finished = "cancelled"
                self._finish(r)
        going = []
        for r in running:
            if r.finished:
                self._batch.remove(r.stream)
                self._finish(r)
            else:
                going.append(r)
        for r in waiting[:max(room, 0)]:
            if not r.finished:
                try:
                    self._batch.add(r.stream)
                    going.append(r)
                    continue
                except Exception as err:  # noqa: BLE001  (this request fails; the others go on)
                    self._fail(r, err)
                    continue
            self._finish(r)
        if not going:
            return
        by_stream = {id(r.stream): r for r in going}
        order = [by_stream[id(s)] for s in self._batch.streams]
        if self.metrics is not None:
            self.metrics.batch_size.observe(len(order))
        try:
            logits = self._batch.step(torch.tensor([r.generated[-1] for r in order], device=self.model.device))
        except Exception as err:  # noqa: BLE001
            for r in order:
                self._fail(r, err)
            self._batch = DecodeBatch(self.model)  # the rows' caches went with the failed pass
            return
        for i, r in enumerate(order):
            r.logits = logits[i:i + 1]

    def _fail(self, r: _Request, err: Exception) -> None:
        """End a request whose prompt was read with an error (reported to its client; its session
        is dropped, as its stream may be half-updated)."""
        r.finished = "error"
        self._ready.remove(r)
        self._ended(r, "error")
        _send(r, Event(error=f"{type(err).__name__}: {err}"))
        if r.session is not None:
            self.sessions.put(r.session, None)

    def _sample(self, r: _Request) -> None:
        """The request's next token from its logits, streamed; marks it finished when it is done."""
        if r.cancelled:  # its client is gone: no more tokens for it
            r.finished = "cancelled"
            return
        p = r.params
        token = int(sample_next(r.logits, p.temperature > 0, max(p.temperature, 1e-5), 0, p.top_p, r.generator)[0])
        r.generated.append(token)
        self._observe_token(r)
        text = r.text.push(token) if token not in self.stop_token_ids else ""
        if token in self.stop_token_ids or r.text.stopped:
            r.finished = "stop"
        elif len(r.generated) >= p.max_tokens:
            r.finished = "length"
            text += r.text.flush()
        if text:
            _send(r, Event(text))

    def _observe_token(self, r: _Request) -> None:
        now = time.monotonic()
        if self.metrics is not None:
            if r.last_token_at is None:
                self.metrics.time_to_first_token.observe(now - r.arrived)
            else:
                self.metrics.inter_token_latency.observe(now - r.last_token_at)
            self.metrics.generated_tokens.inc()
        r.last_token_at = now

    def _ended(self, r: _Request, outcome: str) -> None:
        self._requests.pop(r.id, None)
        if self.metrics is not None:
            self.metrics.requests.labels(outcome).inc()

    def _finish(self, r: _Request) -> None:
        """A request that is done and out of the batch: its usage, its session kept."""
        self._ready.remove(r)
        self._ended(r, r.finished)
        stream, stats = r.stream, r.stream.cache_stats
        # rows of one prompt batch had one stream while reading it, and so share its counts
        usage = Usage(len(r.prompt_ids), len(r.generated), r.reused, stream.memory_tokens,
                      stats.hits - r.cache_before[0], stats.misses - r.cache_before[1])
        if r.session is not None:
            if r.generated:
                ids = r.prompt_ids + r.generated
                self.sessions.put(r.session, Session(stream, ids, len(ids) - 1, time.monotonic()))
            else:  # cancelled before its first token: the stream has read the whole prompt
                self.sessions.put(r.session, Session(stream, list(r.prompt_ids), len(r.prompt_ids), time.monotonic()))
        r.stream = r.logits = None
        _send(r, Event(finish_reason=r.finished, usage=usage, token_ids=list(r.generated)))
