"""What a decoder step is trained to do: the next-token loss, distillation from the base model
reading everything, or a weighted sum of the two.

``Objective(lm=1, distill=0)`` is the plain next-token loss (the paper's). With ``distill > 0``
every decoder step also gets ``distill`` x KL(teacher || decoder), summed over the tokens the
step scores, where the teacher is the frozen base reading the whole document with full attention
(``uio_ds.model.teacher``): one more forward pass per segment, without gradient.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from uio_ds.model.teacher import FullAttentionTeacher


@dataclass(frozen=True)
class Objective:
    lm: float = 1.0
    """Weight of the next-token cross-entropy."""
    distill: float = 0.0
    """Weight of KL(base reading everything || memory decoder)."""
    regularize: float = 0.0
    """Weight of KL(base || decoder LoRA) on each segment read without memory (a decoder LoRA only)."""

    def __post_init__(self):
        for name in ("lm", "distill", "regularize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"objective.{name}={value!r}: must be a number >= 0")
        if self.lm == 0 and self.distill == 0:
            raise ValueError("objective: lm and distill are both 0, so nothing is trained; give one a weight > 0")

    @property
    def uses_teacher(self) -> bool:
        return self.distill > 0

    def teacher(self, model) -> FullAttentionTeacher | None:
        """A fresh teacher for one batch of documents, or None when the objective needs none."""
        return FullAttentionTeacher(model) if self.uses_teacher else None

    @staticmethod
    def read(teacher: FullAttentionTeacher | None, segment: torch.Tensor) -> torch.Tensor | None:
        """The teacher's log-probabilities for the next segment (it must read every segment in order)."""
        return teacher.next_segment(segment) if teacher is not None else None

    def decode(self, model, segment: torch.Tensor, memory, targets: torch.Tensor, taught: torch.Tensor | None,
               recent=None):
        """``model.decode`` with this objective's loss; ``taught`` from ``read`` (None: lm term only);
        ``recent``: the model's raw recent window, if it has one."""
        return model.decode(segment, memory, targets, taught, self.lm, self.distill, recent, self.regularize)


LM = Objective()


def group_by_objective(documents: list, default: Objective) -> list[tuple[Objective, list]]:
    """Documents grouped by the objective they are trained with: a dict document's own
    ``objective`` (weights by name, set by its data source), else ``default``; groups in order of
    first appearance, documents in their order within a group."""
    groups: dict[Objective, list] = {}
    for doc in documents:
        weights = doc.get("objective") if isinstance(doc, dict) else None
        objective = Objective(**weights) if weights is not None else default
        groups.setdefault(objective, []).append(doc)
    return list(groups.items())
