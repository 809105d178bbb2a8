"""The shapes a memory model reads off its base model and its UIO config (a mixin of
``UIOMemoryModel``, which sets ``self.base`` and ``self.config``)."""

from __future__ import annotations

from torch import nn


class ModelShapes:
    """Layers, heads, positions and segment sizes: read-only views of ``base`` and ``config``."""

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.model.layers

    @property
    def num_layers(self) -> int:
        return self.base.config.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return self.base.config.num_key_value_heads

    @property
    def head_dim(self) -> int:
        cfg = self.base.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @property
    def num_mem_tokens(self) -> int:
        return self.config.num_mem_tokens

    @property
    def segment_length(self) -> int:
        return self.config.segment_length

    @property
    def recent_segments(self) -> int:
        """k: segments the decoder reads raw before its own (``recent_tokens / segment_length``)."""
        return self.config.recent_tokens // self.segment_length

    @property
    def reads_memory(self) -> bool:
        """False under ``memory_window=0``: the decoder reads only the raw window and sinks, so no
        segment needs compressing."""
        return self.config.memory_window != 0

    @property
    def max_positions(self) -> int:
        return self.base.config.max_position_embeddings

    @property
    def vocab_size(self) -> int:
        """Rows of the input embedding: every token id must be below it."""
        return self.base.get_input_embeddings().num_embeddings
