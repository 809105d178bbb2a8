"""Configuration of a training run: model, data, algorithm, optimisation, outputs.

A run's config is one JSON file (``launch/configs/*.json``) plus ``--set a.b=value``
overrides. ``TrainConfig.from_dict`` builds the nested dataclasses and collects every
problem (unknown keys, bad values, bad combinations) into one ``ConfigError`` before
any model or data is touched. The DeepSpeed config is DeepSpeed's own file; the engine
fills its "auto" values from this config and checks that the two agree.
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any

from uio_ds.config.base import ConfigError, build_dataclass, field_defaults, non_finite
from uio_ds.config.data import DataConfig
from uio_ds.config.files import apply_overrides, config_changes, find_config
from uio_ds.config.model import UIOConfig
from uio_ds.config.objective import ObjectiveConfig

ALGORITHMS = ("full", "tbptt", "incremental", "unbiased")
"""The gradient strategies of ``uio_ds.algo``, by name."""
GRAPH_MODES = ("keep", "offload", "recompute", "recompute_offload")
"""Where the incremental strategies keep retained encoder graphs; the config adds "auto"."""


@dataclass
class AlgorithmConfig:
    """The gradient strategy (uio_ds.algo)."""

    name: str = "unbiased"
    """full, tbptt, incremental or unbiased."""

    window: int | None = 4
    """S: memories that take gradient per decoder step (null = all, for incremental)."""

    compensate: bool = True
    """unbiased only: multiply new contributions by max(1, (t-1)/S)."""

    graph_mode: str = "auto"
    """Retained encoder graphs: keep, offload (to CPU, with the decoder's saved activations),
    recompute (rebuilt at backward), recompute_offload (rebuilt, and the decoder's saved
    activations on the CPU); auto = offload when the DeepSpeed config asks for CPU activation
    checkpointing, else keep (under ZeRO-3: recompute_offload, else recompute)."""

    encode_batch_size: int | None = 8
    """Segments per batched encoder call when memories are computed in parallel without a graph
    (bounds that call's activation memory; null = all at once)."""

    seed: int = 0
    """Seed of the reservoir."""

    def problems(self) -> list[str]:
        out = []
        if self.name not in ALGORITHMS:
            out.append(f"algorithm.name={self.name!r}: choose one of {list(ALGORITHMS)}")
        if self.graph_mode not in ("auto", *GRAPH_MODES):
            out.append(f"algorithm.graph_mode={self.graph_mode!r}: choose one of {['auto', *GRAPH_MODES]}")
        if self.window is not None and (not isinstance(self.window, int) or self.window < 1):
            out.append(f"algorithm.window={self.window!r}: must be an integer >= 1 or null")
        if self.name in ("tbptt", "unbiased") and self.window is None:
            out.append(f"algorithm.window is null but {self.name} needs a window S >= 1")
        if self.name in ("full", "tbptt") and self.graph_mode not in ("auto", "keep"):
            out.append(f"algorithm.graph_mode={self.graph_mode!r} applies to incremental/unbiased only")
        return out


@dataclass
class OptimConfig:
    """AdamW with linear warm-up and cosine decay."""

    lr: float = 1e-4
    """Peak learning rate of AdamW."""
    weight_decay: float = 0.0
    """AdamW's decoupled weight decay."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's (beta1, beta2)."""
    eps: float = 1e-8
    """AdamW's epsilon."""
    warmup_steps: int = 0
    """Linear warm-up from 0 to ``lr`` over this many steps."""
    min_lr_ratio: float = 0.1
    """The cosine decays to ``lr * min_lr_ratio`` at the last step."""
    grad_clip: float = 1.0
    """Clip the global gradient norm to this (0 disables)."""

    def lr_multiplier(self, step: int, total_steps: int) -> float:
        """Learning-rate factor for the optimizer step with index ``step`` (0-based): linear warm-up
        reaching 1 at the last warm-up step, then a cosine to ``min_lr_ratio`` at the last step."""
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, total_steps - self.warmup_steps - 1)
        progress = min(1.0, (step - self.warmup_steps) / span)
        return self.min_lr_ratio + (1 - self.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))

    def problems(self) -> list[str]:
        out = []
        if not isinstance(self.lr, (int, float)) or self.lr <= 0:
            out.append(f"optim.lr={self.lr!r}: must be > 0")
        if not isinstance(self.warmup_steps, int) or self.warmup_steps < 0:
            out.append(f"optim.warmup_steps={self.warmup_steps!r}: must be an integer >= 0")
        if not isinstance(self.min_lr_ratio, (int, float)) or not 0 <= self.min_lr_ratio <= 1:
            out.append(f"optim.min_lr_ratio={self.min_lr_ratio!r}: must be in [0, 1]")
        if not isinstance(self.grad_clip, (int, float)) or self.grad_clip < 0:
            out.append(f"optim.grad_clip={self.grad_clip!r}: must be >= 0")
        if not isinstance(self.weight_decay, (int, float)) or self.weight_decay < 0:
            out.append(f"optim.weight_decay={self.weight_decay!r}: must be >= 0")
        return out


@dataclass
class TrainConfig:
    """A whole training run."""

    model_path: str = ""
    """Local base model directory (from_pretrained path)."""

    uio: UIOConfig = field(default_factory=UIOConfig)
    """The memory model."""

    init_from: str | None = None
    """Directory of trained UIO parts (save_trained) to start from; its UIO config must equal ``uio``."""

    data: DataConfig = field(default_factory=DataConfig)
    algorithm: AlgorithmConfig = field(default_factory=AlgorithmConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)

    steps: int = 100
    """Optimizer steps."""

    output_dir: str = "runs/uio"
    """Checkpoints (``checkpoints/``), TensorBoard events (``tensorboard/``), per-step ``metrics.jsonl``
    and the exported parts (``final/``)."""

    log_every: int = 1
    """Log to the console, TensorBoard and ``metrics.jsonl`` every N steps."""

    save_every: int = 0
    """Save a checkpoint every N steps (0: only at the end)."""

    keep_last: int = 2
    """Checkpoints kept on disk (older ones are deleted after a newer one is complete)."""

    max_bad_steps: int = 3
    """Stop the run (no export) after this many consecutive steps with a non-finite loss or
    gradient (each is skipped: no update), or when the first this-many steps all have a zero
    gradient (nothing is being trained)."""

    max_part_growth: float | None = 1000.0
    """Stop without exporting when the largest absolute value of the trained parts has grown past
    this many times its value at the start of the run (a diverged run: its parts are of no use);
    null exports whatever the values."""

    seed: int = 0
    """Seed of torch (dropout) and of every generator not seeded elsewhere."""

    def __post_init__(self) -> None:
        problems = []
        if not self.model_path:
            problems.append("model_path is empty: give a local model directory (e.g. models/smollm2)")
        problems += self.data.problems() + self.algorithm.problems() + self.objective.problems() + self.optim.problems()
        for name in ("steps", "log_every"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                problems.append(f"{name}={v!r}: must be an integer >= 1")
        if not isinstance(self.save_every, int) or self.save_every < 0:
            problems.append(f"save_every={self.save_every!r}: must be an integer >= 0")
        if not isinstance(self.keep_last, int) or self.keep_last < 1:
            problems.append(f"keep_last={self.keep_last!r}: must be an integer >= 1")
        if not isinstance(self.max_bad_steps, int) or self.max_bad_steps < 1:
            problems.append(f"max_bad_steps={self.max_bad_steps!r}: must be an integer >= 1")
        growth = self.max_part_growth
        if growth is not None and (isinstance(growth, bool) or not isinstance(growth, (int, float)) or growth <= 1):
            problems.append(f"max_part_growth={growth!r}: must be a number > 1 or null")
        if self.objective.regularize and self.uio.decoder_lora is None:
            problems.append(f"objective.regularize={self.objective.regularize} keeps a decoder LoRA close to the base, "
                            "but uio.decoder_lora is not set: set one or drop the weight")
        if self.uio.memory_window == 0:
            problems.append("uio.memory_window=0 reads no memory: nothing the run trains would get a gradient; "
                            "train with null or N >= 1 memories (0 is for evaluating the raw window alone)")
        if self.data.autoencode_tokens is not None and self.data.autoencode_tokens != self.uio.segment_length:
            problems.append(f"data.autoencode_tokens={self.data.autoencode_tokens} must equal uio.segment_length="
                            f"{self.uio.segment_length}: the copy must start exactly at the second segment")
        if problems:
            raise ConfigError("training config", problems)

    def to_dict(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        out["uio"] = self.uio.to_dict()
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        problems: list[str] = [f"{key}={value}: must be a finite number" for key, value in non_finite(data)]
        if problems:  # NaN and Infinity parse as JSON numbers; no option takes one
            raise ConfigError("training config", problems)
        built = build_dataclass(cls, data, "", problems)
        if problems:
            raise ConfigError("training config", problems)
        return built

    @classmethod
    def from_file(cls, path: str, overrides: list[str] | None = None) -> "TrainConfig":
        """Read a JSON config (a path or a bundled name, see ``find_config``) and apply ``a.b=value`` overrides (values parsed as JSON, else strings)."""
        path = find_config(path, "train")
        try:
            with open(path) as f:
                data = json.load(f)
        except json.JSONDecodeError as err:
            raise ConfigError("training config", [f"{path} is not valid JSON: {err}"]) from None
        return cls.from_dict(apply_overrides(data, overrides or []))

    def changes_since(self, saved: dict[str, Any]) -> tuple[list[str], list[str]]:
        """How this config differs from ``saved`` (the ``to_dict()`` a checkpoint was written
        with): (changes a resume may apply, changes of the run's trajectory), see ``config_changes``."""
        return config_changes(saved, self.to_dict(), field_defaults(TrainConfig))

