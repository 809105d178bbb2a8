"""Incremental and unbiased incremental TBPTT: each memory a decoder reads is a detached leaf that
accumulates its gradient, and its encoder graph is back-propagated once, when it leaves the
window (a recent window of S, or a reservoir sample of S with the factor max(1, (t-1)/S))."""

from __future__ import annotations

import random

import torch

from uio_ds.algo.base import Strategy, TBPTTResult
from uio_ds.algo.lockstep import ENCODE, FLUSH, decode_kind
from uio_ds.algo.objective import Objective
from uio_ds.algo.passes import (
    check_recompute,
    count_terms,
    encode_all,
    grad_of,
    graph_context,
    has_targets,
    read_kv,
)
from uio_ds.config import GRAPH_MODES
from uio_ds.model.positions import segment_targets, split_segments


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


class _RowWindows:
    """The windows of a batch's rows, one ``_Window.plan`` each: which memories enter any row's
    window, the decoder step at which each leaves the last window that holds it, and the factor
    of each row's contributions."""

    def __init__(self, plans: list, n_mem: int):
        self.plans = plans
        self.factors = plans[0][2]
        self.enters = [any(p[0][s] for p in plans) for s in range(n_mem)]
        self.evictions: dict[int, list[int]] = {}
        """Decoder step -> the memories whose encoder backward runs before it."""
        for s in range(n_mem):
            times = [p[1][s] for p in plans if p[0][s]]
            if times and None not in times:
                self.evictions.setdefault(max(times), []).append(s)

    def weigh(self, grad: torch.Tensor, s: int, t: int) -> torch.Tensor:
        """Decoder step t's gradient on memory s, each row by its factor (0: not in that row's window)."""
        rows = [self.factors[t] if p[0][s] and (p[1][s] is None or t < p[1][s]) else 0.0 for p in self.plans]
        if len(set(rows)) > 1:
            return grad * grad.new_tensor(rows).view(-1, *([1] * (grad.ndim - 1)))
        return grad * rows[0] if rows[0] != 1.0 else grad


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

    def _values_without_graph(self, model, segs: list, enters: list[bool], batch: int) -> list:
        """Memory values of the memories that never take gradient, computed without a graph, all
        at once; in 'recompute' mode all of them (their graph is rebuilt at backward). None for
        the others, whose values come with their graphs."""
        parallel = [s for s in range(len(enters)) if not enters[s] or self.recompute]
        values: list = [None] * len(enters)
        with torch.no_grad():
            encoded = encode_all(model, [segs[s] for s in parallel], batch, self.encode_batch_size,
                                 enter=lambda: self._enter(model, ENCODE))
            for s, v in zip(parallel, encoded):
                values[s] = v
        return values

    def _run_document(self, model, doc, labels, scale, params):
        check_recompute(model, self.graph_mode)
        bounds = split_segments(doc.shape[1], model.segment_length)
        batch, n_mem = doc.shape[0], len(bounds) - 1
        segs = [doc[:, a:b] for a, b in bounds]
        # One window per document (row), drawn in row order: a stacked batch gets exactly the
        # gradient its documents would get one by one. A memory's encoder graph is shared by the
        # rows and is back-propagated once, when the last row that holds it lets it go.
        rows = _RowWindows([self._window().plan(n_mem) for _ in range(batch)], n_mem)
        enters, evictions = rows.enters, rows.evictions
        values = self._values_without_graph(model, segs, enters, batch)
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
        count_terms(stats, None)
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
                        with graph_context(self.graph_mode, self.offload_device):
                            graphs[s] = model.encode(segs[s])
                        stats["encoder_graph_forwards"] += 1
                        values[s] = graphs[s].detach()
                    leaves[s] = values[s].detach().requires_grad_(True)
                stats["max_live_graphs"] = max(stats["max_live_graphs"], len(graphs))
            targets = segment_targets(labels, a, b)
            taught = Objective.read(teacher, segs[t])  # the teacher reads every segment, scored or not
            if not has_targets(targets):
                if recent is not None:  # the raw window needs this segment as the decoder reads it
                    with torch.no_grad():
                        model.decode(segs[t], read_kv(model, values[:t], batch), recent=recent)
                sums.append(0.0)
                counts.append(0)
                continue
            window = sorted(leaves)
            memory = [leaves[s] if s in leaves else values[s] for s in range(t)]
            read = model.readable_memories(t)
            self._enter(model, decode_kind(read > 0, any(s in leaves for s in range(t - read, t))))
            # 'offload' and 'recompute_offload' move the decoder's saved activations to the host
            with graph_context(self.graph_mode, self.offload_device):
                out = self.objective.decode(model, segs[t], read_kv(model, memory, batch), targets, taught, recent)
            count_terms(stats, out)
            inputs = list(params) + [leaves[s] for s in window]
            grads = grad_of(out.loss_sum * scale, inputs)
            self._add(buffers, grads[: len(params)])
            for s, g in zip(window, grads[len(params):]):
                if g is not None:
                    g = rows.weigh(g, s, t)
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


def _as_rng_state(state):
    # random.Random state is a nested tuple; it may come back from a checkpoint as lists
    if isinstance(state, list):
        return tuple(_as_rng_state(s) for s in state)
    return state
