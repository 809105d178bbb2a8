"""Token ids checked where they enter the model (``forward``, ``compress``, ``generate``, the
server): integers within the vocabulary. An id outside it would otherwise fail deep inside the
embedding (torch's IndexError on the CPU, a device-side assert that ends the process on CUDA)."""

from __future__ import annotations

from typing import Sequence

import torch
from torch._subclasses.fake_tensor import is_fake


def token_id_problem(ids: torch.Tensor | Sequence[int], vocab_size: int, what: str = "token ids") -> str | None:
    """What is wrong with ``ids`` (a tensor or a list of ints), or None when they are fine."""
    if isinstance(ids, torch.Tensor):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            return f"{what} must be integers, got a tensor of {ids.dtype}"
        if ids.numel() == 0 or ids.is_meta or is_fake(ids):  # shapes only (the memory planner): no values
            return None
        low, high = int(ids.min()), int(ids.max())
    else:
        bad = next((t for t in ids if isinstance(t, bool) or not isinstance(t, int)), None)
        if bad is not None:
            return f"{what} must be integers, got {bad!r}"
        if not ids:
            return None
        low, high = min(ids), max(ids)
    if low < 0 or high >= vocab_size:
        return f"{what} must be in [0, {vocab_size}) (the model's vocabulary), got {low if low < 0 else high}"
    return None


def check_token_ids(ids: torch.Tensor | Sequence[int], vocab_size: int, what: str = "token ids") -> None:
    """Raise ValueError naming the first problem of ``token_id_problem``."""
    problem = token_id_problem(ids, vocab_size, what)
    if problem:
        raise ValueError(problem)
