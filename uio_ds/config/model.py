"""Configuration of the UIO memory model.

Every option is a dataclass field with a docstring. ``__post_init__`` collects
every problem and raises one ``ValueError`` that names each bad option and how
to fix it; nothing is silently rewritten.
"""

from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from typing import Any

from uio_ds.config.base import ConfigError

CONFIG_NAME = "uio_config.json"

ATTENTION_BACKENDS = ("auto", "flash_attention_2", "sdpa", "eager")
DTYPES = ("float32", "bfloat16", "float16")
MEM_INITS = ("vocab_mean", "normal")
POSITION_OVERFLOW_POLICIES = ("error", "drop_oldest")
MEMORY_LAYOUTS = ("appended", "stepwise")
TRANSFER_TARGETS = ("k_proj", "v_proj")
ENCODER_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass
class LoRAConfig:
    """One LoRA adapter on the base model's linear layers."""

    rank: int = 128
    """LoRA rank r (the paper uses 128)."""

    alpha: float = 512.0
    """LoRA alpha; the update is scaled by alpha / rank (the paper uses 512)."""

    dropout: float = 0.0
    """Dropout on the LoRA input. Keep 0 for exact gradient checks between algorithms."""

    target_modules: tuple[str, ...] = ("q_proj", "v_proj")
    """Names of the linear layers (inside each decoder layer) that get the adapter."""

    def problems(self, prefix: str, allowed: tuple[str, ...]) -> list[str]:
        out = []
        if not isinstance(self.rank, int) or self.rank < 1:
            out.append(f"{prefix}.rank={self.rank!r}: must be an integer >= 1 (e.g. 128)")
        if not isinstance(self.alpha, (int, float)) or self.alpha <= 0:
            out.append(f"{prefix}.alpha={self.alpha!r}: must be a positive number (e.g. 4 * rank)")
        if not isinstance(self.dropout, (int, float)) or not 0.0 <= self.dropout < 1.0:
            out.append(f"{prefix}.dropout={self.dropout!r}: must be in [0, 1)")
        targets = tuple(self.target_modules) if isinstance(self.target_modules, (list, tuple)) else ()
        if not targets:
            out.append(f"{prefix}.target_modules={self.target_modules!r}: give a non-empty list out of {list(allowed)}")
        bad = [t for t in targets if t not in allowed]
        if bad:
            out.append(f"{prefix}.target_modules: {bad} not allowed here; choose from {list(allowed)}")
        if len(set(targets)) != len(targets):
            out.append(f"{prefix}.target_modules={list(targets)}: remove the duplicates")
        return out


def _default_encoder_lora() -> LoRAConfig:
    return LoRAConfig(target_modules=("q_proj", "v_proj"))


def _default_transfer_lora() -> LoRAConfig:
    return LoRAConfig(target_modules=("k_proj", "v_proj"))


@dataclass
class UIOConfig:
    """The UIO memory model: segmenting, compression, adapters, numerics."""

    segment_length: int = 1024
    """l: tokens per segment. Each full segment is compressed into ``num_mem_tokens`` memory slots."""

    compression_ratio: int = 32
    """l / m. Must divide ``segment_length``; 32 gives 32 <mem> tokens per 1K segment, 8 gives 128."""

    encoder_lora: LoRAConfig = field(default_factory=_default_encoder_lora)
    """Encoder adapter (paper: W_Q and W_V, r=128, alpha=512)."""

    transfer_lora: LoRAConfig = field(default_factory=_default_transfer_lora)
    """Transfer-head adapter on W_K and W_V, applied to the memory hidden states only."""

    decoder_lora: LoRAConfig | None = None
    """Optional decoder adapter (the paper's "future work"): a LoRA used in every decoder pass,
    trained with the memory, so the decoder can learn to read it. None (default): the decoder
    is the frozen base model, as in the paper."""

    train_transfer: bool = True
    """False: the transfer head's LoRA is not trained or used, so the memory K/V are the frozen
    base model's own k/v projections of the memory (the paper's "without transfer head" ablation)."""

    memory_layout: str = "appended"
    """How the encoder reads ``[segment ; <mem> x m]``. 'appended' (the paper's text): the
    ``<mem>`` tokens follow the segment at positions l..l+m-1 with plain causal attention, each
    reading the whole segment and the earlier ``<mem>`` tokens. 'stepwise' (the official UIO-LLMs
    code's layout): ``<mem>`` token i reads the first (i+1)*l/m segment tokens and itself, at the
    position right after them, so each memory token summarises a growing prefix. Saved with the
    trained parts; parts saved before this option existed are 'appended'."""

    mem_init: str = "vocab_mean"
    """Initial <mem> embeddings: 'vocab_mean' (every slot = mean input embedding) or 'normal'
    (Gaussian with the input embeddings' standard deviation, seeded by ``seed``)."""

    attention: str = "auto"
    """Attention kernel: 'auto' (flash-attn on CUDA when installed, else torch SDPA),
    'flash_attention_2', 'sdpa', or 'eager' (for debugging)."""

    dtype: str = "float32"
    """Parameter dtype of the base model and the trainable parts: float32, bfloat16 or float16."""

    position_overflow: str = "error"
    """What to do when [memories ; segment] would pass the base model's position range:
    'error' refuses before any work; 'drop_oldest' keeps only the most recent memories that fit."""

    memory_window: int | None = None
    """Read only the most recent N segment memories (None: every memory that fits the position
    range). A runtime option: trained parts may be evaluated with another window. 0 reads no
    memory at all, only the raw window (``recent_tokens``) and sinks (``sink_tokens``): the
    sliding-window baseline at the same layout, for evaluation."""

    recent_tokens: int = 0
    """A raw recent window: the decoder of a segment also reads the raw K/V of the last
    ``recent_tokens`` tokens before it (a multiple of ``segment_length``: the last k segments as the
    decoder itself read them, kept as the Compressive Transformer keeps recent memory raw), and
    memories only of the segments before those. The decoder then starts from what a sliding
    window sees, and memory has to add only what the window lost. 0: memories alone (the paper).
    A runtime option; the gradient does not flow through the raw window (its K/V are detached)."""

    sink_tokens: int = 0
    """Attention sinks: once the text's first ``sink_tokens`` tokens have left the raw window, the
    decoder still reads their raw K/V (as the decoder read them), ahead of everything else:
    ``[sinks ; memories ; raw window ; segment]``. A frozen decoder puts much of its attention on a
    text's first tokens (StreamingLLM); without them a sliding window collapses. With
    ``memory_window=0`` this is StreamingLLM reading l tokens at a time (tested). A runtime
    option, like ``recent_tokens``; 0: no sinks (the paper)."""

    decoder_recompute: bool = False
    """Activation recompute in the decoder pass under autograd: each decoder layer keeps only its
    input and is run again at backward time (the memory-for-time trade of gradient
    checkpointing), so a pass's activations shrink to one layer's. Gradients are unchanged. A
    runtime option."""

    seed: int = 0
    """Seed for the initialisation of the trainable parts."""

    def __post_init__(self) -> None:
        problems = []
        for name in ("encoder_lora", "transfer_lora", "decoder_lora"):
            value = getattr(self, name)
            if isinstance(value, dict):
                known = {f.name for f in dataclasses.fields(LoRAConfig)}
                unknown = sorted(set(value) - known)
                if unknown:
                    problems.append(f"{name}: unknown option(s) {unknown}; known: {sorted(known)}")
                    value = {k: v for k, v in value.items() if k in known}
                setattr(self, name, LoRAConfig(**_tuple_targets(value)))
            elif not isinstance(value, LoRAConfig) and not (name == "decoder_lora" and value is None):
                problems.append(f"{name}={value!r}: give an object like "
                                '{"rank": 8, "alpha": 16, "target_modules": ["q_proj", "v_proj"]}'
                                + (" or null" if name == "decoder_lora" else ""))
                setattr(self, name, LoRAConfig() if name != "decoder_lora" else None)
        l, r = self.segment_length, self.compression_ratio
        if not isinstance(l, int) or isinstance(l, bool) or l < 2:
            problems.append(f"segment_length={l!r}: must be an integer >= 2 (the paper uses 1024)")
        if not isinstance(r, int) or isinstance(r, bool) or r < 1:
            problems.append(f"compression_ratio={r!r}: must be an integer >= 1 (e.g. 8 or 32)")
        elif isinstance(l, int) and l >= 2 and l % r != 0:
            divisors = [d for d in (2, 4, 8, 16, 32, 64) if l % d == 0]
            problems.append(
                f"compression_ratio={r} does not divide segment_length={l}: choose a ratio "
                f"out of {divisors} or a segment_length that is a multiple of {r}"
            )
        elif isinstance(l, int) and r > l:
            problems.append(f"compression_ratio={r} exceeds segment_length={l}: no memory slot would remain")
        problems += self.encoder_lora.problems("encoder_lora", ENCODER_TARGETS)
        problems += self.transfer_lora.problems("transfer_lora", TRANSFER_TARGETS)
        if self.decoder_lora is not None:
            problems += self.decoder_lora.problems("decoder_lora", ENCODER_TARGETS)
        w = self.memory_window
        k, s = self.recent_tokens, self.sink_tokens
        if not isinstance(k, int) or isinstance(k, bool) or k < 0:
            problems.append(f"recent_tokens={k!r}: must be an integer >= 0 (0: no raw window)")
        elif isinstance(l, int) and l >= 2 and k % l:
            problems.append(f"recent_tokens={k} is not a multiple of segment_length={l}: the raw window holds whole "
                            f"segments; use {k // l * l} or {(k // l + 1) * l}")
        if not isinstance(s, int) or isinstance(s, bool) or s < 0:
            problems.append(f"sink_tokens={s!r}: must be an integer >= 0 (0: no attention sinks)")
        if w is not None and (not isinstance(w, int) or isinstance(w, bool) or w < 0):
            problems.append(f"memory_window={w!r}: must be null (every memory) or an integer >= 0")
        elif w == 0 and not (k or s):
            problems.append("memory_window=0 reads no memory and there is no raw window (recent_tokens=0, "
                            "sink_tokens=0): that is the base reading each segment alone; evaluate the "
                            "'no_memory' method instead, or give recent_tokens / sink_tokens")
        for name in ("train_transfer", "decoder_recompute"):
            if not isinstance(getattr(self, name), bool):
                problems.append(f"{name}={getattr(self, name)!r}: must be true or false")
        for name, allowed in (
            ("mem_init", MEM_INITS),
            ("attention", ATTENTION_BACKENDS),
            ("dtype", DTYPES),
            ("position_overflow", POSITION_OVERFLOW_POLICIES),
            ("memory_layout", MEMORY_LAYOUTS),
        ):
            value = getattr(self, name)
            if value not in allowed:
                problems.append(f"{name}={value!r}: choose one of {list(allowed)}")
        if problems:
            raise ConfigError("UIOConfig", problems)

    @property
    def num_mem_tokens(self) -> int:
        """m = l / ratio: memory slots per segment."""
        return self.segment_length // self.compression_ratio

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        for key in ("encoder_lora", "transfer_lora", "decoder_lora"):
            if out[key] is not None:
                out[key]["target_modules"] = list(out[key]["target_modules"])
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "UIOConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError("UIOConfig", [f"unknown option(s) {unknown}; known options: {sorted(known)}"])
        return cls(**data)

    def save(self, directory: str, extra: dict[str, Any] | None = None) -> str:
        """Write ``uio_config.json`` (plus ``extra`` metadata under its own key) into ``directory``."""
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, CONFIG_NAME)
        payload = {"uio": self.to_dict(), **({"base_model": extra} if extra else {})}
        with open(path, "w") as f:
            json.dump(payload, f, indent=2, sort_keys=True)
        return path

    @classmethod
    def load(cls, directory: str) -> tuple["UIOConfig", dict[str, Any]]:
        """Read ``uio_config.json`` from ``directory``; returns the config and the base-model metadata."""
        path = os.path.join(directory, CONFIG_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} not found: '{directory}' is not a saved UIO model "
                f"(expected the directory written by UIOMemoryModel.save_trained)"
            )
        with open(path) as f:
            payload = json.load(f)
        if "uio" not in payload:
            raise ConfigError("UIOConfig", [f"{path} has no 'uio' section; re-save it with save_trained"])
        # Parts saved before memory_layout existed were trained with the appended layout.
        return cls.from_dict({"memory_layout": "appended", **payload["uio"]}), payload.get("base_model", {})


def _tuple_targets(d: dict[str, Any]) -> dict[str, Any]:
    d = dict(d)
    if isinstance(d.get("target_modules"), list):
        d["target_modules"] = tuple(d["target_modules"])
    return d

