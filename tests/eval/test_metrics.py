"""Metrics against hand-computed cases (the scorers are sacrebleu and rouge-score: these pin
what they compute, so a change of scorer or of its settings is caught)."""

import math

import pytest

from uio_ds.eval.metrics import bleu4, exact_match, mean_rouge_l, normalize_answer, qa_f1, rouge_l


def test_bleu_identical_is_one_and_disjoint_is_zero():
    assert bleu4(["the cat sat on the mat"], ["the cat sat on the mat"]) == pytest.approx(1.0)
    assert bleu4(["a b c d"], ["e f g h"]) == 0.0


def test_bleu_by_hand():
    # hyp: "the cat sat on the red mat" (7 words), ref: "the cat sat on the mat" (6 words)
    # 1-grams: 6/7 matched; 2-grams: the-cat, cat-sat, sat-on, on-the = 4/6; 3-grams: 3/5; 4-grams: 2/4
    # hyp longer than ref: no brevity penalty
    want = math.exp((math.log(6 / 7) + math.log(4 / 6) + math.log(3 / 5) + math.log(2 / 4)) / 4)
    assert bleu4(["the cat sat on the red mat"], ["the cat sat on the mat"]) == pytest.approx(want)


def test_bleu_brevity_penalty():
    # hyp "the cat sat on" (4) vs ref of 6 words: all n-grams match, BP = exp(1 - 6/4)
    assert bleu4(["the cat sat on"], ["the cat sat on the mat"]) == pytest.approx(math.exp(1 - 6 / 4))


def test_rouge_l_by_hand():
    # LCS("a b c d e", "a c e f") = "a c e" = 3; P = 3/5, R = 3/4, F = 2PR/(P+R) = 2/3
    assert rouge_l("a b c d e", "a c e f") == pytest.approx(2 * 0.6 * 0.75 / 1.35)
    assert rouge_l("", "a") == 0.0
    # rouge-score's tokeniser: case and punctuation do not count
    assert rouge_l("The cat, sat.", "the cat sat") == pytest.approx(1.0)
    assert mean_rouge_l(["a b", "x"], ["a b", "y"]) == pytest.approx(0.5)


def test_qa_f1_and_exact_match():
    assert normalize_answer("The  Cat, sat!") == "cat sat"
    # pred "cat sat down" vs gold "the cat sat": overlap 2, P = 2/3, R = 2/2 -> F1 = 0.8
    assert qa_f1("cat sat down", ["the cat sat", "dog"]) == pytest.approx(0.8)
    assert qa_f1("nothing", ["cat"]) == 0.0
    assert exact_match("The pass key is 42.", "the pass key is 42")
    assert not exact_match("4 2", "42")
