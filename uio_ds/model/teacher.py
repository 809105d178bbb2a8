"""The distillation teacher: the frozen base model reading a whole text with full attention.

A memory model's decoder reads a segment after compressed memories of what came before; the
teacher reads the same segment after the raw K/V of everything before it. The per-token KL
between the two (``UIOMemoryModel.decode(..., teacher_logprobs=...)``) is a dense signal that
sits where the far context changes the prediction, and needs no labels.

The teacher reads one segment at a time, in order, without gradient, into one growing KV cache,
so only one segment's logits are alive at once. It reads as far as the base model's position
range goes; segments past it get no teacher (``None``), and their loss is the next-token loss
alone.
"""

from __future__ import annotations

import torch


class FullAttentionTeacher:
    """The base model (no adapter) over the rows of ``batch`` texts, one segment after the other.

    ``model`` is a ``UIOMemoryModel``. Call ``next_segment(ids)`` for every segment of the texts,
    in order, skipped ones included (a segment not read would leave a hole in the teacher's
    context); it returns the teacher's log-probabilities (B, n, vocab) for that segment, or
    ``None`` once the texts pass the base model's position range.
    """

    def __init__(self, model):
        self.model = model
        self.cache = model.build_cache(None)
        self.read = 0

    def next_segment(self, input_ids: torch.Tensor) -> torch.Tensor | None:
        n = input_ids.shape[1]
        if self.read + n > self.model.max_positions:
            self.read += n
            return None
        logprobs = self.model.teacher_logprobs(input_ids, self.cache)
        self.read += n
        return logprobs
