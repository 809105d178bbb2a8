"""Fact-retrieval data: varied wordings, key kinds and haystacks, several facts per document,
and a held-out split of wordings that training data never contains."""

import json
import random

import pytest
from transformers import AutoTokenizer

from uio_ds.data.generators.facts import HAYSTACKS, fact_document, haystack_texts, write_fact_jsonl
from uio_ds.formats import FACT_KEY_KINDS, FACT_TEMPLATES, fact_key, fact_templates


def test_templates_split_and_every_key_kind_renders():
    train, held_out = fact_templates("train"), fact_templates("held_out")
    assert len(train) >= 8 and len(held_out) >= 4 and not set(train) & set(held_out)
    assert sorted(train + held_out) == sorted(fact_templates("all")) == sorted(FACT_TEMPLATES)
    rng = random.Random(0)
    keys = {kind: {fact_key(kind, rng) for _ in range(50)} for kind in FACT_KEY_KINDS}
    assert all(len(v) > 25 for v in keys.values())  # varied, not one key
    assert all(k.isdigit() and len(k) == 5 for k in keys["digits"])
    assert all(len(k.split("-")) == 2 and len(k) == 13 for k in keys["uuid"])
    with pytest.raises(ValueError, match="unknown fact key kind"):
        fact_key("emoji", rng)


@pytest.mark.parametrize("kind", ["story", "code", "licenses"])
def test_haystacks_need_no_download(kind):
    texts = haystack_texts(kind)
    assert texts and all(len(t) >= 2000 for t in texts)


def test_documents_hold_their_facts_and_ask_about_them(tiny_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    books = tmp_path / "books.jsonl"
    books.write_text("".join(json.dumps({"text": haystack_texts("story")[i]}) + "\n" for i in range(3)))
    out = tmp_path / "facts.jsonl"
    report = write_fact_jsonl(str(out), 60, tokenizer, [256, 512], ["books", "story", "code"], templates="train",
                              facts=(1, 3), questions=(1, 2), corpus=str(books), log=lambda _: None)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == 60 and set(report["haystacks"]) == {"books", "story", "code"}
    assert set(report["templates"]) <= set(fact_templates("train")) and len(report["templates"]) >= 6
    assert len(report["key_kinds"]) == len(FACT_KEY_KINDS)
    assert any(len(r["facts"]) == 3 for r in records) and any(len(r["answers"]) == 2 for r in records)
    for r in records:
        for fact in r["facts"]:  # every fact is in the prompt, in its wording, with its key
            assert fact["key"] in r["prompt"]
        assert r["prompt"].endswith(r["questions"][0])
        assert r["completion"].startswith(f" {r['answers'][0]}.")
        assert all(a in r["completion"] for a in r["answers"])
        assert abs(r["tokens"] - min((256, 512), key=lambda n: abs(n - r["tokens"]))) <= 24, r["tokens"]


def test_held_out_wording_and_bad_arguments(tiny_dirs, tmp_path):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    out = tmp_path / "held.jsonl"
    report = write_fact_jsonl(str(out), 20, tokenizer, [256], ["licenses"], templates="held_out",
                              log=lambda _: None)
    assert set(report["templates"]) <= set(fact_templates("held_out"))
    with pytest.raises(ValueError, match="haystack 'books' reads a text source"):
        write_fact_jsonl(str(out), 1, tokenizer, [256], ["books"], log=lambda _: None)
    with pytest.raises(ValueError, match=r"unknown fact templates \['nope'\]"):
        write_fact_jsonl(str(out), 1, tokenizer, [256], ["books"], templates=["nope"], log=lambda _: None)
    with pytest.raises(ValueError, match="unknown haystack 'tweets'"):
        write_fact_jsonl(str(out), 1, tokenizer, [256], ["tweets"], log=lambda _: None)
    with pytest.raises(ValueError, match=r"--tokens 100000 is longer than any text of the 'licenses' haystack"):
        write_fact_jsonl(str(tmp_path / "long.jsonl"), 1, tokenizer, [256, 100_000], ["licenses"], log=lambda _: None)
    with pytest.raises(ValueError, match="leaves .* tokens of haystack beside its facts and questions"):
        # a length too short for its record's facts fails when that record is drawn (with seed 2, after
        # five records were written): nothing is left behind
        write_fact_jsonl(str(tmp_path / "long.jsonl"), 40, tokenizer, [256, 20], ["story"], seed=2,
                         log=lambda _: None)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["held.jsonl"]
    with pytest.raises(ValueError, match=r"needs a haystack text of \d+ tokens \(the longest here has 100\)"):
        fact_document(random.Random(0), tokenizer, [[5] * 100], 4000, ["pass_key"], ["digits"])
    assert set(HAYSTACKS) == {"books", "story", "code", "licenses"}
