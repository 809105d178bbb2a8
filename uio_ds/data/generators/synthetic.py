"""Synthetic training documents written as jsonl: pass-key recall in story text or in the
training books, digit runs to repeat, the classic pass-key filler (the formats are
``uio_ds.formats``)."""

from __future__ import annotations

import random

from uio_ds.formats import INTRO, NEEDLE, QUESTION, passkey_prompt, story_sentence


def recall_text(rng: random.Random, filler_sentences: int, key_digits: int = 5, key_position: int = 0,
                filler_seed: int | None = None) -> tuple[str, str]:
    """A recall document in the pass-key format of ``uio_ds.formats``: the pass key is stated
    after ``key_position`` filler sentences, ``filler_sentences`` sentences of story follow in all,
    and the document ends by asking for the key and answering it. Returns (text, key)."""

    key = "".join(rng.choice("0123456789") for _ in range(key_digits))
    sentences = [story_sentence(random.Random(filler_seed if filler_seed is not None else rng.random()))
                 for _ in range(filler_sentences)]
    before, after = " ".join(sentences[:key_position]), " ".join(sentences[key_position:])
    text = INTRO + before + NEEDLE.format(key=key) + after + QUESTION + f" {key}."
    return text, key


def write_recall_jsonl(path: str, documents: int, filler_sentences: tuple[int, int], key_sentences: tuple[int, int],
                       seed: int = 0) -> int:
    """Write ``documents`` recall documents (one JSON object per line, field ``text``) whose filler
    length and key position are drawn uniformly from the given (low, high) sentence ranges."""
    import json

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(documents):
            n = rng.randint(*filler_sentences)
            text, key = recall_text(rng, n, key_position=min(n, rng.randint(*key_sentences)))
            f.write(json.dumps({"text": text, "key": key}) + "\n")
    return documents


def write_recall_completion_jsonl(path: str, documents: int, tokenizer, lengths: list[int], seed: int = 0) -> int:
    """Prompt-completion recall documents of exactly the given token lengths (under ``tokenizer``):
    the pass key is stated at the start (in the first segment of any segment length >= 48), story
    sentences follow, and the prompt ends by asking for the key; the completion is the answer
    ``" 12345."``. Each record has ``prompt``, ``completion``, ``key`` and ``tokens``; train on them
    with ``completion_field: "completion"`` (only the answer is scored). Every document of one
    length has the same number of tokens, so a step's documents of that length batch together.
    Lengths are drawn uniformly from ``lengths``."""
    import json


    rng = random.Random(seed)

    def ids(text: str, special: bool = True) -> list[int]:
        return tokenizer(text, add_special_tokens=special)["input_ids"]

    with open(path, "w") as f:
        written = 0
        while written < documents:
            n = rng.choice(lengths)
            key = "".join(rng.choice("0123456789") for _ in range(5))
            completion = f" {key}."
            head, question = INTRO + NEEDLE.format(key=key), QUESTION
            budget = n - len(ids(completion, special=False)) - len(ids(head)) - len(ids(question, special=False))
            if budget < 1:
                raise ValueError(f"length {n} is too short for a recall document: give lengths of at least "
                                 f"{n - budget + 1} tokens")
            filler: list[int] = []
            while len(filler) < budget:
                filler += ids(" " + story_sentence(rng), special=False)
            prompt = head + tokenizer.decode(filler[:budget]) + question
            # A cut inside a word can re-tokenise differently; such a draw is dropped, not bent.
            if len(ids(prompt)) + len(ids(completion, special=False)) != n:
                continue
            f.write(json.dumps({"prompt": prompt, "completion": completion, "key": key, "tokens": n}) + "\n")
            written += 1
    return documents


def write_passkey_books_jsonl(path: str, documents: int, tokenizer, corpus: str, lengths: list[int],
                              depths: tuple[float, float] = (0.0, 1.0), split: str = "train", seed: int = 0) -> dict:
    """Prompt-completion pass-key documents over real text, in the format of ``uio_ds.eval.passkey``:
    intro, a stretch of a book from ``corpus`` (a prepared corpus directory, ``split``) with the key
    sentence at a depth drawn uniformly from ``depths``, the question; the completion is the answer
    ``" 12345."``. Each document has exactly a length drawn from ``lengths`` tokens (draws whose
    decoded prompt re-tokenises to another length are dropped and counted). Train with
    ``completion_field: "completion"``: only the answer is scored. Returns counts."""
    import json

    import torch

    from uio_ds.config import SourceConfig
    from uio_ds.data.sources import read_texts

    texts, _ = read_texts(SourceConfig(path=corpus, split=split))
    books = [torch.tensor(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    rng = random.Random(seed)
    written = dropped = 0
    with open(path, "w") as f:
        while written < documents:
            n = rng.choice(lengths)
            key = "".join(rng.choice("0123456789") for _ in range(5))
            completion = f" {key}."
            prompt_tokens = n - len(tokenizer(completion, add_special_tokens=False)["input_ids"])
            fits = [b for b in books if len(b) >= prompt_tokens]
            if not fits:
                raise ValueError(f"no book in {corpus} ({split}) has {prompt_tokens} tokens: give shorter lengths")
            book = rng.choice(fits)
            start = rng.randrange(len(book) - prompt_tokens + 1)
            depth = rng.uniform(*depths)
            prompt = tokenizer.decode(passkey_prompt(tokenizer, book[start:], prompt_tokens, depth, key)[0])
            if len(tokenizer(prompt)["input_ids"]) != prompt_tokens:
                dropped += 1
                continue
            f.write(json.dumps({"prompt": prompt, "completion": completion, "key": key, "tokens": n,
                                "depth": round(depth, 4)}) + "\n")
            written += 1
    return {"written": written, "dropped": dropped}


PASSKEY_FILLER = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "


def write_passkey_jsonl(path: str, documents: int, repeats: tuple[int, int], seed: int = 0) -> int:
    """Pass-key documents in the classic format (Mohtashami and Jaggi, 2023): the key stated at the
    start, then the same filler sentences repeated ``repeats`` times (drawn uniformly from the range),
    then the question and the answer. The filler is predictable from its own segment, so nearly all
    the loss a memory can remove is the key's: the training signal for carrying it across segments."""
    import json


    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(documents):
            key = "".join(rng.choice("0123456789") for _ in range(5))
            text = INTRO + NEEDLE.format(key=key) + PASSKEY_FILLER * rng.randint(*repeats) + QUESTION + f" {key}."
            f.write(json.dumps({"text": text, "key": key}) + "\n")
    return documents


def write_repeat_jsonl(path: str, documents: int, seed: int = 0, between: bool = True) -> int:
    """Documents where a random run of digits appears twice with story text between: predicting
    the second run needs an induction head (find the earlier occurrence of the current token,
    copy what followed), the mechanism a decoder needs to read a key back from context or from
    memory; ``between=False`` puts the copy right after the run (induction forms fastest there).
    Digits are not separated by spaces: with a byte-level tokenizer every spaced digit
    would follow the same space token, which hides where in the run a copy is."""
    import json

    rng = random.Random(seed)
    with open(path, "w") as f:
        for _ in range(documents):
            run = "".join(rng.choice("0123456789") for _ in range(rng.randint(5, 12)))
            if between:
                story = " ".join(story_sentence(rng) for _ in range(rng.randint(0, 4)))
                text = f"Sequence: {run}. {story} Again: {run}."
            else:
                text = f"Copy: {run}. Again: {run}."
            f.write(json.dumps({"text": text}) + "\n")
    return documents
