"""The plain strategies: full BPTT (the reference) and TBPTT over the S most recent memories,
re-encoded with a graph for every decoder step."""

from __future__ import annotations

import torch

from uio_ds.algo.base import Strategy, TBPTTResult
from uio_ds.algo.objective import Objective
from uio_ds.algo.passes import count_terms, encode_all, grad_of, has_targets, read_kv
from uio_ds.model.positions import segment_targets, split_segments


class Full(Strategy):
    """Eq. 5 exactly: plain autograd through the whole document (every memory, every path)."""

    name = "full"

    def _run_document(self, model, doc, labels, scale, params):
        objective = self.objective
        out = model(doc, labels=labels, teacher=objective.teacher(model), lm_weight=objective.lm,
                    distill_weight=objective.distill, regularize_weight=objective.regularize)
        grads = grad_of(out.loss_sum * scale, params)  # all None when no memory was read
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
            values = encode_all(model, segs[: max(0, len(segs) - 1 - S)], batch, chunk=8)
        buffers: list = [None] * len(params)
        stats = {"encoder_graph_forwards": 0, "encoder_backward_passes": 0, "max_live_graphs": 0,
                 "segments": len(bounds)}
        teacher = self.objective.teacher(model)
        count_terms(stats, None)
        recent = model.recent_kv()
        sums, counts = [], []
        for t, (a, b) in enumerate(bounds):
            targets = segment_targets(labels, a, b)
            taught = Objective.read(teacher, segs[t])  # the teacher reads every segment, scored or not
            if not has_targets(targets):
                if recent is not None:  # the raw window needs this segment as the decoder reads it
                    with torch.no_grad():
                        fresh = encode_all(model, segs[len(values):t], batch) if t > len(values) else []
                        model.decode(segs[t], read_kv(model, values[:t] + fresh, batch), recent=recent)
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
            out = self.objective.decode(model, segs[t], read_kv(model, memory, batch), targets, taught, recent)
            self._add(buffers, grad_of(out.loss_sum * scale, params))
            count_terms(stats, out)
            sums.append(out.loss_sum.item())
            counts.append(out.num_tokens)
        return TBPTTResult(buffers, sum(sums), sum(counts), sums, counts, stats)
