"""Shared by the benchmarks: the machine they ran on, and the JSON / last-line summary they write."""

from __future__ import annotations

import datetime
import json
import os

import torch

from uio_ds.utils.machine import machine

RESULTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def write_results(name: str, payload: dict) -> str:
    """Write ``benchmarks/results/<name>.json`` with the machine and a timestamp; return the path."""
    os.makedirs(RESULTS_DIR, exist_ok=True)
    path = os.path.join(RESULTS_DIR, f"{name}.json")
    doc = {"benchmark": name, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), **payload}
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    return path


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = [max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(str(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def summary_line(summary: dict) -> None:
    """The machine-readable last line of a benchmark's output."""
    print("SUMMARY " + json.dumps(summary, sort_keys=True))


def perturb_trainable(model, seed: int, scale: float) -> None:
    """Move every trainable tensor off its initial value, reproducibly. LoRA B starts at zero,
    which would leave LoRA A without gradient and skip work a trained model does."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.trainable_parameters():
            p.add_(torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) * scale)  # drawn on the host


def flat(grads, params) -> torch.Tensor:
    """One float64 vector of a gradient list; ``None`` (no gradient) counts as zeros."""
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().double()
                      for g, p in zip(grads, params)])
