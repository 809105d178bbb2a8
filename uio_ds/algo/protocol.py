"""What the gradient strategies and the ZeRO-3 lockstep use of a memory model
(``uio_ds.model.UIOMemoryModel`` provides it)."""

from __future__ import annotations

from typing import Protocol

import torch


class MemoryModel(Protocol):
    """The memory model as the strategies see it."""

    segment_length: int
    num_layers: int
    num_mem_tokens: int
    device: torch.device
    base: torch.nn.Module
    """The base causal LM (the distillation teacher reads through it; lockstep padding reads its
    hidden size)."""
    mem_embeddings: torch.nn.Parameter
    """The ``<mem>`` embeddings (their dtype is the memory's)."""

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor: ...
    def memory_kv(self, memory: torch.Tensor): ...
    def read_memories(self, t: int) -> tuple[int, int]: ...
    def readable_memories(self, num_memories: int) -> int: ...
    def recent_kv(self): ...
    def decode(self, input_ids: torch.Tensor, memory=None, targets=None, *args): ...
    def trainable_parameters(self) -> list[torch.nn.Parameter]: ...
