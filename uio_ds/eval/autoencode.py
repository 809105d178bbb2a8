"""Auto-encoding (the paper's Table 1): compress a segment, reconstruct it from its memory alone.

The decoder sees only the segment's memory and the segment's first token, and generates
the rest greedily; BLEU-4 and ROUGE-L compare the reconstruction with the original text.
Training for this task is ordinary UIO training on two-segment documents [x ; x]
(``copy_documents``): the loss of the second segment is reconstruction from the memory of
the first.
"""

from __future__ import annotations

import torch

from uio_ds.eval.metrics import bleu4, mean_rouge_l
from uio_ds.model.memory_model import UIOMemoryModel


@torch.no_grad()
def reconstruct(model: UIOMemoryModel, segments: torch.Tensor, batch_size: int = 8) -> torch.Tensor:
    """Greedy reconstructions (N, l-1) of segments (N, l) from their memories."""
    outs = []
    for i in range(0, segments.shape[0], batch_size):
        seg = segments[i : i + batch_size]
        cache = model.build_cache(model.memory_kv(model.encode(seg)).per_text(seg.shape[0]))
        token, generated = seg[:, :1], []
        for _ in range(seg.shape[1] - 1):
            token = model.decoder_forward(token, cache, logits_to_keep=1)[:, -1].argmax(-1, keepdim=True)
            generated.append(token)
        outs.append(torch.cat(generated, dim=1))
    return torch.cat(outs)


def evaluate_autoencoding(model: UIOMemoryModel, tokenizer, segments: torch.Tensor) -> dict:
    """BLEU-4 (corpus) and ROUGE-L (mean) of reconstructions of ``segments`` (N, l)."""
    rebuilt = reconstruct(model, segments)
    hyps = [tokenizer.decode(r, skip_special_tokens=True) for r in rebuilt]
    refs = [tokenizer.decode(s[1:], skip_special_tokens=True) for s in segments]
    return {"bleu4": bleu4(hyps, refs), "rouge_l": mean_rouge_l(hyps, refs), "segments": len(refs),
            "example": {"reference": refs[0], "reconstruction": hyps[0]}}


def copy_documents(segments: torch.Tensor) -> torch.Tensor:
    """Training documents [x ; x] for the auto-encoding task: (N, l) -> (N, 2l)."""
    return torch.cat([segments, segments], dim=1)
