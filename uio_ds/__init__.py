"""uio_ds: UIO-LLMs memory-enhanced long-context language models at DeepSpeed scale."""

__version__ = "0.1.0"

from uio_ds.config import ConfigError, LoRAConfig, UIOConfig  # noqa: E402

__all__ = ["ConfigError", "LoRAConfig", "UIOConfig", "__version__"]
