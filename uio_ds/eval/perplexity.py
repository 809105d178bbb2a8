"""Long-document perplexity: every token scored exactly once, documents independent.

One pass over each document gives every breakdown, because all methods are causal: the
loss of token i never depends on text after it, so "the document truncated to N tokens"
is its first N-1 scored tokens. Reported per method: overall (token-weighted), per
context length N (documents of at least N tokens, their first N tokens, the paper's
Table 2 layout), and per segment position (does more memory help later segments?). The
"later" figures leave out the first segment, which every method reads the same way (no
earlier text exists): they are where memory can make a difference (segments 2..T).
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
from tqdm import tqdm

from uio_ds.eval.methods import Method


def _ppl(total: float, count: int) -> float | None:
    return math.exp(total / count) if count else None


def evaluate_perplexity(
    methods: Sequence[Method],
    documents: Sequence[torch.Tensor],
    lengths: Sequence[int],
    segment_length: int,
    names: Sequence[str] | None = None,
) -> dict:
    """Perplexities of every method on every document (1-D token tensors)."""
    names = list(names or [f"doc{i}" for i in range(len(documents))])
    report = {}
    for method in methods:
        per_doc = []
        for name, doc in tqdm(list(zip(names, documents)), desc=f"perplexity {method.name}", leave=False):
            limit = min(len(doc), method.max_tokens or len(doc))
            per_doc.append((name, len(doc), method.token_losses(doc[:limit].unsqueeze(0))))
        overall_sum = sum(sum(l) for _, _, l in per_doc)
        overall_n = sum(len(l) for _, _, l in per_doc)
        # loss i scores token i+1: the first segment's tokens are losses 0 .. l-2
        first = segment_length - 1
        by_length = {}
        for n in lengths:
            rows = [(total, l) for _, total, l in per_doc if total >= n and len(l) >= n - 1]
            by_length[n] = {"perplexity": _ppl(sum(sum(l[: n - 1]) for _, l in rows), (n - 1) * len(rows)),
                            "later_perplexity": _ppl(sum(sum(l[first : n - 1]) for _, l in rows),
                                                     max(n - 1 - first, 0) * len(rows)),
                            "documents": len(rows)}
        positions: dict[int, list[float]] = {}
        for _, _, l in per_doc:
            for i, value in enumerate(l):  # loss i scores token i+1, which lies in segment (i+1)//l
                positions.setdefault((i + 1) // segment_length, []).append(value)
        report[method.name] = {
            "perplexity": _ppl(overall_sum, overall_n),
            "tokens": overall_n,
            "later_perplexity": _ppl(sum(sum(l[first:]) for _, _, l in per_doc),
                                     sum(len(l[first:]) for _, _, l in per_doc)),
            "by_length": by_length,
            "by_segment": {k: _ppl(sum(v), len(v)) for k, v in sorted(positions.items())},
            "documents": {name: _ppl(sum(l), len(l)) for name, _, l in per_doc},
        }
    return report
