"""Gradient strategies for memory models: full BPTT, TBPTT, incremental and unbiased incremental TBPTT.

Pure PyTorch (no DeepSpeed): a strategy reads documents, runs the decoder losses and the
encoder passes of a memory model, and returns the gradient of every trainable parameter
in buffers of its own (``torch.autograd.grad``, never ``.grad``), plus loss statistics.
An engine then hands the buffers to its optimizer however it needs to.

The model is a recurrent net over segments: J_t, the loss of segment t, depends on the
memories m_1..m_{t-1} of all earlier segments, and m_s depends on segment s only
(Eq. 5 of the paper). The strategies differ in which d J_t / d m_s reach the encoder:

* ``full``: all of them (plain autograd through the whole document; the reference).
* ``tbptt(S)``: the S most recent memories, computed the plain way: for every t the window
  is re-encoded with a graph and back-propagated through: O(T*S) encoder backward passes.
* ``incremental(S)``: the same gradient; each memory the decoders read is a detached leaf
  copy that accumulates d J_t / d m_s, and its encoder graph is back-propagated once, when
  it leaves the window: O(T) encoder backward passes.
* ``unbiased(S)``: the window is a reservoir sample of size S over all past memories (each
  kept with probability min(1, S/(t-1))); each new contribution is multiplied by
  max(1, (t-1)/S), so the expected gradient is the full one. Evicted memories get their
  encoder backward at eviction, the rest at the end.

Everything outside the encoder path is exact in every strategy: the transfer head sees
every memory (detached ones included) with its own gradient, as does the decoder loss.
"""

from __future__ import annotations

import contextlib
import random
from dataclasses import dataclass, field
from typing import Protocol, Sequence

import torch

from uio_ds.algo.lockstep import ENCODE, FLUSH, Lockstep, decode_kind
from uio_ds.algo.objective import LM, Objective
from uio_ds.config import ALGORITHMS, GRAPH_MODES
from uio_ds.formats import IGNORE_INDEX
from uio_ds.model.memory_model import segment_targets, split_segments
from uio_ds.offload import offload_saved_tensors


class MemoryModel(Protocol):
    """What the strategies need of a model (``UIOMemoryModel`` provides it)."""

    segment_length: int

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor: ...
    def memory_kv(self, memory: torch.Tensor): ...
    def readable_memories(self, num_memories: int) -> int: ...
    def decode(self, input_ids: torch.Tensor, memory=None, targets=None): ...
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...


@dataclass
class TBPTTResult:
    """Gradients (aligned with ``model.trainable_parameters()``; ``None`` = no gradient) and statistics."""

    grads: list[torch.Tensor | None]
    loss_sum: float
    num_tokens: int
    segment_loss_sums: list[float] = field(default_factory=list)
    """Summed loss per segment position (0 = first segment of a document), over all documents."""
    segment_num_tokens: list[int] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)

    @property
    def loss(self) -> float:
        return self.loss_sum / max(self.num_tokens, 1)

    def merge(self, other: "TBPTTResult") -> "TBPTTResult":
        """Sum of two results: gradients add, per-segment-position losses add position by position,
        statistics add (``max_*`` take the max)."""
        grads = [a if b is None else b if a is None else a + b for a, b in zip(self.grads, other.grads)]
        stats = dict(self.stats)
        for k, v in other.stats.items():
            stats[k] = max(stats.get(k, 0), v) if k.startswith("max_") else stats.get(k, 0) + v
        return TBPTTResult(grads, self.loss_sum + other.loss_sum, self.num_tokens + other.num_tokens,
                           _add_lists(self.segment_loss_sums, other.segment_loss_sums),
                           _add_lists(self.segment_num_tokens, other.segment_num_tokens), stats)


def _add_lists(a: list, b: list) -> list:
    n = max(len(a), len(b))
    return [(a[i] if i < len(a) else 0) + (b[i] if i < len(b) else 0) for i in range(n)]


def as_batches(documents) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Documents as (input_ids, labels) batches of shape (B, T).

    ``documents``: a (B, T) tensor, or a list whose items are (T,) or (B, T) token tensors or
    dicts with ``input_ids`` and optional ``labels`` (the Hugging Face convention: same shape,
    ``IGNORE_INDEX`` where a token is read but not predicted; the loss targets are
    ``labels[:, 1:]``). Without labels every token but the first is predicted. 1-D documents of
    equal length are stacked into one batch (placed where the first of them was): the summed
    gradient is the same and one batched pass is faster than several single ones.
    """
    if isinstance(documents, (torch.Tensor, dict)):
        documents = [documents]
    if not isinstance(documents, (list, tuple)) or not documents:
        raise ValueError("documents must be a (batch, tokens) tensor or a non-empty list of token tensors")
    out: list[tuple[torch.Tensor, torch.Tensor]] = []
    by_length: dict[int, int] = {}  # length of stacked 1-D documents -> their batch in ``out``
    for i, d in enumerate(documents):
        labels = None
        if isinstance(d, dict):
            if "input_ids" not in d:
                raise ValueError(f"document {i} is a dict without 'input_ids'")
            d, labels = d["input_ids"], d.get("labels")
        if not isinstance(d, torch.Tensor) or d.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"document {i} is not a tensor of token ids")
        one_d = d.ndim == 1
        d = d.unsqueeze(0) if one_d else d
        if d.ndim != 2:
            raise ValueError(
                f"document {i} has shape {tuple(d.shape)}: give (tokens,) or (batch, tokens); documents of "
                "different lengths go in a list, not one padded batch"
            )
        if d.shape[1] < 2:
            raise ValueError(f"document {i} has {d.shape[1]} token(s): a document needs at least 2 to score one")
        if labels is None:
            labels = d
        else:
            labels = labels.unsqueeze(0) if labels.ndim == 1 else labels
            if labels.shape != d.shape or labels.dtype not in (torch.int32, torch.int64):
                raise ValueError(
                    f"document {i}: labels of shape {tuple(labels.shape)} and dtype {labels.dtype} do not match "
                    f"input_ids {tuple(d.shape)}: give integer labels of the same shape"
                )
        if one_d and d.shape[1] in by_length:
            j = by_length[d.shape[1]]
            out[j] = (torch.cat([out[j][0], d]), torch.cat([out[j][1], labels]))
        else:
            if one_d:
                by_length[d.shape[1]] = len(out)
            out.append((d, labels))
    return out


def count_targets(documents) -> int:
    """Scored tokens of ``documents`` (any form ``as_batches`` takes): every token but the first
    of each row whose label is not ``IGNORE_INDEX``."""
    return batch_targets(as_batches(documents))


def batch_targets(batches: list[tuple[torch.Tensor, torch.Tensor]]) -> int:
    """Scored tokens of ``as_batches`` output."""
    return sum(_scored(labels) for _, labels in batches)


def _scored(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())


class Strategy:
    """Base class: argument checks, multi-document batches, gradient buffers."""

    name = "strategy"

    def __init__(self, window: int | None = None, objective: Objective | None = None):
        if window is not None and (not isinstance(window, int) or isinstance(window, bool) or window < 1):
            raise ValueError(f"window S={window!r}: must be an integer >= 1")
        self.window = window
        self.objective = objective or LM
        self._lockstep: Lockstep | None = None  # set for the duration of run_batches (ZeRO-3)

    def __repr__(self) -> str:
        return f"{self.name}({self.window})" if self.window is not None else self.name

    @contextlib.contextmanager
    def using(self, objective: Objective):
        """Run with ``objective`` inside the block (a source with objective weights of its own)."""
        saved, self.objective = self.objective, objective
        try:
            yield self
        finally:
            self.objective = saved

    # -- public entry points ------------------------------------------------------------

    def run(self, model: MemoryModel, documents, loss_scale: float | None = None,
            lockstep: Lockstep | None = None) -> TBPTTResult:
        """Gradient of ``loss_scale * (summed token loss)`` over ``documents``.

        ``documents``: a (B, T) tensor of equal-length documents, or a list of such tensors, of
        1-D token tensors or of dicts with ``input_ids`` and ``labels`` (see ``as_batches``:
        1-D documents of equal length run as one batch, the batches one after another).
        ``loss_scale`` defaults to 1 / (number of scored tokens): the token-weighted mean.
        ``lockstep``: see ``run_batches``.
        """
        docs = as_batches(documents)
        if loss_scale is None:
            targets = batch_targets(docs)
            if targets == 0:
                raise ValueError("the documents have no scored token (every label is IGNORE_INDEX)")
            loss_scale = 1.0 / targets
        return self.run_batches(model, docs, loss_scale, lockstep)

    def run_batches(self, model: MemoryModel, batches: list[tuple[torch.Tensor, torch.Tensor]],
                    loss_scale: float, lockstep: Lockstep | None = None) -> TBPTTResult:
        """``run`` on documents already grouped by ``as_batches``: (input_ids, labels) pairs.

        ``lockstep`` (ZeRO-3): every base-model pass is announced to it, and the call returns
        only when every rank has run all of its passes (see ``uio_ds.algo.lockstep``)."""
        scale = float(loss_scale)
        params = model.trainable_parameters()
        if lockstep is not None:
            self._check_lockstep()
            if self.objective.uses_teacher:
                raise ValueError("distillation (objective.distill > 0) does not run under ZeRO-3 yet: its teacher "
                                 "passes are not announced to the lockstep; use ZeRO-1/2 or objective.distill=0")
            if getattr(getattr(model, "config", None), "recent_tokens", 0):
                raise ValueError("a raw recent window (uio.recent_tokens > 0) does not run under ZeRO-3 yet: the "
                                 "passes that fill it are not announced to the lockstep; use ZeRO-1/2")
            padded_before = lockstep.padding_passes
        self._lockstep = lockstep
        result = None
        try:
            for doc, labels in batches:
                part = self._run_document(model, doc, labels, scale, params)
                result = part if result is None else result.merge(part)
            if lockstep is not None:
                lockstep.finish(model)
                result.stats["padding_passes"] = lockstep.padding_passes - padded_before
        finally:
            self._lockstep = None
        return result

    def _check_lockstep(self) -> None:
        raise ValueError(f"{self.name} cannot keep ranks in lockstep (ZeRO-3): use incremental or unbiased "
                         "with graph_mode 'recompute'")

    def _enter(self, model, kind: int) -> None:
        if self._lockstep is not None:
            self._lockstep.enter(model, kind)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None

    # -- to implement ---------------------------------------------------------------------

    def _run_document(self, model, doc: torch.Tensor, labels: torch.Tensor, scale: float, params) -> TBPTTResult:
        raise NotImplementedError

    # -- helpers --------------------------------------------------------------------------

    @staticmethod
    def _add(buffers: list, grads: Sequence[torch.Tensor | None], offset: int = 0) -> None:
        for i, g in enumerate(grads):
            if g is not None:
                j = offset + i
                buffers[j] = g.detach() if buffers[j] is None else buffers[j] + g.detach()


class Full(Strategy):
    """Eq. 5 exactly: plain autograd through the whole document (every memory, every path)."""

    name = "full"

    def _run_document(self, model, doc, labels, scale, params):
        objective = self.objective
        out = model(doc, labels=labels, teacher=objective.teacher(model), lm_weight=objective.lm,
                    distill_weight=objective.distill, regularize_weight=objective.regularize)
        grads = _grad(out.loss_sum * scale, params)  # all None when no memory was read
        segments = len(split_segments(doc.shape[1], model.segment_length))
        return TBPTTResult(
            list(g.detach() if g is not None else None for g in grads), out.loss_sum.item(), out.num_tokens,
            [s.item() for s in out.segment_loss_sums], list(out.segment_num_tokens),
            {"encoder_graph_forwards": segments - 1, "encoder_backward_passes": segments - 1,
             "max_live_graphs": segments - 1, "segments": segments, "lm_loss_sum": out.lm_loss_sum,
             "distill_sum": out.distill_sum},
        )


class TBPTT(Strategy):
    """TBPTT(S) computed the plain way: every decoder step re-encodes its window with a graph."""

    name = "tbptt"

    def __init__(self, window: int, objective: Objective | None = None):
        super().__init__(window, objective)

    def _run_document(self, model, doc, labels, scale, params):
        l, S = model.segment_length, self.window
        bounds = split_segments(doc.shape[1], l)
        batch = doc.shape[0]
        segs = [doc[:, a:b] for a, b in bounds]
        with torch.no_grad():
            # values of the memories that some later step reads outside its window (s < T-1-S)
            values = _encode_all(model, segs[: max(0, len(segs) - 1 - S)], batch, chunk=8)
        buffers: list = [None] * len(params)
        stats = {"encoder_graph_forwards": 0, "encoder_backward_passes": 0, "max_live_graphs": 0,
                 "segments": len(bounds)}
        teacher = self.objective.teacher(model)
        _count_terms(stats, None)
        recent = model.recent_kv()
        sums, counts = [], []
        for t, (a, b) in enumerate(bounds):
            targets = segment_targets(labels, a, b)
            taught = Objective.read(teacher, segs[t])  # the teacher reads every segment, scored or not
            if not _has_targets(targets):
                if recent is not None:  # the raw window needs this segment as the decoder reads it
                    with torch.no_grad():
                        fresh = _encode_all(model, segs[len(values):t], batch) if t > len(values) else []
                        model.decode(segs[t], _kv(model, values[:t] + fresh, batch), recent=recent)
                sums.append(0.0)
                counts.append(0)
                continue
            first = max(0, t - S)
            if t > first:
                fresh = model.encode(torch.cat(segs[first:t], dim=0))  # one graph over the window
                fresh = list(fresh.split(batch, dim=0))
                stats["encoder_graph_forwards"] += t - first
                stats["encoder_backward_passes"] += t - first
                stats["max_live_graphs"] = max(stats["max_live_graphs"], t - first)
            else:
                fresh = []
            memory = values[:first] + fresh
            out = self.objective.decode(model, segs[t], _kv(model, memory, batch), targets, taught, recent)
            self._add(buffers, _grad(out.loss_sum * scale, params))
            _count_terms(stats, out)
            sums.append(out.loss_sum.item())
            counts.append(out.num_tokens)
        return TBPTTResult(buffers, sum(sums), sum(counts), sums, counts, stats)


class _Window:
    """Which memories receive gradient from each decoder step, decided before any compute.

    ``plan(n)`` for memories 0..n-1 returns per memory whether it ever enters the window,
    the decoder step at whose start it is evicted (None: stays to the end), and per
    decoder step t the factor applied to new contributions.
    """

    def plan(self, num_memories: int) -> tuple[list[bool], list[int | None], list[float]]:
        raise NotImplementedError


class _RecentWindow(_Window):
    def __init__(self, size: int | None):
        self.size = size

    def plan(self, n):
        if self.size is None:
            return [True] * n, [None] * n, [1.0] * (n + 1)
        # memory s is read with gradient by decoder steps s+1..s+S; it leaves at step s+S+1
        evict = [s + self.size + 1 if s + self.size + 1 <= n else None for s in range(n)]
        return [True] * n, evict, [1.0] * (n + 1)


class _Reservoir(_Window):
    """Reservoir sampling (Vitter's algorithm R) of size S over the arriving memories."""

    def __init__(self, size: int, compensate: bool, rng: random.Random):
        self.size, self.compensate, self.rng = size, compensate, rng

    def plan(self, n):
        enters, evict, members = [False] * n, [None] * n, []
        for s in range(n):  # memory s arrives before decoder step s+1; s+1 memories seen
            seen = s + 1
            if len(members) < self.size:
                enters[s] = True
                members.append(s)
            elif self.rng.random() < self.size / seen:
                out = members.pop(self.rng.randrange(len(members)))
                evict[out] = s + 1
                enters[s] = True
                members.append(s)
        # at decoder step t, t memories have been seen; each is in the window w.p. min(1, S/t)
        factors = [max(1.0, t / self.size) if self.compensate else 1.0 for t in range(n + 1)]
        return enters, evict, factors


class _LeafWindowStrategy(Strategy):
    """Incremental machinery shared by ``incremental`` and ``unbiased``: decoders read detached
    leaf copies of the memories; the gradient each leaf accumulates is back-propagated through
    its encoder once, when it leaves the window or at the end."""

    def __init__(self, window: int | None, graph_mode: str = "keep", encode_batch_size: int | None = 8,
                 offload_device: str = "cpu", objective: Objective | None = None):
        """``offload_device``: where graph_mode 'offload' puts saved tensors (host memory)."""
        super().__init__(window, objective)
        if graph_mode not in GRAPH_MODES:
            raise ValueError(f"graph_mode={graph_mode!r}: choose one of {list(GRAPH_MODES)}")
        if encode_batch_size is not None and encode_batch_size < 1:
            raise ValueError(f"encode_batch_size={encode_batch_size}: must be >= 1 (or None for all at once)")
        self.graph_mode = graph_mode
        self.recompute = graph_mode in ("recompute", "recompute_offload")
        self.encode_batch_size = encode_batch_size
        self.offload_device = offload_device

    def _window(self) -> _Window:
        raise NotImplementedError

    def _check_lockstep(self) -> None:
        # a kept (or offloaded) encoder graph would outlive the pass that built it, so its
        # backward could not be matched by a padding pass on another rank
        if not self.recompute:
            raise ValueError(f"ZeRO-3 runs {self.name} with graph_mode 'recompute' or 'recompute_offload' (encoder "
                             f"graphs rebuilt at backward, so every pass is self-contained), not {self.graph_mode!r}")

    def _run_document(self, model, doc, labels, scale, params):
        _check_recompute(model, self.graph_mode)
        bounds = split_segments(doc.shape[1], model.segment_length)
        batch, n_mem = doc.shape[0], len(bounds) - 1
        segs = [doc[:, a:b] for a, b in bounds]
        # One window per document (row), drawn in row order: a stacked batch gets exactly the
        # gradient its documents would get one by one. A memory's encoder graph is shared by the
        # rows and is back-propagated once, when the last row that holds it lets it go.
        plans = [self._window().plan(n_mem) for _ in range(batch)]
        factors = plans[0][2]
        enters = [any(p[0][s] for p in plans) for s in range(n_mem)]
        evict_at = []
        for s in range(n_mem):
            times = [p[1][s] for p in plans if p[0][s]]
            evict_at.append(None if not times or None in times else max(times))

        def row_factors(s: int, t: int) -> list[float]:
            """Per row, the factor of decoder step t's contribution to memory s (0: not in that row's window)."""
            return [factors[t] if p[0][s] and (p[1][s] is None or t < p[1][s]) else 0.0 for p in plans]

        evictions: dict[int, list[int]] = {}
        for s, t in enumerate(evict_at):
            if t is not None:
                evictions.setdefault(t, []).append(s)

        # Memory values. Memories that never take gradient are computed without a graph, all
        # at once; in 'recompute' mode so are the others (their graph is rebuilt at backward).
        parallel = [s for s in range(n_mem) if not enters[s] or self.recompute]
        values: list = [None] * n_mem
        with torch.no_grad():
            encoded = _encode_all(model, [segs[s] for s in parallel], batch, self.encode_batch_size,
                                  enter=lambda: self._enter(model, ENCODE))
            for s, v in zip(parallel, encoded):
                values[s] = v
        graphs: dict[int, torch.Tensor] = {}   # memory -> encoder output with its graph alive
        leaves: dict[int, torch.Tensor] = {}   # memory -> detached leaf the decoders read
        accumulated: dict[int, torch.Tensor] = {}
        enc_params = params  # encoder outputs depend on encoder LoRA and <mem> embeddings only
        buffers: list = [None] * len(params)
        stats = {"encoder_graph_forwards": 0, "encoder_backward_passes": 0, "max_live_graphs": 0,
                 "encoder_recomputes": 0, "segments": len(bounds), "evictions": 0}

        def flush(s: int) -> None:
            """Back-propagate the gradient accumulated on memory s through its encoder, once."""
            leaves.pop(s)
            grad = accumulated.pop(s, None)
            out = graphs.pop(s, None)
            if grad is None:  # entered but no decoder step used it with gradient: nothing to do
                return
            if out is None:  # recompute mode: rebuild this segment's encoder graph now
                self._enter(model, FLUSH)
                out = model.encode(segs[s])
                stats["encoder_recomputes"] += 1
            grads = torch.autograd.grad(out, enc_params, grad_outputs=grad, allow_unused=True)
            self._add(buffers, grads)
            stats["encoder_backward_passes"] += 1

        teacher = self.objective.teacher(model)
        _count_terms(stats, None)
        recent = model.recent_kv()
        sums, counts = [], []
        for t, (a, b) in enumerate(bounds):
            if t > 0:
                s = t - 1  # memory s arrives before decoder step t
                for old in evictions.get(t, []):
                    flush(old)
                    stats["evictions"] += 1
                if enters[s]:
                    if not self.recompute:
                        with _graph_context(self.graph_mode, self.offload_device):
                            graphs[s] = model.encode(segs[s])
                        stats["encoder_graph_forwards"] += 1
                        values[s] = graphs[s].detach()
                    leaves[s] = values[s].detach().requires_grad_(True)
                stats["max_live_graphs"] = max(stats["max_live_graphs"], len(graphs))
            targets = segment_targets(labels, a, b)
            taught = Objective.read(teacher, segs[t])  # the teacher reads every segment, scored or not
            if not _has_targets(targets):
                if recent is not None:  # the raw window needs this segment as the decoder reads it
                    with torch.no_grad():
                        model.decode(segs[t], _kv(model, values[:t], batch), recent=recent)
                sums.append(0.0)
                counts.append(0)
                continue
            window = sorted(leaves)
            memory = [leaves[s] if s in leaves else values[s] for s in range(t)]
            read = model.readable_memories(t)
            self._enter(model, decode_kind(read > 0, any(s in leaves for s in range(t - read, t))))
            # 'offload' and 'recompute_offload' move the decoder's saved activations to the host
            with _graph_context(self.graph_mode, self.offload_device):
                out = self.objective.decode(model, segs[t], _kv(model, memory, batch), targets, taught, recent)
            _count_terms(stats, out)
            inputs = list(params) + [leaves[s] for s in window]
            grads = _grad(out.loss_sum * scale, inputs)
            self._add(buffers, grads[: len(params)])
            for s, g in zip(window, grads[len(params):]):
                if g is not None:
                    rows = row_factors(s, t)
                    if len(set(rows)) > 1:
                        g = g * g.new_tensor(rows).view(-1, *([1] * (g.ndim - 1)))
                    elif rows[0] != 1.0:
                        g = g * rows[0]
                    accumulated[s] = g if s not in accumulated else accumulated[s] + g
            sums.append(out.loss_sum.item())
            counts.append(out.num_tokens)
        for s in sorted(leaves):
            flush(s)
        return TBPTTResult(buffers, sum(sums), sum(counts), sums, counts, stats)


class Incremental(_LeafWindowStrategy):
    """Incremental TBPTT(S): the gradient of ``tbptt(S)`` with O(T) encoder backward passes.
    ``window=None`` gives the full gradient the incremental way."""

    name = "incremental"

    def _window(self):
        return _RecentWindow(self.window)


class Unbiased(_LeafWindowStrategy):
    """Unbiased incremental TBPTT(S): reservoir window, compensation factor max(1, (t-1)/S)."""

    name = "unbiased"

    def __init__(self, window: int, seed: int = 0, compensate: bool = True, graph_mode: str = "keep",
                 encode_batch_size: int | None = 8, offload_device: str = "cpu", objective: Objective | None = None):
        if window is None:
            raise ValueError("unbiased needs a reservoir size S >= 1")
        super().__init__(window, graph_mode, encode_batch_size, offload_device, objective)
        self.compensate = compensate
        self.rng = random.Random(seed)

    def _window(self):
        return _Reservoir(self.window, self.compensate, self.rng)

    def state_dict(self) -> dict:
        return {"rng": self.rng.getstate()}

    def load_state_dict(self, state: dict) -> None:
        self.rng.setstate(_as_rng_state(state["rng"]))


def build_strategy(name: str, window: int | None = None, **kwargs) -> Strategy:
    """``full``, ``tbptt``, ``incremental`` or ``unbiased`` with window S."""
    if name == "full":
        return Full(objective=kwargs.get("objective"))
    if name == "tbptt":
        if window is None:
            raise ValueError("tbptt needs a window S >= 1")
        return TBPTT(window, objective=kwargs.get("objective"))
    if name == "incremental":
        return Incremental(window, **kwargs)
    if name == "unbiased":
        return Unbiased(window, **kwargs)
    raise ValueError(f"unknown strategy {name!r}: choose one of {list(ALGORITHMS)}")


# ---------------------------------------------------------------------------- helpers


def _encode_all(model, segments: list[torch.Tensor], batch: int, chunk: int | None = None,
                enter=lambda: None) -> list[torch.Tensor]:
    """Memories of several (B, l) segments in batched encoder calls; one (B, L, m, H) per segment.
    ``enter()`` is called before each call (the lockstep's announcement)."""
    if not segments:
        return []
    flat = torch.cat(segments, dim=0)
    step = (chunk or len(segments)) * batch
    parts = []
    for i in range(0, flat.shape[0], step):
        enter()
        parts.append(model.encode(flat[i : i + step]))
    return list(torch.cat(parts, dim=0).split(batch, dim=0))


def _kv(model, memory: list[torch.Tensor], batch: int):
    """Transfer head over the memories that the decoder of segment ``len(memory)`` reads (those of
    the earlier segments, less the ones its raw window covers or the position range drops), side
    by side along the tokens."""
    first, stop = model.read_memories(len(memory))
    memory = memory[first:stop]
    if not memory:
        return None
    # rows ordered (document, segment), which per_text turns into one row per document
    return model.memory_kv(torch.stack(memory, dim=1).flatten(0, 1)).per_text(batch)


def _grad(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple:
    """d loss / d inputs, ``None`` where an input is unused; all ``None`` when nothing trainable
    produced the loss (the first segment's decoder pass reads no memory)."""
    if not loss.requires_grad:
        return (None,) * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def _count_terms(stats: dict, out) -> None:
    """The two terms of the loss apart (``loss_sum`` is the objective, their weighted sum): the
    next-token loss of every decoder step, and the KL of those a teacher reached. The keys are
    there from a document's start whatever the objective, so every rank reduces the same
    statistics, however its documents' objectives differ."""
    stats["lm_loss_sum"] = stats.get("lm_loss_sum", 0.0) + (out.lm_loss_sum.item() if out is not None else 0.0)
    stats["distill_sum"] = stats.get("distill_sum", 0.0) + (
        out.distill_sum.item() if out is not None and out.distill_sum is not None else 0.0)


def _has_targets(targets: torch.Tensor) -> bool:
    """Whether a decoder step scores any token. One that scores none (a prompt's segments, the
    first copy of an auto-encoding document) adds nothing to loss or gradient: it is not run.
    On the memory planner's fake tensors every step counts as scoring."""
    return bool((targets != IGNORE_INDEX).any().item())


def _graph_context(mode: str, device: str):
    return offload_saved_tensors(device) if mode in ("offload", "recompute_offload") else contextlib.nullcontext()


def _check_recompute(model, mode: str) -> None:
    if mode not in ("recompute", "recompute_offload"):
        return
    config = getattr(model, "config", None)
    lora = getattr(config, "encoder_lora", None)
    if lora is not None and lora.dropout > 0:
        raise ValueError(
            "graph_mode='recompute' rebuilds encoder graphs at backward time, which would draw new "
            f"dropout masks (encoder_lora.dropout={lora.dropout}); set the dropout to 0 or use graph_mode='keep'"
        )


def _as_rng_state(state):
    # random.Random state is a nested tuple; it may come back from a checkpoint as lists
    if isinstance(state, list):
        return tuple(_as_rng_state(s) for s in state)
    return state


__all__ = ["Full", "TBPTT", "Incremental", "Unbiased", "TBPTTResult", "as_batches", "batch_targets", "build_strategy",
           "count_targets", "IGNORE_INDEX", "GRAPH_MODES"]
