"""The UIO memory model (encoder, transfer head, decoder) and streaming generation."""

from uio_ds.model.generation import GenerationResult, MemoryStream, generate
from uio_ds.model.kv import MemoryKV
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.outputs import DecoderOutput, DocumentOutput
from uio_ds.model.positions import PositionRangeError, segment_targets, split_segments
from uio_ds.utils.devices import default_device, resolve_device

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
