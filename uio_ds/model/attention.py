"""One choice of attention kernel for encoder and decoder.

The memory model runs through the base model's own attention layers, so the
kernel is the transformers ``attn_implementation``. Every backend sees the
memory K/V as a prefix cache with bottom-right causal alignment (each query
sees all memory slots plus its causal past), which transformers builds from
the cache length: flash-attn aligns causal masks bottom-right natively, SDPA
and eager get an explicit mask.
"""

from __future__ import annotations

import contextlib
import importlib.util
from typing import Iterator

import torch

_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def flash_attn_available() -> bool:
    """True when the ``flash_attn`` package is importable and a CUDA device is present."""
    return importlib.util.find_spec("flash_attn") is not None and torch.cuda.is_available()


def resolve_attention(requested: str, dtype: torch.dtype) -> str:
    """Map a ``UIOConfig.attention`` value to a transformers ``attn_implementation``.

    'auto' picks flash-attn on CUDA for fp16/bf16 when it is installed, torch SDPA otherwise.
    Asking for flash-attn where it cannot run is an error rather than a silent fallback.
    """
    if requested == "auto":
        return "flash_attention_2" if flash_attn_available() and dtype in _FLASH_DTYPES else "sdpa"
    if requested == "flash_attention_2":
        if not flash_attn_available():
            raise RuntimeError(
                "attention='flash_attention_2' needs the flash_attn package and a CUDA GPU "
                "(pip install 'uio_ds[gpu]' on a CUDA machine); use attention='auto' or 'sdpa' on CPU"
            )
        if dtype not in _FLASH_DTYPES:
            raise RuntimeError(
                f"attention='flash_attention_2' runs in float16/bfloat16 only, not {dtype}; "
                "set dtype='bfloat16' or attention='sdpa'"
            )
    return requested


@contextlib.contextmanager
def sdpa_where_masked(config, masked: bool) -> Iterator[None]:
    """Run the base model (its transformers ``config``) through torch SDPA while ``masked``:
    flash-attn takes no arbitrary mask, so a stepwise encoder call, whose mask is not causal,
    switches kernels for its duration (the encoder reads l + m tokens, a small part of the cost);
    the decoder keeps the configured kernel."""
    switch = masked and config._attn_implementation == "flash_attention_2"
    if switch:
        config._attn_implementation = "sdpa"
    try:
        yield
    finally:
        if switch:
            config._attn_implementation = "flash_attention_2"
