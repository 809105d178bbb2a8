"""Fixtures of the evaluation tests: the tiny llama with perturbed trainable parts (so memory
changes what the decoder predicts) and its tokenizer."""

import pytest
from helpers import load, perturb_trainable


@pytest.fixture(scope="module")
def model(tiny_dirs):
    m = load(tiny_dirs["llama"])
    perturb_trainable(m, scale=0.2)
    return m


@pytest.fixture(scope="module")
def tokenizer(tiny_dirs):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_dirs["llama"])
