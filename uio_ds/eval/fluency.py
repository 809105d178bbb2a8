"""Does the model still write language with its memory? Each method continues the first
``prompt_tokens`` of a held-out document greedily, and a judge, the frozen base reading the
prompt and the continuation with full attention, scores the continuation.

Reported per method: the judge's perplexity of the continuation (a continuation the base finds as
likely as its own has the ratio ``judge_perplexity / full's`` near 1; broken text like
"The sea is 06152. The sea is 06152." is far above), the share of distinct 3-grams (greedy
loops of a repeated phrase score low there while their perplexity may still look good, because
a copy is easy to predict) and a few decoded samples to read. The judge's perplexity of the
document's own next tokens (``reference``) sets the scale of human text.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from tqdm import tqdm

from uio_ds.eval.methods import Method


def distinct_ngrams(tokens: Sequence[int], n: int = 3) -> float | None:
    """Distinct n-grams over all n-grams of a token sequence (None when it has none)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else None


@torch.no_grad()
def judge_losses(base, prompt: torch.Tensor, continuation: Sequence[int]) -> list[float]:
    """Loss of each continuation token under ``base`` reading the prompt before it; a prompt too long
    for the base's positions is cut from the left."""
    if not continuation:
        return []
    room = base.config.max_position_embeddings - len(continuation)
    if room < 1:
        raise ValueError(f"a continuation of {len(continuation)} tokens leaves the judge no room for its prompt")
    prompt = prompt[:, -room:].to(base.device)
    tail = torch.tensor([list(continuation)], device=base.device, dtype=prompt.dtype)
    logits = base(torch.cat([prompt, tail], dim=1)).logits[0, prompt.shape[1] - 1 : -1].float()
    return F.cross_entropy(logits, tail[0], reduction="none").tolist()


def evaluate_fluency(methods: Sequence[Method], judge, tokenizer, documents: Sequence[torch.Tensor],
                     prompt_tokens: int, new_tokens: int = 64, samples: int = 2) -> dict:
    """Judge perplexity, distinct 3-grams and samples of every method's continuations of the
    documents (1-D token tensors) long enough for ``prompt_tokens`` + ``new_tokens``.

    ``judge`` is the frozen base model (no adapter active)."""
    docs = [d for d in documents if len(d) >= prompt_tokens + new_tokens]
    if not docs:
        raise ValueError(f"no document holds {prompt_tokens} + {new_tokens} tokens: lower --fluency-prompt")
    prompts = [d[:prompt_tokens].unsqueeze(0) for d in docs]
    reference = [judge_losses(judge, p, d[prompt_tokens : prompt_tokens + new_tokens].tolist())
                 for p, d in zip(prompts, docs)]
    report: dict = {"documents": len(docs), "prompt_tokens": prompt_tokens, "new_tokens": new_tokens,
                    "reference": _summary(reference, [d[prompt_tokens : prompt_tokens + new_tokens].tolist()
                                                      for d in docs]),
                    "methods": {}}
    for method in methods:
        outs, losses, skipped = [], [], 0
        for prompt in tqdm(prompts, desc=f"fluency {method.name}", leave=False):
            if method.max_tokens is not None and prompt.shape[1] + new_tokens > method.max_tokens:
                skipped += 1
                continue
            out = method.greedy(prompt, new_tokens)
            outs.append(out)
            losses.append(judge_losses(judge, prompt, out))
        entry = _summary(losses, outs)
        entry["skipped_too_long"] = skipped
        entry["samples"] = [tokenizer.decode(o, skip_special_tokens=True) for o in outs[:samples]]
        report["methods"][method.name] = entry
    full = report["methods"].get("full", {}).get("judge_perplexity")
    for entry in report["methods"].values():
        ppl = entry["judge_perplexity"]
        entry["ratio_to_full"] = ppl / full if full and ppl is not None else None
    return report


def _summary(losses: list[list[float]], outs: list[list[int]]) -> dict:
    flat = [v for l in losses for v in l]
    distinct = [d for d in map(distinct_ngrams, outs) if d is not None]
    return {"judge_perplexity": math.exp(sum(flat) / len(flat)) if flat else None, "tokens": len(flat),
            "distinct_3": sum(distinct) / len(distinct) if distinct else None}
