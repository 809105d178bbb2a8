"""Fact retrieval in wording, keys and text a memory may never have seen in training.

Records are those of ``uio-ds make-fact-data`` (``uio_ds.data.generators.facts``): a prompt holding one or
more facts and ending with a question about one of them; ``answers[0]`` is its key. Each method
answers greedily; an answer is right when its first line holds the key. The answer's loss (nats
per token of " key") is reported next to accuracy, a graded signal where accuracy is still 0, and
so is the key's character match (``key_match``: how much of the key the answer's first line
spells, 1 when it holds the key), which tells an answer that is off by a digit from one that is
off altogether.
Results are broken down by template (its ``train`` or ``held_out`` split named), key kind,
haystack, the asked fact's depth (thirds of the prompt), length and, given the memory's segment
length, how many segments before the question's the fact lies (``back:0`` is the question's own
segment, read without memory), so held-out wording and text are reported apart from what
training saw. Each method's report also lists what it said, record by record (the key, its kind,
the prompt's tokens, whether it was right, its key match, the answer's loss, the fact's depth, how
far back it lies, and the answer's first line), to tell a near miss from noise and to cross the
breakdowns (depth or distance at one length).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
from collections import defaultdict
from typing import Sequence

from tqdm import tqdm

from uio_ds.eval.methods import Method
from uio_ds.formats import FACT_TEMPLATES

DEPTH_BUCKETS = ("0-1/3", "1/3-2/3", "2/3-1")
SAID_CHARS = 80  # of each answer's first line kept in the report


def load_fact_records(path: str) -> list[dict]:
    """Records of a fact jsonl (gzip-compressed when the name ends in ``.gz``), checked before any
    generation (file and line named)."""
    records = []
    with (gzip.open(path, "rt", encoding="utf-8") if path.endswith(".gz") else open(path, encoding="utf-8")) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{path}:{number}: not valid JSON ({err.msg})") from None
            missing = [k for k in ("prompt", "answers", "facts") if k not in record]
            if missing or not record.get("answers"):
                raise ValueError(f"{path}:{number}: a fact record needs prompt, answers and facts (missing "
                                 f"{missing or ['answers']}): write them with uio-ds make-fact-data")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no fact record")
    return records


def records_of_lengths(records: Sequence[dict], lengths: Sequence[int], path: str) -> list[dict]:
    """The records whose length (their ``tokens``, prompt and completion, written by ``uio-ds
    make-fact-data``) has the nearest power of two of one of ``lengths``, as the report's length
    cells do, in file order; none there, or a record without ``tokens``: refused, naming what the
    file holds."""
    wanted = {length_bucket(n) for n in lengths}
    held = []
    for number, record in enumerate(records, 1):
        if not isinstance(record.get("tokens"), int):
            raise ValueError(f"{path}: record {number} has no 'tokens' count, so --facts-lengths cannot select "
                             "it: write the records with uio-ds make-fact-data, or leave --facts-lengths out")
        held.append(length_bucket(record["tokens"]))
    chosen = [r for r, cell in zip(records, held) if cell in wanted]
    if not chosen:
        have = ", ".join(sorted(set(held), key=held.index))
        raise ValueError(f"{path} holds no fact record of {', '.join(sorted(wanted))} tokens (it holds {have}): "
                         "pass one of those to --facts-lengths")
    return chosen


def records_digest(records: Sequence[dict]) -> str:
    """A short digest of the records' content: reports on the same records carry the same one.
    (Generated records depend on the machine where their haystack does: the ``licenses`` haystack
    is the licence files installed there.)"""
    text = json.dumps(list(records), sort_keys=True, ensure_ascii=True)
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _asked(record: dict) -> dict:
    """The fact the prompt's question asks about (the first answer's)."""
    key = record["answers"][0]
    return next(f for f in record["facts"] if f["key"] == key)


def key_match(key: str, line: str) -> float:
    """How much of ``key`` the stretch of ``line`` closest to it spells: 1 - (the fewest character
    insertions, deletions and substitutions that turn some substring of ``line`` into ``key``) /
    len(key). 1 when ``line`` holds the key; "4573333" for 4573013 scores 5/7; an empty line 0.

    The key is the needle, scored in full: fuzzy "partial" ratios (rapidfuzz's ``partial_ratio``,
    difflib's matching blocks) align the shorter string inside the longer, so a one-digit answer
    would score 1 against a seven-digit key. Keys and first lines are short (under 100 characters),
    so the quadratic dynamic programme costs nothing beside generation.
    """
    if not key:
        raise ValueError("key_match needs a non-empty key")
    # row[j]: the fewest edits turning some substring of line ending at j into the key's prefix;
    # a substring may start anywhere (the first row is 0) and end anywhere (the last row's minimum)
    row = [0] * (len(line) + 1)
    for i, k in enumerate(key, 1):
        new = [i]
        for j, c in enumerate(line, 1):
            new.append(min(row[j - 1] + (k != c), row[j] + 1, new[j - 1] + 1))
        row = new
    return 1.0 - min(row) / len(key)


def segments_back(tokenizer, prompt: str, key: str, prompt_tokens: int, segment_length: int) -> int | None:
    """How many segments of ``segment_length`` tokens lie between the one holding ``key``'s first
    occurrence in ``prompt`` and the prompt's last (0: the same segment); None where the prompt
    does not hold the key."""
    at = prompt.find(key)
    if at < 0:
        return None
    before = len(tokenizer(prompt[:at])["input_ids"])  # the token where the key starts, give or take one
    return (prompt_tokens - 1) // segment_length - min(before, prompt_tokens - 1) // segment_length


def evaluate_facts(methods: Sequence[Method], tokenizer, records: Sequence[dict], answer_tokens: int = 16,
                   max_tokens: int | None = None, segment_length: int | None = None) -> dict:
    """Accuracy, answer loss and key match per method, overall and per cell (see the module's
    docstring); ``segment_length``: the memory's, for the cells of how far back the fact lies."""
    report = {}
    # how far back each record's fact lies: a property of the record, found once for every method
    backs = [segments_back(tokenizer, r["prompt"], r["answers"][0], len(tokenizer(r["prompt"])["input_ids"]),
                           segment_length) if segment_length else None for r in records]
    for method in methods:
        cells: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
        skipped = 0
        said = []
        for record, back in zip(tqdm(records, desc=f"facts {method.name}", leave=False), backs):
            prompt = tokenizer(record["prompt"], return_tensors="pt")["input_ids"]
            if method.max_tokens is not None and prompt.shape[1] + answer_tokens > method.max_tokens:
                skipped += 1
                continue
            key = record["answers"][0]
            answer = tokenizer(f" {key}", add_special_tokens=False, return_tensors="pt")["input_ids"]
            tokens, losses = method.answer(prompt, answer, answer_tokens)
            text = tokenizer.decode(tokens, skip_special_tokens=True)
            first_line = text.strip().split("\n")[0]
            right = float(key in first_line)
            match = key_match(key, first_line)
            loss = sum(losses) / len(losses)
            fact = _asked(record)
            said.append({"key": key, "key_kind": fact["key_kind"], "tokens": prompt.shape[1], "right": bool(right),
                         "key_match": round(match, 4), "answer_loss": round(loss, 4), "depth": fact["depth"],
                         "said": first_line[:SAID_CHARS]})
            split = FACT_TEMPLATES.get(fact["template"], ("unknown",))[0]
            depth = depth_bucket(fact["depth"])
            if back is not None:
                said[-1]["back"] = back
            for cell in ("all", f"template:{fact['template']} ({split})", f"wording:{split}",
                         f"key_kind:{fact['key_kind']}", f"haystack:{record.get('haystack', '?')}",
                         f"depth:{depth}", f"length:{length_bucket(prompt.shape[1])}",
                         *((f"back:{back}",) if back is not None else ())):
                cells[cell]["right"].append(right)
                cells[cell]["loss"].append(loss)
                cells[cell]["match"].append(match)
        report[method.name] = {
            "skipped_too_long": skipped, "said": said,
            "cells": {name: {"n": len(v["right"]), "accuracy": sum(v["right"]) / len(v["right"]),
                             "answer_loss": sum(v["loss"]) / len(v["loss"]),
                             "key_match": sum(v["match"]) / len(v["match"])} for name, v in sorted(cells.items())}}
    return {"records": len(records), "records_sha1": records_digest(records), "answer_tokens": answer_tokens,
            "segment_length": segment_length, "methods": report}


def depth_bucket(depth: float) -> str:
    """The third of the prompt a fact at ``depth`` (0 = its start, 1 = its end) lies in."""
    return DEPTH_BUCKETS[min(2, int(depth * 3))]


def length_bucket(tokens: int) -> str:
    """A prompt length named by the nearest power of two (a 2,047-token prompt is "2K")."""
    size = 1 << max(0, round(math.log2(max(tokens, 1))))
    return f"{size // 1024}K" if size >= 1024 else str(size)
