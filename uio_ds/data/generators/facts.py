"""Fact-retrieval documents in varied wording, over varied text: the data a memory must generalise from.

A document is a stretch of a haystack with one or more facts placed at random depths (each in one
of the wordings of ``uio_ds.formats.FACT_TEMPLATES``, with a key of one of the kinds of
``FACT_KEY_KINDS``), and questions about some of them at the end. Records are prompt-completion
pairs: train with ``completion_field: "completion"`` (only the answers are scored) or read the
``answers`` in an evaluation.

Haystacks, each real text that needs no download:

* ``books``: a text source (a prepared corpus such as ``data/kjv``, or any jsonl of texts);
* ``story``: the generated story text of ``uio_ds.formats``;
* ``code``: the Python standard library's own source files;
* ``licenses``: the licence files that the installed packages ship (``*.dist-info``), and Debian's
  ``/usr/share/common-licenses`` where present: the haystack held out of training by default.
"""

from __future__ import annotations

import glob
import json
import os
import random
import sys
from collections import Counter
from typing import Sequence

from uio_ds.formats import FACT_KEY_KINDS, FACT_TEMPLATES, fact_key, fact_templates, render_fact, synthetic_text

HAYSTACKS = ("books", "story", "code", "licenses")
HELD_OUT_HAYSTACKS = ("licenses",)
MIN_HAYSTACK_CHARS = 2000


def haystack_texts(kind: str, corpus: str | None = None, corpus_split: str = "train") -> list[str]:
    """The texts of one haystack kind (see the module's docstring), in a fixed order."""
    if kind == "books":
        if not corpus:
            raise ValueError("haystack 'books' reads a text source: give corpus (e.g. data/kjv, or a jsonl of texts)")
        from uio_ds.config import SourceConfig
        from uio_ds.data.sources import read_texts

        texts, _ = read_texts(SourceConfig(path=corpus, split=corpus_split))
    elif kind == "story":
        texts = [synthetic_text(1500, seed=1000 + i) for i in range(16)]
    elif kind == "code":
        folder = os.path.dirname(os.__file__)
        texts = [_read(p) for p in sorted(glob.glob(os.path.join(folder, "*.py")))]
    elif kind == "licenses":
        found = set()
        for root in {sys.prefix, sys.base_prefix}:
            found.update(glob.glob(os.path.join(root, "lib", "python3*", "site-packages", "*.dist-info", "LICEN[CS]E*")))
            found.update(glob.glob(os.path.join(root, "lib", "python3*", "site-packages", "*.dist-info", "licenses",
                                                "LICEN[CS]E*")))
        found.update(glob.glob("/usr/share/common-licenses/*"))
        texts = [_read(p) for p in sorted(found) if os.path.isfile(p)]
    else:
        raise ValueError(f"unknown haystack {kind!r}: choose from {list(HAYSTACKS)}")
    texts = [t for t in texts if len(t) >= MIN_HAYSTACK_CHARS]
    if not texts:
        raise ValueError(f"haystack {kind!r} has no text of {MIN_HAYSTACK_CHARS} characters or more on this machine")
    return texts


def _read(path: str) -> str:
    with open(path, encoding="utf-8", errors="replace") as f:
        return f.read()


def _snap(text: str, at: int) -> int:
    """The first sentence or line end at or after ``at`` (within 300 characters), else the next
    space: a fact goes between sentences, never inside a word."""
    for end in (". ", ".\n", "\n"):
        i = text.find(end, at, at + 300)
        if i >= 0:
            return i + len(end)
    i = text.find(" ", at)
    return len(text) if i < 0 else i + 1


def fact_document(rng: random.Random, tokenizer, haystack: Sequence[list[int]], tokens: int, templates: Sequence[str],
                  key_kinds: Sequence[str], facts: tuple[int, int] = (1, 1), questions: tuple[int, int] = (1, 1),
                  depths: tuple[float, float] = (0.0, 1.0)) -> dict:
    """One record of about ``tokens`` tokens: a stretch of one of the ``haystack`` texts (token
    ids) with between ``facts`` facts at depths drawn from ``depths``, then questions about
    between ``questions`` of them. The first question ends the prompt; the completion answers it
    and asks and answers the others."""
    count = rng.randint(*facts)
    placed = []
    for _ in range(count):
        template, kind = rng.choice(list(templates)), rng.choice(list(key_kinds))
        key = fact_key(kind, rng)
        sentence, question = render_fact(template, key, rng)
        placed.append({"template": template, "key_kind": kind, "key": key, "fact": sentence,
                       "question": question, "depth": rng.uniform(*depths)})
    asked = rng.sample(placed, min(len(placed), rng.randint(*questions)))
    extra = " ".join(p["fact"] for p in placed) + " ".join(f"\n{p['question']} {p['key']}." for p in asked)
    budget = tokens - len(tokenizer(extra, add_special_tokens=False)["input_ids"]) - 2
    fits = [ids for ids in haystack if len(ids) >= budget]
    if budget < 16:
        raise ValueError(f"a {tokens}-token fact document leaves {budget} tokens of haystack beside its facts and "
                         "questions: give longer lengths (--tokens)")
    if not fits:
        longest = max((len(ids) for ids in haystack), default=0)
        raise ValueError(f"a {tokens}-token fact document needs a haystack text of {budget} tokens (the longest "
                         f"here has {longest}): give shorter lengths (--tokens), or a haystack with longer texts")
    ids = rng.choice(fits)
    start = rng.randrange(len(ids) - budget + 1)
    body = tokenizer.decode(ids[start : start + budget])
    for p in sorted(placed, key=lambda p: -p["depth"]):  # from the end, so earlier offsets stay valid
        at = _snap(body, int(p["depth"] * len(body))) if p["depth"] > 0 else 0
        body = body[:at] + p["fact"] + (" " if at < len(body) else "") + body[at:]
    first, rest = asked[0], asked[1:]
    prompt = body.rstrip() + "\n" + first["question"]
    completion = f" {first['key']}." + "".join(f"\n{p['question']} {p['key']}." for p in rest)
    return {"prompt": prompt, "completion": completion, "answers": [p["key"] for p in asked],
            "questions": [p["question"] for p in asked], "facts": [
                {k: p[k] for k in ("template", "key_kind", "key", "depth")} for p in placed],
            "tokens": len(tokenizer(prompt + completion)["input_ids"])}


def write_fact_jsonl(path: str, documents: int, tokenizer, lengths: Sequence[int], haystacks: Sequence[str],
                     templates: str | Sequence[str] = "train", key_kinds: Sequence[str] = FACT_KEY_KINDS,
                     facts: tuple[int, int] = (1, 3), questions: tuple[int, int] = (1, 2),
                     depths: tuple[float, float] = (0.0, 1.0), corpus: str | None = None, corpus_split: str = "train",
                     seed: int = 0, log=print) -> dict:
    """Write ``documents`` fact records (see ``fact_document``) to ``path`` as jsonl; lengths and
    haystacks are drawn uniformly. ``templates``: a split name ("train", "held_out", "all") or
    template names. Returns counts per template, key kind and haystack, which are also logged."""
    names = fact_templates(templates) if isinstance(templates, str) else list(templates)
    unknown = [n for n in names if n not in FACT_TEMPLATES]
    if unknown or not names:
        raise ValueError(f"unknown fact templates {unknown}: give a split (train, held_out, all) or names from "
                         f"{sorted(FACT_TEMPLATES)}")
    for kind in key_kinds:
        if kind not in FACT_KEY_KINDS:
            raise ValueError(f"unknown fact key kind {kind!r}: choose from {list(FACT_KEY_KINDS)}")
    if not (1 <= facts[0] <= facts[1]) or not (1 <= questions[0] <= questions[1]):
        raise ValueError(f"facts={facts} and questions={questions} must be ranges (low, high) with 1 <= low <= high")
    stacks = {}
    for kind in haystacks:
        texts = haystack_texts(kind, corpus, corpus_split)
        stacks[kind] = tokenizer(texts, add_special_tokens=False)["input_ids"]
        longest = max((len(ids) for ids in stacks[kind]), default=0)
        if max(lengths) > longest + 64:  # checked before the file is opened: a bad length leaves nothing behind
            raise ValueError(f"--tokens {max(lengths)} is longer than any text of the {kind!r} haystack (the longest "
                             f"has {longest} tokens): give shorter lengths, or a haystack with longer texts "
                             "(e.g. books from a corpus)")
    rng = random.Random(seed)
    counts = {"templates": Counter(), "key_kinds": Counter(), "haystacks": Counter()}
    partial = f"{path}.partial"  # renamed into place when whole: a failure never leaves half a file at path
    try:
        with open(partial, "w") as f:
            for _ in range(documents):
                kind = rng.choice(list(haystacks))
                record = fact_document(rng, tokenizer, stacks[kind], rng.choice(list(lengths)), names, key_kinds,
                                       facts, questions, depths)
                record["haystack"] = kind
                f.write(json.dumps(record) + "\n")
                counts["haystacks"][kind] += 1
                for fact in record["facts"]:
                    counts["templates"][fact["template"]] += 1
                    counts["key_kinds"][fact["key_kind"]] += 1
        os.replace(partial, path)
    finally:
        if os.path.exists(partial):
            os.remove(partial)
    report = {k: dict(sorted(v.items())) for k, v in counts.items()}
    log(f"wrote {documents} fact documents to {path}: {json.dumps(report)}")
    return report
