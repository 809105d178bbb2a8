"""The released SmolLM2 parts load from a fresh clone and do what their card says.

``release/smollm2-uio`` (the general memory): on held-out books its memory lowers the perplexity
of the segments after the first against the same reading without memory, and ``uio-ds generate``
with it continues a held-out text in language the frozen base finds about as likely as its own
continuation. ``release/milestones/fidelity/reader_mid`` (a milestone of the fidelity recipe, not
yet the release): read from its memory alone, it answers questions about facts written in wording
that no training record used. ``release/milestones/smollm2-passkey-specialist`` (the first
release): its memory carries a pass key in its own template, which the decoder alone cannot."""

import dataclasses
import json
import math
import os
import random
import re

import pytest
import torch
from helpers import REPO
from transformers import AutoModelForCausalLM, AutoTokenizer

from uio_ds.eval.fluency import distinct_ngrams, judge_losses
from uio_ds.eval.methods import UIOMethod
from uio_ds.formats import FACT_TEMPLATES, passkey_prompt
from uio_ds.model.memory_model import UIOMemoryModel

RELEASE = os.path.join(REPO, "release", "smollm2-uio")
SPECIALIST = os.path.join(REPO, "release", "milestones", "smollm2-passkey-specialist")
READER = os.path.join(REPO, "release", "milestones", "fidelity", "reader_mid")
NEAR_FACTS = os.path.join(REPO, "benchmarks", "data", "facts_held_out_near.jsonl.gz")


@pytest.fixture(scope="module")
def held_out(smollm2_dir, kjv_file, tmp_path_factory):
    """Token ids of the held-out books (the parts never saw them), in the corpus's order."""
    from uio_ds.config import SourceConfig
    from uio_ds.data.generators.corpus import prepare_corpus
    from uio_ds.data.sources import read_texts

    corpus = os.path.join(REPO, "data", "kjv")
    if not os.path.isdir(corpus):  # `make prepare` writes it; otherwise group the books here
        corpus = str(tmp_path_factory.mktemp("kjv"))
        prepare_corpus([kjv_file], corpus, log=lambda *_: None)
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    texts, _ = read_texts(SourceConfig(path=corpus, split="eval"))
    ids = [torch.tensor(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
    return ids, tok


def _longest(docs, n):
    return sorted(docs, key=len, reverse=True)[:n]


@pytest.fixture(scope="module")
def released(smollm2_dir):
    return UIOMemoryModel.from_pretrained(smollm2_dir, trained_path=RELEASE).eval()


def test_release_has_its_card_and_a_config_that_reads_any_length(released):
    card = open(os.path.join(RELEASE, "README.md"), encoding="utf-8").read()
    assert "make memory-recipe" in card and "StreamingLLM" in card
    with open(os.path.join(RELEASE, "uio_config.json")) as f:
        saved = json.load(f)["uio"]
    assert saved["segment_length"] == released.segment_length and released.config.dtype == "bfloat16"
    # a serving model must not refuse a long conversation: the memory window keeps every decoder
    # call within SmolLM2's 8,192 positions whatever the length
    assert released.max_tokens_supported() is None
    assert released.peak_positions(1_000_000) <= released.max_positions
    # its reading: 4 sinks + 6 memories of 32 slots + 768 raw tokens + a segment, at any length
    assert (saved["sink_tokens"], saved["memory_window"], saved["recent_tokens"]) == (4, 6, 768)
    assert released.peak_positions(8192) == released.peak_positions(1_000_000) == 4 + 6 * 32 + 768 + 256


@pytest.mark.slow
def test_release_memory_adds_to_its_raw_window_on_held_out_books(released, smollm2_dir, held_out):
    """The first 4,096 tokens of the three longest held-out books, segments after the first: the
    release's reading (sinks, its memories, a raw window, the segment) against the same reading
    without memory (memory window 0), so the raw window is not credited to the memory; and both
    against the decoder reading each segment alone (measured 13.26 against 13.38 and 22.14: the
    memory's share is small, 0.9%, and it lowers every held-out book long enough to read one)."""
    docs, _ = held_out
    window = UIOMemoryModel.from_pretrained(smollm2_dir, dataclasses.replace(released.config, memory_window=0))
    window.load_trained(RELEASE)
    readings = {"memory": UIOMethod(released), "window": UIOMethod(window.eval()),
                "alone": UIOMethod(released, use_memory=False)}
    losses = {name: [] for name in readings}
    with torch.no_grad():
        for doc in _longest(docs, 3):
            for name, method in readings.items():
                losses[name] += method.token_losses(doc[None, :4096], first_segment=1)
    ppl = {name: math.exp(sum(v) / len(v)) for name, v in losses.items()}
    assert ppl["memory"] < ppl["window"] < 0.8 * ppl["alone"], ppl


@pytest.mark.slow
def test_generate_with_the_release_writes_language(released, held_out, smollm2_dir, tmp_path, capsys):
    """`uio-ds generate` continues 1,500 tokens of a held-out book by 32 greedy tokens; the frozen
    base reading everything judges the continuation, as a multiple of the judge's perplexity of
    the base's own greedy continuation (measured 1.41 and 1.14; distinct 3-grams 0.58 and 0.68).
    The pass-key specialist released first answered "The sea is 06152. The sea is 06152. ..." and
    scored a perplexity of 150K on text."""
    from uio_ds.cli import main

    docs, tok = held_out
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.bfloat16).eval()
    ratios, distinct = [], []
    for doc in _longest(docs, 2):
        prompt = doc[None, :1500]
        path = tmp_path / "prompt.txt"
        path.write_text(tok.decode(prompt[0]), encoding="utf-8")
        assert main(["generate", "--model", smollm2_dir, "--uio", RELEASE, "--prompt-file", str(path),
                     "--max-new-tokens", "32"]) == 0
        written = tok(capsys.readouterr().out, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            own = base.generate(prompt, max_new_tokens=32, do_sample=False, pad_token_id=tok.eos_token_id)[0, 1500:]
            judged = math.exp(sum(judge_losses(base, prompt, written)) / len(written))
            reference = math.exp(sum(judge_losses(base, prompt, own.tolist())) / len(own))
        ratios.append(judged / reference)
        distinct.append(distinct_ngrams(written))
    assert max(ratios) < 3.0 and min(distinct) > 0.3, (ratios, distinct)


@pytest.mark.slow
def test_memory_reads_a_fact_in_wording_it_never_trained_on(smollm2_dir):
    """The first 24 committed held-out records of two 256-token segments over licence text: a fact
    in one of the 4 held-out wordings (no training record uses them) in the first segment, its
    question at the end of the second. Read with no raw window and no sinks, the first segment
    reaches the question only through its memory. Measured on an Intel Xeon: 9 of 24 exact with
    memory, none without; over the 100 records 0.42 (answer loss 0.91 nats a token) against 0.00
    (6.91) without memory and 0.46 (1.18) for full attention."""
    from uio_ds.config import UIOConfig
    from uio_ds.eval.facts import evaluate_facts, load_fact_records

    saved, _ = UIOConfig.load(READER)
    model = UIOMemoryModel.from_pretrained(smollm2_dir, dataclasses.replace(saved, recent_tokens=0, sink_tokens=0))
    model.load_trained(READER)
    model.eval()
    records = load_fact_records(NEAR_FACTS)[:24]
    held_out = {name for name, (split, *_) in FACT_TEMPLATES.items() if split == "held_out"}
    assert {fact["template"] for r in records for fact in r["facts"]} <= held_out
    with torch.no_grad():
        report = evaluate_facts([UIOMethod(model), UIOMethod(model, use_memory=False)],
                                AutoTokenizer.from_pretrained(smollm2_dir), records)["methods"]
    memory, alone = report["uio"]["cells"]["all"], report["no_memory"]["cells"]["all"]
    assert memory["n"] == alone["n"] == 24
    assert alone["accuracy"] == 0 and memory["accuracy"] >= 5 / 24, (memory, alone)
    assert memory["answer_loss"] < alone["answer_loss"] / 3, (memory, alone)


@pytest.fixture(scope="module")
def specialist(smollm2_dir):
    return UIOMemoryModel.from_pretrained(smollm2_dir, trained_path=SPECIALIST).eval()


def test_specialist_keeps_its_card_and_the_recipe_config(specialist):
    assert os.path.isfile(os.path.join(SPECIALIST, "README.md"))
    assert (specialist.config.segment_length, specialist.num_mem_tokens, specialist.config.memory_layout) == \
        (128, 16, "appended")
    assert specialist.decoder_adapter == "decoder"


def _answers(method, tok, haystack, keys, depth):
    return [re.findall(r"\d+", tok.decode(method.greedy(passkey_prompt(tok, haystack, 500, depth, key), 8)))
            for key in keys]


@pytest.mark.slow
def test_specialist_memory_carries_a_key_the_decoder_alone_cannot(specialist, held_out):
    """500-token prompts with the key 30% and 50% deep: the key sits one to two segments before
    the question. The specialist's memory carries some whole keys (exact match 4 in 16 here, 56%
    over the evaluation's grid of 500..8,000 tokens) and the first digits of most, which the
    decoder alone never produces: measured 10 of 16 keys with the first three digits right and 65%
    of the digits in place with memory, 0 of 16 and 11% (chance 10%) without."""
    docs, tok = held_out
    haystack = torch.cat(docs[:2])
    rng = random.Random(5)
    keys = ["".join(rng.choice("0123456789") for _ in range(5)) for _ in range(16)]
    scores = {}
    for name, method in (("memory", UIOMethod(specialist)), ("alone", UIOMethod(specialist, use_memory=False))):
        answers = _answers(method, tok, haystack, keys[:8], 0.3) + _answers(method, tok, haystack, keys[8:], 0.5)
        answers = [found[0] if found else "" for found in answers]
        scores[name] = {"prefix": sum(a[:3] == k[:3] for a, k in zip(answers, keys)),
                        "digits": sum(x == y for a, k in zip(answers, keys) for x, y in zip(a, k)) / (5 * len(keys))}
    assert scores["alone"]["prefix"] == 0 and scores["alone"]["digits"] <= 0.25, scores
    assert scores["memory"]["prefix"] >= 5 and scores["memory"]["digits"] >= 0.4, scores
