"""The strategy base class: argument checks, documents run batch by batch, gradient buffers,
per-source objectives and the ZeRO-3 lockstep; and the result every strategy returns."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Sequence

import torch

from uio_ds.algo.lockstep import Lockstep
from uio_ds.algo.objective import LM, Objective
from uio_ds.algo.passes import as_batches, batch_targets
from uio_ds.algo.protocol import MemoryModel


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
            config = getattr(model, "config", None)
            if getattr(config, "recent_tokens", 0) or getattr(config, "sink_tokens", 0):
                raise ValueError("a raw recent window or sinks (uio.recent_tokens / sink_tokens > 0) do not run under "
                                 "ZeRO-3 yet: the passes that fill them are not announced to the lockstep; use ZeRO-1/2")
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
