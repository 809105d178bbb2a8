"""The UIO memory model (encoder, transfer head, decoder) and streaming generation."""

from uio_ds.model.generation import GenerationResult, MemoryStream, generate
from uio_ds.model.memory_model import (
    DecoderOutput,
    DocumentOutput,
    MemoryKV,
    PositionRangeError,
    UIOMemoryModel,
    default_device,
    resolve_device,
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
    "default_device",
    "generate",
    "resolve_device",
    "segment_targets",
    "split_segments",
]
