"""What a request asks for and what its consumer receives: ``SamplingParams`` (checked before
a request is queued), ``Event`` (text deltas, then one final event) and ``Usage``."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SamplingParams:
    max_tokens: int = 256
    temperature: float = 1.0
    """0 decodes greedily."""
    top_p: float = 1.0
    stop: list[str] = field(default_factory=list)
    seed: int | None = None

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.max_tokens, int) or self.max_tokens < 1:
            out.append(f"max_tokens={self.max_tokens!r}: must be an integer >= 1")
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature <= 2:
            out.append(f"temperature={self.temperature!r}: must be between 0 and 2")
        if not isinstance(self.top_p, (int, float)) or not 0 < self.top_p <= 1:
            out.append(f"top_p={self.top_p!r}: must be in (0, 1]")
        if len(self.stop) > 4 or not all(isinstance(s, str) and s for s in self.stop):
            out.append(f"stop={self.stop!r}: at most 4 non-empty strings")
        return out


@dataclass
class Usage:
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int = 0
    """Prompt tokens already in the session's memory, not read again."""
    memory_tokens: int = 0
    """Memory tokens (compressed K/V entries) the decoder reads at the end of the request."""
    cache_hits: int = 0
    """Segments of this request read from the memory cache instead of compressed."""
    cache_misses: int = 0
    """Segments of this request compressed (and then cached), with a memory cache."""

    def to_dict(self) -> dict:
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": self.completion_tokens,
                "total_tokens": self.prompt_tokens + self.completion_tokens}


@dataclass
class Event:
    """What a request's consumer receives: text deltas, then one final event."""

    text: str = ""
    finish_reason: str | None = None  # "stop" or "length" on the final event
    usage: Usage | None = None
    error: str | None = None
    token_ids: list[int] | None = None  # on the final event: every generated token, stop token included
