"""Deterministic English-like text, generated rather than downloaded.

The tiny tokenizer is trained on it and the demo reads it as a "long document";
it is the same on every machine for a given seed, so tiny models and their
tokenizer are reproducible without any hub or bundled corpus.
"""

from __future__ import annotations

import random

NAMES = (
    "Ada Basil Clara Dorian Edith Felix Greta Hugo Iris Jonah Kira Leon Mira Nolan Opal Pavel "
    "Quinn Rosa Silas Tilda Ursa Viktor Wren Xavier Yara Zane"
).split()
PLACES = (
    "harbour valley library market tower river garden station village forest bridge castle "
    "island workshop meadow observatory"
).split()
OBJECTS = (
    "lantern letter map compass ledger basket violin clock key mirror kettle telescope "
    "notebook ribbon anchor candle"
).split()
ADJECTIVES = (
    "old quiet bright narrow golden hidden distant crooked silver patient heavy gentle "
    "strange small ancient careful"
).split()
VERBS = "found carried opened mended painted hid sold counted followed studied guarded traded".split()
TIMES = "at dawn|before noon|in the evening|after the storm|on the third day|at midnight|in spring".split("|")
CONNECTIVES = "Then|Later|Meanwhile|Afterwards|Soon|Still|At last|Even so".split("|")


def _sentence(rng: random.Random) -> str:
    name, other = rng.sample(NAMES, 2)
    kind = rng.randrange(6)
    adj, obj, place, verb = rng.choice(ADJECTIVES), rng.choice(OBJECTS), rng.choice(PLACES), rng.choice(VERBS)
    if kind == 0:
        return f"{name} {verb} the {adj} {obj} near the {place} {rng.choice(TIMES)}."
    if kind == 1:
        return f"{rng.choice(CONNECTIVES)}, {name} and {other} walked to the {adj} {place}."
    if kind == 2:
        return f"The {obj} belonged to {other}, who kept {rng.randint(2, 99)} of them in the {place}."
    if kind == 3:
        return f'"Where is the {obj}?" asked {name}. "In the {adj} {place}," said {other}.'
    if kind == 4:
        return f"Nobody in the {place} had seen a {adj} {obj} since {name} {verb} one {rng.choice(TIMES)}."
    return f"{name} wrote {rng.randint(2, 999)} words about the {place} and gave the {obj} to {other}."


def synthetic_text(num_sentences: int, seed: int = 0, sentences_per_paragraph: int = 6) -> str:
    """``num_sentences`` sentences of story-like English, in paragraphs; deterministic in ``seed``."""
    if num_sentences < 1:
        raise ValueError(f"num_sentences={num_sentences}: must be >= 1")
    rng = random.Random(seed)
    paragraphs, current = [], []
    for _ in range(num_sentences):
        current.append(_sentence(rng))
        if len(current) == sentences_per_paragraph:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)
