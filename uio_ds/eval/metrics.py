"""Text metrics: BLEU-4 and ROUGE-L from the standard scorers, QA F1 and exact match.

BLEU-4 is sacrebleu's corpus BLEU (13a tokenisation, the defaults published BLEU figures use);
ROUGE-L is Google's ``rouge-score`` LCS F-measure (its tokeniser: lower case, alphanumeric
words, no stemming), averaged over pairs; QA F1 follows SQuAD's answer normalisation and takes
the best gold answer. Both scorers return [0, 1] here (sacrebleu's 0-100 divided by 100).
"""

from __future__ import annotations

import re
import string
from collections import Counter
from functools import lru_cache
from typing import Sequence


def bleu4(hypotheses: Sequence[str], references: Sequence[str]) -> float:
    """Corpus BLEU-4 of hypotheses against one reference each, in [0, 1] (sacrebleu)."""
    import sacrebleu

    if len(hypotheses) != len(references):
        raise ValueError(f"{len(hypotheses)} hypotheses for {len(references)} references")
    return sacrebleu.corpus_bleu(list(hypotheses), [list(references)]).score / 100


@lru_cache(maxsize=1)
def _rouge_l_scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)


def rouge_l(hypothesis: str, reference: str) -> float:
    """ROUGE-L F-measure of one pair, in [0, 1] (rouge-score)."""
    return _rouge_l_scorer().score(reference, hypothesis)["rougeL"].fmeasure


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
