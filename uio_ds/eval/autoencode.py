"""Auto-encoding (the paper's Table 1): compress a segment, reconstruct it from its memory alone.

The decoder sees only the segment's memory and the segment's first token (or its first ``given``
tokens), and generates the rest greedily; BLEU-4 and ROUGE-L compare the reconstruction with the
original text.
Training for this task is ordinary UIO training on two-segment documents [x ; x]
(``data.autoencode_tokens``), scored on the copy only: reconstruction from the memory of the
first segment.
"""

from __future__ import annotations

import torch

from uio_ds.eval.metrics import bleu4, mean_rouge_l
from uio_ds.formats import IGNORE_INDEX
from uio_ds.model.memory_model import UIOMemoryModel

START = 8  # the first rebuilt tokens, whose first choices are reported one by one


@torch.no_grad()
def reconstruct(model: UIOMemoryModel, segments: torch.Tensor, batch_size: int = 8,
                with_memory: bool = True, given: int = 1) -> torch.Tensor:
    """Greedy reconstructions (N, l-given) of segments (N, l) from their memories and first
    ``given`` tokens (``with_memory=False``: from those tokens alone, the baseline)."""
    outs, segments = [], segments.to(model.device)
    for i in range(0, segments.shape[0], batch_size):
        seg = segments[i : i + batch_size]
        memory = model.memory_kv(model.encode(seg)).per_text(seg.shape[0]) if with_memory else None
        cache = model.build_cache(memory)
        token, generated = seg[:, :given], []
        for _ in range(seg.shape[1] - given):
            token = model.decoder_forward(token, cache, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
            generated.append(token)
        outs.append(torch.cat(generated, dim=1))
    return torch.cat(outs).cpu()


@torch.no_grad()
def teacher_forced(model: UIOMemoryModel, segments: torch.Tensor, with_memory: bool = True,
                   batch_size: int = 8, given: int = 1) -> tuple[float, float, list[float]]:
    """Mean teacher-forced loss (nats/token) of tokens given..l-1 of ``segments`` given the
    segment's memory (or none) and its first ``given`` tokens, the share of those tokens that are
    the decoder's first choice, and that share at each of the first ``START`` of them (where the
    decoder has read the least of the text): the graded signals behind the greedy rebuild."""
    total, right, count, segments = 0.0, 0, 0, segments.to(model.device)
    start = torch.zeros(min(START, segments.shape[1] - given), device=model.device)
    for i in range(0, segments.shape[0], batch_size):
        seg = segments[i : i + batch_size]
        memory = model.memory_kv(model.encode(seg)).per_text(seg.shape[0]) if with_memory else None
        targets = torch.cat([seg[:, 1:], torch.full_like(seg[:, :1], IGNORE_INDEX)], dim=1)
        targets[:, : given - 1] = IGNORE_INDEX
        out = model.decode(seg, memory, targets)
        total, count = total + out.loss_sum.item(), count + out.num_tokens
        hits = out.logits[:, given - 1 : -1].argmax(-1) == seg[:, given:]
        right, start = right + int(hits.sum()), start + hits[:, : len(start)].sum(0)
    return total / count, right / count, (start / segments.shape[0]).tolist()


def correct_prefix(rebuilt: torch.Tensor, segments: torch.Tensor) -> float:
    """Mean number of tokens a greedy reconstruction (N, l-given) of ``segments`` (N, l) gets right
    before its first error."""
    wrong = rebuilt != segments[:, segments.shape[1] - rebuilt.shape[1] :].to(rebuilt.device)
    first = torch.where(wrong.any(1), wrong.int().argmax(1), wrong.shape[1])  # argmax: the first True
    return float(first.float().mean())


def evaluate_autoencoding(model: UIOMemoryModel, tokenizer, segments: torch.Tensor, given: int = 1) -> dict:
    """BLEU-4 (corpus) and ROUGE-L (mean) of greedy reconstructions of ``segments`` (N, l) from
    their memories and first ``given`` tokens, the same scores for the decoder without memory
    (which can only guess the text from those tokens), the teacher-forced loss of the text and
    the share of its tokens that are the decoder's first choice (``token_accuracy``; at each of
    the first ``START`` rebuilt tokens: ``token_accuracy_start``), and the tokens rebuilt right
    before the first error (``correct_prefix``), with and without memory.
    ``given`` > 1 hands the decoder more of the text's start: where the rebuild derails at the
    start, its scores rise with it."""
    if not 1 <= given < segments.shape[1]:
        raise ValueError(f"given={given}: hand the decoder at least 1 and fewer than the segment's "
                         f"{segments.shape[1]} tokens")
    refs = [tokenizer.decode(s[given:], skip_special_tokens=True) for s in segments]
    report = {"segments": len(refs), "segment_length": segments.shape[1], "memory_tokens": model.num_mem_tokens,
              "given": given}
    for name, memory in (("memory", True), ("no_memory", False)):
        rebuilt = reconstruct(model, segments, with_memory=memory, given=given)
        hyps = [tokenizer.decode(r, skip_special_tokens=True) for r in rebuilt]
        loss, accuracy, start = teacher_forced(model, segments, with_memory=memory, given=given)
        scores = {"bleu4": bleu4(hyps, refs), "rouge_l": mean_rouge_l(hyps, refs), "loss": loss,
                  "token_accuracy": accuracy, "token_accuracy_start": [round(a, 4) for a in start],
                  "correct_prefix": correct_prefix(rebuilt, segments)}
        if memory:
            report.update(scores)
            report["example"] = {"reference": refs[0], "reconstruction": hyps[0]}
        else:
            report["no_memory"] = scores
    return report
