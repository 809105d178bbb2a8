"""Passkey / needle retrieval: a key stated early in a long text, asked for at the end.

The haystack is real text (any token sequence: the King James books, generated text).
The key sentence is inserted at a relative depth; the question closes the prompt and the
greedy answer is scored by exact match of the digits. Lengths and depths form a grid.
"""

from __future__ import annotations

import random
import re
from typing import Sequence

import torch
from tqdm import tqdm

from uio_ds.eval.methods import Method

INTRO = "There is a pass key hidden in the text below. Find it and remember it.\n"
NEEDLE = "\nThe pass key is {key}. Remember it. {key} is the pass key.\n"
QUESTION = "\nWhat is the pass key? The pass key is"


def passkey_prompt(tokenizer, haystack: torch.Tensor, length: int, depth: float, key: str,
                   intro: str = INTRO, needle: str = NEEDLE, question: str = QUESTION) -> torch.Tensor:
    """A (1, length) prompt: intro, haystack tokens with the needle at ``depth`` (0 = start, 1 = end), question."""
    enc = lambda text: tokenizer(text, add_special_tokens=False, return_tensors="pt")["input_ids"][0]  # noqa: E731
    head, key_ids, tail = enc(intro), enc(needle.format(key=key)), enc(question)
    if tokenizer.bos_token_id is not None and getattr(tokenizer, "add_bos_token", False):
        head = torch.cat([torch.tensor([tokenizer.bos_token_id]), head])
    filler = length - len(head) - len(key_ids) - len(tail)
    if filler < 1:
        raise ValueError(f"a {length}-token prompt leaves no room for haystack: intro, key and question "
                         f"take {length - filler} tokens")
    if filler > len(haystack):
        raise ValueError(f"cannot build a {length}-token prompt from a {len(haystack)}-token haystack")
    at = int(round(depth * filler))
    body = torch.cat([haystack[:at], key_ids, haystack[at:filler]])
    return torch.cat([head, body, tail]).unsqueeze(0)


def evaluate_passkey(
    methods: Sequence[Method],
    tokenizer,
    haystack: torch.Tensor,
    lengths: Sequence[int],
    depths: Sequence[float],
    trials: int = 3,
    digits: int = 5,
    seed: int = 0,
    answer_tokens: int = 12,
) -> dict:
    """Exact-match accuracy per method, length and depth (``trials`` keys each), and the mean loss
    (nats per token) of the true answer's tokens after the question."""
    rng = random.Random(seed)
    keys = [[["".join(rng.choice("0123456789") for _ in range(digits)) for _ in range(trials)]
             for _ in depths] for _ in lengths]
    report = {}
    for method in methods:
        grid, loss_grid = [], []
        for li, length in enumerate(tqdm(lengths, desc=f"passkey {method.name}", leave=False)):
            if method.max_tokens is not None and length + answer_tokens > method.max_tokens:
                grid.append([None] * len(depths))
                loss_grid.append([None] * len(depths))
                continue
            row, loss_row = [], []
            for di, depth in enumerate(depths):
                hits, losses = 0, []
                for key in keys[li][di]:
                    prompt = passkey_prompt(tokenizer, haystack, length, depth, key)
                    text = tokenizer.decode(method.greedy(prompt, answer_tokens), skip_special_tokens=True)
                    found = re.search(r"\d+", text)
                    hits += int(found is not None and found.group(0) == key)
                    # a graded signal next to exact match: the loss of the true answer's tokens
                    answer = tokenizer(f" {key}", add_special_tokens=False, return_tensors="pt")["input_ids"]
                    losses += method.last_losses(torch.cat([prompt, answer], dim=1), answer.shape[1])
                row.append(hits / trials)
                loss_row.append(sum(losses) / len(losses))
            grid.append(row)
            loss_grid.append(loss_row)
        scored = [v for row in grid for v in row if v is not None]
        losses = [v for row in loss_grid for v in row if v is not None]
        report[method.name] = {"accuracy": grid, "mean": sum(scored) / len(scored) if scored else None,
                               "answer_loss": loss_grid,
                               "mean_answer_loss": sum(losses) / len(losses) if losses else None}
    return {"lengths": list(lengths), "depths": list(depths), "trials": trials, "digits": digits,
            "methods": report}
