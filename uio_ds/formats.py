"""Formats that several layers share, defined once: the label value that scores nothing, the
pass-key prompt (written by the training-data tools, read by the evaluation) and the
generated story text (the tiny tokenizer's corpus, the demo's long document, a haystack).

The story text is deterministic English-like text, generated rather than downloaded: the same
on every machine for a given seed, so tiny models and their tokenizer are reproducible without
any hub or bundled corpus.
"""

from __future__ import annotations

import random

import torch

IGNORE_INDEX = -100
"""Label of a token that is read but not scored (a prompt, padding), as transformers uses it."""

INTRO = "There is a pass key hidden in the text below. Find it and remember it.\n"
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, haystack: torch.Tensor, length: int, depth: float, key: str,
                   intro: str = INTRO, needle: str = NEEDLE, question: str = QUESTION) -> torch.Tensor:
    """A (1, length) prompt: intro, haystack tokens with the needle at ``depth`` (0 = start, 1 = end),
    question; on the haystack's device."""
    def enc(text: str) -> torch.Tensor:
        return torch.tensor(tokenizer(text, add_special_tokens=False)["input_ids"], dtype=torch.long,
                            device=haystack.device)

    head, key_ids, tail = enc(intro), enc(needle.format(key=key)), enc(question)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        head = torch.cat([head.new_tensor([tokenizer.bos_token_id]), head])
    filler = length - len(head) - len(key_ids) - len(tail)
    if filler < 1:
        raise ValueError(f"a {length}-token prompt leaves no room for haystack: intro, key and question "
                         f"take {length - filler} tokens")
    if filler > len(haystack):
        raise ValueError(f"cannot build a {length}-token prompt from a {len(haystack)}-token haystack")
    at = int(round(depth * filler))
    body = torch.cat([haystack[:at], key_ids, haystack[at:filler]])
    return torch.cat([head, body, tail]).unsqueeze(0)


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


def story_sentence(rng: random.Random) -> str:
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
        current.append(story_sentence(rng))
        if len(current) == sentences_per_paragraph:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------------------------- facts
#
# Fact retrieval in many wordings: a fact sentence placed in a long text, a question at the end
# whose last words start the answer (a cloze, so base and instruction models answer alike). The
# data generators train on the "train" templates; evaluations report the "held_out" ones apart,
# so a memory is judged on wording it never saw.

FACT_TEMPLATES = {
    # name: (split, fact sentence, question ending where the answer starts)
    "pass_key": ("train", "The pass key is {key}. Remember it.", "What is the pass key? The pass key is"),
    "locker_code": ("train", "{name} keeps the {thing} in the {place}, and its code is {key}.",
                    "What is the code of {name}'s {thing}? The code is"),
    "place_password": ("train", "Note for later: the password of the {place} is {key}.",
                       "What is the password of the {place}? It is"),
    "written_down": ("train", "In the {place}, {name} wrote down {key} on a card.",
                     "What did {name} write down on the card in the {place}? {name} wrote down"),
    "label": ("train", "The {adjective} {thing} is labelled {key}.",
              "How is the {adjective} {thing} labelled? It is labelled"),
    "meeting_room": ("train", "Do not forget: the meeting will be held in room {key}.",
                     "In which room will the meeting be held? In room"),
    "shipment": ("train", "A message arrived: the shipment code is {key}.",
                 "What was the shipment code in the message? The shipment code is"),
    "riddle": ("train", "The answer to the riddle of the {place} is {key}.",
               "What is the answer to the riddle of the {place}? The answer is"),
    "secret_number": ("held_out", "Remember this: the secret number is {key}.",
                      "What was the secret number mentioned above? The secret number was"),
    "combination": ("held_out", "Important: {name}'s locker combination is {key}.",
                    "What is {name}'s locker combination? It is"),
    "access_token": ("held_out", "{name} said: \"My access token is {key}.\"",
                     "What access token did {name} mention? {name}'s access token is"),
    "ledger_entry": ("held_out", "The last entry in the {adjective} ledger reads {key}.",
                     "What does the last entry in the {adjective} ledger read? It reads"),
}

FACT_KEY_KINDS = ("digits", "number", "words", "name", "uuid")


def fact_key(kind: str, rng: random.Random) -> str:
    """A key of ``kind``: five digits, a seven-digit number, two words, a full name, or a
    UUID-like hex string (8-4 characters)."""
    if kind == "digits":
        return "".join(rng.choice("0123456789") for _ in range(5))
    if kind == "number":
        return str(rng.randint(1_000_000, 9_999_999))
    if kind == "words":
        return f"{rng.choice(ADJECTIVES)} {rng.choice(OBJECTS)}"
    if kind == "name":
        return f"{rng.choice(NAMES)} {rng.choice(NAMES)}son"
    if kind == "uuid":
        return "".join(rng.choice("0123456789abcdef") for _ in range(8)) + "-" + "".join(
            rng.choice("0123456789abcdef") for _ in range(4))
    raise ValueError(f"unknown fact key kind {kind!r}: choose one of {list(FACT_KEY_KINDS)}")


def fact_templates(split: str) -> list[str]:
    """Names of the templates of ``split`` ("train", "held_out" or "all")."""
    if split not in ("train", "held_out", "all"):
        raise ValueError(f"fact template split {split!r}: choose train, held_out or all")
    return [name for name, (s, _, _) in FACT_TEMPLATES.items() if split in ("all", s)]


def render_fact(template: str, key: str, rng: random.Random) -> tuple[str, str]:
    """(fact sentence, question) of ``template`` with ``key`` and randomly drawn slot words."""
    if template not in FACT_TEMPLATES:
        raise ValueError(f"unknown fact template {template!r}: choose one of {sorted(FACT_TEMPLATES)}")
    _, fact, question = FACT_TEMPLATES[template]
    slots = {"name": rng.choice(NAMES), "thing": rng.choice(OBJECTS), "place": rng.choice(PLACES),
             "adjective": rng.choice(ADJECTIVES)}
    return fact.format(key=key, **slots), question.format(**slots)
