"""Text metrics, implemented here (no external scorer): BLEU-4, ROUGE-L, QA F1, exact match.

Words are whitespace-separated tokens. BLEU-4 is corpus-level (n-gram counts summed over all
pairs, as in Papineni et al. 2002) with the brevity penalty and no smoothing; ROUGE-L is the
LCS F-measure (beta = 1) averaged over pairs; QA F1 follows SQuAD's answer normalisation and
takes the best gold answer.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from typing import Sequence


def _ngrams(words: list[str], n: int) -> Counter:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 of hypotheses against one reference each, in [0, 1]."""
    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    matched, total = [0] * 4, [0] * 4
    hyp_len = ref_len = 0
    for hyp, ref in zip(hypotheses, references):
        h, r = hyp.split(), ref.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc, rc = _ngrams(h, n), _ngrams(r, n)
            matched[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    if hyp_len == 0 or min(matched) == 0:
        return 0.0
    log_precision = sum(math.log(m / t) for m, t in zip(matched, total)) / 4
    brevity = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return brevity * math.exp(log_precision)


def _lcs(a: list[str], b: list[str]) -> int:
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure of one pair, in [0, 1]."""
    h, r = hypothesis.split(), reference.split()
    if not h or not r:
        return 0.0
    lcs = _lcs(h, r)
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(h), lcs / len(r)
    return 2 * precision * recall / (precision + recall)


def mean_rouge_l(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("need as many hypotheses as references, at least one")
    return sum(rouge_l(h, r) for h, r in zip(hypotheses, references)) / len(hypotheses)


def normalize_answer(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def qa_f1(prediction: str, answers: Sequence[str]) -> float:
    """Best token-overlap F1 of ``prediction`` against the gold ``answers``."""
    best = 0.0
    pred = normalize_answer(prediction).split()
    for answer in answers:
        gold = normalize_answer(answer).split()
        common = Counter(pred) & Counter(gold)
        overlap = sum(common.values())
        if not pred or not gold:
            score = float(pred == gold)
        elif overlap == 0:
            score = 0.0
        else:
            p, r = overlap / len(pred), overlap / len(gold)
            score = 2 * p * r / (p + r)
        best = max(best, score)
    return best


def exact_match(prediction: str, answer: str) -> bool:
    return normalize_answer(prediction) == normalize_answer(answer)
