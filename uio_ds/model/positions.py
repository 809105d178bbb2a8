"""Position arithmetic of the memory model: how a text is cut into segments, the targets of a
segment, the encoder's stepwise layout, and how many positions the decoder's calls use
(memories, raw recent window, segment) against the base model's position range."""

from __future__ import annotations

import torch

from uio_ds.config import UIOConfig
from uio_ds.formats import IGNORE_INDEX


class PositionRangeError(ValueError):
    """[memories ; segment] would pass the base model's position range."""


def split_segments(length: int, segment_length: int) -> list[tuple[int, int]]:
    """(start, stop) of each segment of a ``length``-token text: full segments, then a residual of 1..l tokens."""
    if length < 1:
        raise ValueError("cannot segment an empty text: it has no tokens")
    return [(s, min(s + segment_length, length)) for s in range(0, length, segment_length)]


def segment_targets(input_ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Next-token targets of positions [start, stop): target i is token i+1, across the segment border
    (pass the labels instead of the ids to leave tokens marked ``IGNORE_INDEX`` unscored).

    The document's last token has no successor and is marked ``IGNORE_INDEX``, so every
    token after the first is scored exactly once over a document.
    """
    targets = input_ids[:, start + 1 : stop + 1]
    if targets.shape[1] < stop - start:
        pad = input_ids.new_full((input_ids.shape[0], stop - start - targets.shape[1]), IGNORE_INDEX)
        targets = torch.cat([targets, pad], dim=1)
    return targets


def stepwise_layout(n: int, m: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and visibility of the 'stepwise' encoder layout over ``[segment (n) ; <mem> x m]``.

    ``<mem>`` token i reads the segment's first e_i = ceil((i+1) * n / m) tokens and itself, and
    sits at RoPE position e_i, right after the last token it reads; segment tokens are causal
    among themselves and never see a ``<mem>`` token. For a full segment (n = l) e_i = (i+1) * l/m,
    the layout of the official UIO-LLMs code. Returns ``positions`` (n+m,) and ``visible``
    (n+m, n+m), True where a query (row) may attend to a key (column).
    """
    ends = ((torch.arange(m, device=device) + 1) * n + m - 1) // m
    positions = torch.cat([torch.arange(n, device=device), ends])
    keys = torch.arange(n + m, device=device)
    visible = keys.unsqueeze(0) <= torch.arange(n + m, device=device).unsqueeze(1)  # causal
    visible[n:, :n] = keys[:n].unsqueeze(0) < ends.unsqueeze(1)
    visible[n:, n:] = torch.eye(m, dtype=torch.bool, device=device)
    return positions, visible


def peak_positions(config: UIOConfig, total_tokens: int) -> int:
    """Largest number of positions any decoder call uses while reading ``total_tokens`` tokens."""
    l, m, w = config.segment_length, config.num_mem_tokens, config.memory_window
    k = config.recent_tokens // l
    c = (total_tokens - 1) // l

    def used(t: int, n: int) -> int:  # segment t of n tokens: sinks, its memories, its raw window, itself
        memories = max(0, t - k)
        sinks = min(config.sink_tokens, memories * l)  # the text's first tokens, once out of the window
        return sinks + (min(memories, w) if w is not None else memories) * m + min(k, t) * l + n

    last = used(c, total_tokens - c * l)
    return max(last, used(c - 1, l)) if c >= 1 else last


def max_tokens_supported(config: UIOConfig, limit: int) -> int | None:
    """Longest text whose every decoder call fits in ``limit`` positions (policy 'error'); None
    when a ``memory_window`` keeps every decoder call in range whatever the length."""
    l, m = config.segment_length, config.num_mem_tokens
    raw = config.recent_tokens + config.sink_tokens
    if config.memory_window is not None and config.memory_window * m + raw + l <= limit:
        return None
    if raw:
        # the largest text whose peak fits: peak_positions grows with the length
        low, high = 0, (limit // m + 2) * l
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if peak_positions(config, mid) <= limit else (low, mid - 1)
        return low
    # A full segment still fits after c memories while c*m + l <= limit; after one more
    # memory, a final residual can use whatever positions are left.
    c = (limit - l) // m
    return (c + 1) * l + max(0, limit - (c + 1) * m)


def length_problem(config: UIOConfig, total_tokens: int, limit: int) -> str | None:
    """Why a text of ``total_tokens`` tokens would pass ``limit`` positions under policy 'error'
    (None when it fits, or under another policy)."""
    if config.position_overflow != "error" or peak_positions(config, total_tokens) <= limit:
        return None
    return (f"{total_tokens} tokens need {peak_positions(config, total_tokens)} positions but the base model has "
            f"max_position_embeddings={limit}; the longest supported text is "
            f"{max_tokens_supported(config, limit)} tokens at segment_length={config.segment_length}, "
            f"compression_ratio={config.compression_ratio}; use a larger compression_ratio, "
            "a shorter input, or position_overflow='drop_oldest'")


def droppable_room(config: UIOConfig, limit: int) -> int:
    """Positions left for memories under 'drop_oldest': a full segment, a full raw window and the
    sinks first."""
    return max(0, limit - config.segment_length - config.recent_tokens - config.sink_tokens)


def readable_memories(config: UIOConfig, num_memories: int, limit: int) -> int:
    """How many of the ``num_memories`` most recent segment memories a decoder call reads: all of
    them, but at most ``memory_window``, and under 'drop_oldest' what fits beside a full segment
    and a full raw window."""
    if config.memory_window is not None:
        num_memories = min(num_memories, config.memory_window)
    if config.position_overflow != "drop_oldest":
        return num_memories
    return min(num_memories, droppable_room(config, limit) // config.num_mem_tokens)


def read_memories(config: UIOConfig, t: int, limit: int) -> tuple[int, int]:
    """(first, stop): the memories that segment t's decoder reads, ``first..stop-1``: those of the
    segments before its raw window, of which the most recent ``readable_memories``."""
    stop = max(0, t - config.recent_tokens // config.segment_length)
    return stop - readable_memories(config, stop, limit), stop


def fit_memory(config: UIOConfig, memory, query_length: int, raw_tokens: int, limit: int):
    """``memory`` (a ``MemoryKV`` or None) cut to what a decoder call over ``query_length`` tokens
    reads: at most ``memory_window`` memories, then ``position_overflow`` when [memory ; raw
    window ; query] exceeds the base model's ``limit`` positions (``raw_tokens``: what the raw
    recent window and the sinks hold now).

    'error' raises; 'drop_oldest' keeps the most recent floor((max_positions - l - recent - sinks) / m)
    memories, a fixed window that leaves room for a full segment and a full raw window, so
    training and streaming generation see the same memories whatever the query length.
    """
    if query_length > config.segment_length:
        raise ValueError(
            f"decoder input of {query_length} tokens is longer than segment_length={config.segment_length}"
        )
    window = config.memory_window
    if memory is not None and window is not None and memory.num_tokens > window * config.num_mem_tokens:
        memory = memory.token_slice(memory.num_tokens - window * config.num_mem_tokens, memory.num_tokens)
        memory = memory if memory.num_tokens else None  # memory_window=0: the raw window alone
    num_memory = memory.num_tokens if memory is not None else 0
    if config.position_overflow == "drop_oldest":
        keep = droppable_room(config, limit) // config.num_mem_tokens * config.num_mem_tokens
        if num_memory <= keep:
            return memory
        return memory.token_slice(num_memory - keep, num_memory) if keep > 0 else None
    used = num_memory + raw_tokens + query_length
    if used > limit:
        raw = f" + {raw_tokens} raw tokens (window and sinks)" if raw_tokens else ""
        raise PositionRangeError(
            f"{num_memory} memory tokens{raw} + {query_length} segment tokens need {used} positions, "
            f"but the base model has max_position_embeddings={limit} "
            f"(about {max_tokens_supported(config, limit)} tokens of text at segment_length={config.segment_length}, "
            f"compression_ratio={config.compression_ratio}); use a larger compression_ratio, a "
            "shorter input, or position_overflow='drop_oldest'"
        )
    return memory


def encoder_layout(config: UIOConfig, batch: int, n: int, dtype: torch.dtype, device: torch.device) -> dict:
    """Extra arguments of the encoder's base-model call for ``memory_layout``: none for
    'appended' (plain causal attention over positions 0..n+m-1), explicit positions and an
    additive 4D mask for 'stepwise' (see ``stepwise_layout``)."""
    if config.memory_layout == "appended":
        return {}
    positions, visible = stepwise_layout(n, config.num_mem_tokens, device)
    # Additive, not boolean: eager attention adds the mask to the scores as it is.
    mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
    size = n + config.num_mem_tokens
    return {"position_ids": positions.unsqueeze(0).expand(batch, -1),
            "attention_mask": mask.view(1, 1, size, size).expand(batch, 1, size, size)}
