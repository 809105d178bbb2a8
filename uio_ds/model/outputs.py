"""What the memory model's passes return, and the loss terms they are built from."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from uio_ds.formats import IGNORE_INDEX


@dataclass
class DecoderOutput:
    """What ``decode`` returns: logits, and the summed loss over ``num_tokens`` targets.

    ``loss_sum`` is the training objective (``score``): the next-token loss, or with a teacher
    ``lm_weight * lm_loss_sum + distill_weight * distill_sum``, plus any regularisation term."""

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

    def score(self, targets: torch.Tensor, teacher_logprobs: torch.Tensor | None = None, lm_weight: float = 1.0,
              distill_weight: float = 1.0) -> None:
        """Fill the loss terms from ``self.logits`` (B, n, V): the next-token loss at ``targets``
        (B, n; ``IGNORE_INDEX`` where unscored), with ``teacher_logprobs`` (B, n, V) the KL to the
        teacher at the same positions; ``loss_sum`` is their sum weighted by ``lm_weight`` and
        ``distill_weight``. Sums are taken in at least float32."""
        if targets.shape != self.logits.shape[:2]:
            raise ValueError(f"targets shape {tuple(targets.shape)} differs from input shape "
                             f"{tuple(self.logits.shape[:2])}")
        wide = self.logits.to(torch.promote_types(self.logits.dtype, torch.float32))
        scored = targets != IGNORE_INDEX
        self.lm_loss_sum = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                           reduction="sum")
        self.num_tokens = int(scored.sum().item())
        self.loss_sum = self.lm_loss_sum if lm_weight == 1.0 else lm_weight * self.lm_loss_sum
        if teacher_logprobs is not None:
            if teacher_logprobs.shape[:2] != targets.shape:
                raise ValueError(f"teacher_logprobs of shape {tuple(teacher_logprobs.shape)} do not cover the "
                                 f"segment's {tuple(targets.shape)} positions")
            self.distill_sum = distillation_sum(wide, teacher_logprobs, scored)
            self.loss_sum = self.loss_sum + distill_weight * self.distill_sum

    def add_regularization(self, regularize_sum: torch.Tensor, weight: float) -> None:
        """Add ``weight`` x ``regularize_sum`` (KL(base || decoder) without memory) to the objective."""
        self.regularize_sum = regularize_sum
        self.loss_sum = self.loss_sum + weight * regularize_sum


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
