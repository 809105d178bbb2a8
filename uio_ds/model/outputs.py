"""What the memory model's passes return, and the loss terms they are built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class DecoderOutput:
    """What ``decode`` returns: logits, and the summed loss over ``num_tokens`` targets.

    ``loss_sum`` is the training objective: the next-token loss, or with a teacher
    ``lm_weight * lm_loss_sum + distill_weight * distill_sum``."""

    logits: torch.Tensor
    loss_sum: torch.Tensor | None = None
    num_tokens: int = 0
    memory_tokens: int = 0
    lm_loss_sum: torch.Tensor | None = None
    """Summed next-token cross-entropy over the targets (equal to ``loss_sum`` without a teacher)."""
    distill_sum: torch.Tensor | None = None
    """Summed KL(teacher || decoder) over the targets' positions (with a teacher)."""
    regularize_sum: torch.Tensor | None = None
    """Summed KL(base || decoder LoRA) without memory over the targets' positions (when regularised)."""

    @property
    def loss(self) -> torch.Tensor | None:
        """Mean next-token loss over the scored targets."""
        if self.loss_sum is None:
            return None
        return self.loss_sum / max(self.num_tokens, 1)


@dataclass
class DocumentOutput:
    """What ``forward`` returns for a batch of documents: token-weighted loss and per-segment sums."""

    loss_sum: torch.Tensor
    num_tokens: int
    segment_loss_sums: list[torch.Tensor]
    segment_num_tokens: list[int]
    lm_loss_sum: float = 0.0
    """The next-token loss alone (``loss_sum`` is the objective)."""
    distill_sum: float = 0.0
    """The summed KL to the teacher (0 without one)."""

    @property
    def loss(self) -> torch.Tensor:
        return self.loss_sum / max(self.num_tokens, 1)


def distillation_sum(logits: torch.Tensor, teacher_logprobs: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || student) = sum_v p_T(v) (log p_T(v) - log p_S(v)) over the ``scored``
    positions; ``logits`` (B, n, V) are the student's, ``teacher_logprobs`` (B, n, V) log p_T."""
    student = F.log_softmax(logits, dim=-1)
    teacher = teacher_logprobs.to(student.dtype)
    per_position = (teacher.exp() * (teacher - student)).sum(-1)
    return torch.where(scored, per_position, 0.0).sum()  # no boolean indexing: the planner runs this on fake tensors
