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
from uio_ds.formats import passkey_prompt


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
                    answer = prompt.new_tensor([tokenizer(f" {key}", add_special_tokens=False)["input_ids"]])
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
