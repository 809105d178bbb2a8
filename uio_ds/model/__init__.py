"""The UIO memory model (encoder, transfer head, decoder) and streaming generation."""

from uio_ds.model.generation import GenerationResult, MemoryStream, generate
from uio_ds.model.memory_model import (
    DecoderOutput,
    DocumentOutput,
    MemoryKV,
    PositionRangeError,
    UIOMemoryModel,
    segment_targets,
    split_segments,
)

__all__ = [
    "DecoderOutput",
    "DocumentOutput",
    "GenerationResult",
    "MemoryKV",
    "MemoryStream",
    "PositionRangeError",
    "UIOMemoryModel",
    "generate",
    "segment_targets",
    "split_segments",
]
