"""Training documents from token ids: pieces cut to the length limits, the labels that score
their spans, auto-encoding copies, and a source's objective carried with each document."""

from __future__ import annotations

import numpy as np
import torch

from uio_ds.config import DataConfig, SourceConfig
from uio_ds.formats import IGNORE_INDEX


def document_pieces(lengths, min_tokens: int, max_tokens: int | None, whole: bool = False,
                    truncate: bool = False) -> tuple[np.ndarray, int]:
    """(document, start, stop) pieces as an (n, 3) integer array: long documents cut at
    ``max_tokens`` (or, with ``truncate``, only their first piece kept), short pieces dropped. With
    ``whole`` a document is never cut: one longer than ``max_tokens`` is dropped. Returns the
    pieces and the number of documents, tails or pieces skipped."""
    lengths = np.asarray(lengths, dtype=np.int64)
    docs = np.arange(len(lengths))
    if whole or truncate:
        if whole:
            ok = (lengths >= min_tokens) & (lengths <= (max_tokens or np.iinfo(np.int64).max))
            stops = lengths
        else:
            stops = np.minimum(lengths, max_tokens or np.iinfo(np.int64).max)
            ok = stops >= min_tokens
        pieces = np.stack([docs[ok], np.zeros(int(ok.sum()), np.int64), stops[ok]], axis=1)
        return pieces.reshape(-1, 3), int((~ok).sum())
    step = np.where(lengths > 0, max_tokens or np.maximum(lengths, 1), 1)
    counts = -(-lengths // step)  # pieces per document (ceil)
    doc = np.repeat(docs, counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    start = (np.arange(len(doc)) - np.repeat(first, counts)) * np.repeat(step, counts)
    stop = np.minimum(start + np.repeat(step, counts), np.repeat(lengths, counts))
    ok = stop - start >= min_tokens
    skipped = int((~ok).sum()) + int((lengths == 0).sum())
    return np.stack([doc[ok], start[ok], stop[ok]], axis=1).reshape(-1, 3), skipped


def scored_document(ids: torch.Tensor, spans) -> dict:
    """A document for the strategies whose tokens outside ``spans`` (flat [start, stop, ...]) are
    read but not scored (labels ``IGNORE_INDEX``)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    for start, stop in zip(spans[0::2], spans[1::2]):
        labels[..., start:stop] = ids[..., start:stop]
    return {"input_ids": ids, "labels": labels}


def autoencode_document(segment: torch.Tensor) -> dict:
    """An auto-encoding document [x ; x] for a segment x of l tokens: only the copy's tokens after
    its first are scored, so the loss is the reconstruction of x from its memory given x's first
    token (what ``uio_ds.eval.autoencode`` measures), and the decoder never runs on the first copy."""
    l = segment.shape[-1]
    return scored_document(torch.cat([segment, segment]), [l + 1, 2 * l])


def make_document(ids: list[int], spans: list[int], autoencode: bool, objective: dict | None = None):
    """A training document: a token tensor, or a dict with ``labels`` where only spans are scored,
    and ``objective`` (the source's weights) when the source sets its own."""
    tensor = torch.tensor(ids, dtype=torch.long)
    if autoencode:
        doc = autoencode_document(tensor)
    else:
        doc = scored_document(tensor, spans) if spans else tensor
    if objective is not None:
        doc = dict(doc) if isinstance(doc, dict) else {"input_ids": doc}
        doc["objective"] = dict(objective)
    return doc


def source_limits(config: DataConfig, source: SourceConfig) -> dict:
    """How one source's documents become pieces (``document_pieces`` keywords)."""
    if config.autoencode_tokens:
        return {"min_tokens": config.autoencode_tokens, "max_tokens": config.autoencode_tokens}
    return {"min_tokens": config.min_tokens, "max_tokens": source.max_tokens or config.max_tokens,
            "whole": source.resolved_kind != "text", "truncate": source.truncate}
