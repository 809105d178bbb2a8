"""The passes every gradient strategy shares: documents as batches, batched encoder calls, the
transfer head over the memories a decoder step reads, gradients that tolerate unused inputs,
and the bookkeeping of loss terms and retained graphs."""

from __future__ import annotations

import contextlib

import torch

from uio_ds.formats import IGNORE_INDEX
from uio_ds.utils.offload import offload_saved_tensors


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
    return sum(scored_tokens(labels) for _, labels in batches)


def scored_tokens(labels: torch.Tensor) -> int:
    return int((labels[:, 1:] != IGNORE_INDEX).sum().item())


def encode_all(model, segments: list[torch.Tensor], batch: int, chunk: int | None = None,
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


def read_kv(model, memory: list[torch.Tensor], batch: int):
    """Transfer head over the memories that the decoder of segment ``len(memory)`` reads (those of
    the earlier segments, less the ones its raw window covers or the position range drops), side
    by side along the tokens."""
    first, stop = model.read_memories(len(memory))
    memory = memory[first:stop]
    if not memory:
        return None
    # rows ordered (document, segment), which per_text turns into one row per document
    return model.memory_kv(torch.stack(memory, dim=1).flatten(0, 1)).per_text(batch)


def grad_of(loss: torch.Tensor, inputs: list[torch.Tensor]) -> tuple:
    """d loss / d inputs, ``None`` where an input is unused; all ``None`` when nothing trainable
    produced the loss (the first segment's decoder pass reads no memory)."""
    if not loss.requires_grad:
        return (None,) * len(inputs)
    return torch.autograd.grad(loss, inputs, allow_unused=True)


def count_terms(stats: dict, out) -> None:
    """The two terms of the loss apart (``loss_sum`` is the objective, their weighted sum): the
    next-token loss of every decoder step, and the KL of those a teacher reached. The keys are
    there from a document's start whatever the objective, so every rank reduces the same
    statistics, however its documents' objectives differ."""
    stats["lm_loss_sum"] = stats.get("lm_loss_sum", 0.0) + (out.lm_loss_sum.item() if out is not None else 0.0)
    stats["distill_sum"] = stats.get("distill_sum", 0.0) + (
        out.distill_sum.item() if out is not None and out.distill_sum is not None else 0.0)


def has_targets(targets: torch.Tensor) -> bool:
    """Whether a decoder step scores any token. One that scores none (a prompt's segments, the
    first copy of an auto-encoding document) adds nothing to loss or gradient: it is not run.
    On the memory planner's fake tensors every step counts as scoring."""
    return bool((targets != IGNORE_INDEX).any().item())


def graph_context(mode: str, device: str):
    return offload_saved_tensors(device) if mode in ("offload", "recompute_offload") else contextlib.nullcontext()


def check_recompute(model, mode: str) -> None:
    if mode not in ("recompute", "recompute_offload"):
        return
    config = getattr(model, "config", None)
    lora = getattr(config, "encoder_lora", None)
    if lora is not None and lora.dropout > 0:
        raise ValueError(
            "graph_mode='recompute' rebuilds encoder graphs at backward time, which would draw new "
            f"dropout masks (encoder_lora.dropout={lora.dropout}); set the dropout to 0 or use graph_mode='keep'"
        )
