"""Long-context baselines over the same frozen base models: StreamingLLM and HOMER."""

from uio_ds.baselines.homer import HOMER
from uio_ds.baselines.streaming_llm import StreamingLLM

__all__ = ["HOMER", "StreamingLLM"]
