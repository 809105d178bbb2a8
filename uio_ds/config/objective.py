"""What each decoder step is trained to do: the weights of the next-token loss, of distillation
from the base reading everything, and of the decoder LoRA's regulariser (for a run, and for a
data source that overrides the run's)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class ObjectiveConfig:
    """What each decoder step is trained to do (uio_ds.algo.Objective): the next-token loss,
    distillation from the frozen base reading the whole document, or a weighted sum."""

    lm: float = 1.0
    """Weight of the next-token cross-entropy of the scored tokens."""

    distill: float = 0.0
    """Weight of KL(base with full attention || memory decoder) at the scored tokens. The teacher is
    the frozen base reading the whole document (one more forward pass per segment, no gradient),
    as far as its position range goes; the loss then sits where the far context changes the
    prediction."""

    regularize: float = 0.0
    """Weight of KL(base || decoder LoRA) on each segment read without memory: keeps a decoder LoRA
    (``uio.decoder_lora``) close to the base where memory plays no part, so it keeps modelling
    language. One more pass of each kind per segment."""

    def problems(self) -> list[str]:
        out = []
        for name in ("lm", "distill", "regularize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                out.append(f"objective.{name}={value!r}: must be a number >= 0")
        if not out and self.lm == 0 and self.distill == 0:
            out.append("objective.lm and objective.distill are both 0, so nothing is trained: give one a weight > 0")
        return out
