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
import os
import typing
from dataclasses import dataclass, field
from typing import Any

from uio_ds.config import ConfigError, UIOConfig

ALGORITHMS = ("full", "tbptt", "incremental", "unbiased")
"""The gradient strategies of ``uio_ds.algo``, by name."""
GRAPH_MODES = ("keep", "offload", "recompute", "recompute_offload")
"""Where the incremental strategies keep retained encoder graphs; the config adds "auto"."""
# The configs that ship with the package: configs/deepspeed (ZeRO stages) and configs/train (runs)
BUNDLED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


def bundled_configs(kind: str) -> list[str]:
    """Names of the configs of ``kind`` ("deepspeed" or "train") that ship with the package."""
    folder = os.path.join(BUNDLED_CONFIGS, kind)
    return sorted(f[: -len(".json")] for f in os.listdir(folder) if f.endswith(".json"))


def find_config(name: str, kind: str) -> str:
    """The file for ``name``: an existing path as given, else the bundled config of that name
    (``zero2``, ``tiny``, with or without ``.json``)."""
    if os.path.isfile(name):
        return name
    stem = name[: -len(".json")] if name.endswith(".json") else name
    bundled = os.path.join(BUNDLED_CONFIGS, kind, stem + ".json")
    if os.sep not in stem and os.path.isfile(bundled):
        return bundled
    what = "DeepSpeed config" if kind == "deepspeed" else "training config"
    raise FileNotFoundError(f"{what} {name!r} not found: give a JSON file or a bundled name "
                            f"({', '.join(bundled_configs(kind))})")


@dataclass
class SourceConfig:
    """One data source: text files or a corpus prepared by ``python -m uio_ds prepare-corpus``."""

    path: str = ""
    """A .jsonl / .json / .parquet / .txt file, a glob of them, or a prepared corpus directory."""

    text_field: str = "text"
    """Record field holding the document text (jsonl / parquet)."""

    weight: float = 1.0
    """Sampling weight when several sources are mixed (normalised over sources)."""

    split: str = "train"
    """Split of a prepared corpus directory to read."""

    name: str = ""
    """Name used in logs (default: the path)."""

    completion_field: str | None = None
    """Prompt-completion records (jsonl only): ``text_field`` holds the prompt and this field the
    completion; the document is prompt + completion and only the completion's tokens are scored
    (the prompt is read, and compressed into memory, but not predicted). Such a document is
    never cut: one longer than ``data.max_tokens`` is skipped and counted."""

    def problems(self, where: str) -> list[str]:
        out = []
        if not self.path:
            out.append(f"{where}.path is empty: give a file, a glob or a prepared corpus directory")
        if self.completion_field is not None and (not isinstance(self.completion_field, str) or not self.completion_field):
            out.append(f"{where}.completion_field={self.completion_field!r}: must be a field name or null")
        elif self.completion_field == self.text_field:
            out.append(f"{where}.completion_field={self.completion_field!r} equals text_field: the prompt and the "
                       "completion must be different fields")
        if not isinstance(self.weight, (int, float)) or self.weight <= 0:
            out.append(f"{where}.weight={self.weight!r}: must be a positive number")
        return out


@dataclass
class DataConfig:
    """Documents, how they are cut and batched."""

    sources: list[SourceConfig] = field(default_factory=list)
    """The data sources, mixed by weight."""

    documents_per_step: int = 1
    """Documents each rank reads per optimizer step (their gradients are summed)."""

    min_tokens: int = 2
    """Documents (or pieces) shorter than this are skipped and counted."""

    max_tokens: int | None = None
    """Longer documents are cut into consecutive pieces of at most this many tokens (None: no cut)."""

    cache_dir: str = "cache/tokens"
    """Where tokenised sources are cached (a datasets Arrow directory per source and tokenizer)."""

    seed: int = 0
    """Seed of the document order."""

    autoencode_tokens: int | None = None
    """Auto-encoding task: cut documents into pieces of this many tokens and train on [x ; x], so the
    second segment's loss is reconstruction from the first one's memory (must equal uio.segment_length)."""

    def problems(self) -> list[str]:
        out = []
        if self.autoencode_tokens is not None and (not isinstance(self.autoencode_tokens, int)
                                                   or self.autoencode_tokens < 2):
            out.append(f"data.autoencode_tokens={self.autoencode_tokens!r}: must be an integer >= 2 or null")
        if self.autoencode_tokens is not None and any(s.completion_field for s in self.sources):
            out.append("data.autoencode_tokens is set and a source has completion_field: auto-encoding scores "
                       "the copy of every piece, so prompt-completion sources cannot take part; drop one of the two")
        if not self.sources:
            out.append("data.sources is empty: give at least one source, e.g. {\"path\": \"data/kjv\"}")
        for i, s in enumerate(self.sources):
            out += s.problems(f"data.sources[{i}]")
        if not isinstance(self.documents_per_step, int) or self.documents_per_step < 1:
            out.append(f"data.documents_per_step={self.documents_per_step!r}: must be an integer >= 1")
        if not isinstance(self.min_tokens, int) or self.min_tokens < 2:
            out.append(f"data.min_tokens={self.min_tokens!r}: must be >= 2 (one token scores nothing)")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < self.min_tokens):
            out.append(f"data.max_tokens={self.max_tokens!r}: must be an integer >= data.min_tokens or null")
        return out


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

    seed: int = 0
    """Seed of torch (dropout) and of every generator not seeded elsewhere."""

    def __post_init__(self) -> None:
        problems = []
        if not self.model_path:
            problems.append("model_path is empty: give a local model directory (e.g. models/smollm2)")
        problems += self.data.problems() + self.algorithm.problems() + self.optim.problems()
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
        problems: list[str] = [f"{key}={value}: must be a finite number" for key, value in _non_finite(data)]
        if problems:  # NaN and Infinity parse as JSON numbers; no option takes one
            raise ConfigError("training config", problems)
        built = _build(cls, data, "", problems)
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


# What a resumed run may change: the length and rate of the run, its outputs, and options that
# change how the same computation runs. Any other difference changes the trajectory (the data,
# its order, the model, the memory shape, the gradient), so the resume would not be exact.
RESUME_MAY_CHANGE = ("steps", "optim.", "save_every", "keep_last", "log_every", "max_bad_steps", "output_dir",
                     "init_from", "uio.attention", "uio.decoder_recompute", "algorithm.graph_mode", "algorithm.encode_batch_size",
                     "data.cache_dir")


def _flatten(value: Any, where: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{where}.{key}" if where else key).items()}
    return {where: list(value) if isinstance(value, tuple) else value}


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The differences between the training config a checkpoint was written with and ``new``
    (both ``TrainConfig.to_dict()``), as ``key: old -> new``: (those a resume may apply, those
    that change the run's trajectory)."""
    before, after = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(new)))
    allowed, trajectory = [], []
    for key in sorted(set(before) | set(after)):
        old, value = before.get(key, "(unset)"), after.get(key, "(unset)")
        if old == value:
            continue
        change = f"{key}: {json.dumps(old)} -> {json.dumps(value)}"
        may = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)
        (allowed if may else trajectory).append(change)
    return allowed, trajectory


def _non_finite(value: Any, where: str = "") -> list[tuple[str, float]]:
    """(key, value) of every NaN or infinite number inside ``value``."""
    if isinstance(value, float) and not math.isfinite(value):
        return [(where or "config", value)]
    if isinstance(value, dict):
        return [x for k, v in value.items() for x in _non_finite(v, f"{where}.{k}" if where else str(k))]
    if isinstance(value, (list, tuple)):
        return [x for i, v in enumerate(value) for x in _non_finite(v, f"{where}[{i}]")]
    return []


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """``data`` with each ``a.b.c=value`` set (value parsed as JSON when it parses, else a string)."""
    data = json.loads(json.dumps(data))
    for item in overrides:
        if "=" not in item:
            raise ConfigError("training config", [f"override {item!r}: expected key.path=value"])
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        node = data
        parts = key.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError("training config", [f"override {item!r}: {p} is not a section"])
        node[parts[-1]] = value
    return data


def _build(cls, data: Any, where: str, problems: list[str]):
    """Instantiate dataclass ``cls`` from ``data``, collecting problems instead of stopping at the first."""
    if not isinstance(data, dict):
        problems.append(f"{where or 'config'} must be a JSON object, got {type(data).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        problems.append(f"{where or 'config'}: unknown option(s) {unknown}; known: {sorted(known)}")
    kwargs = {}
    for name in known & set(data):
        value, hint, here = data[name], hints[name], f"{where}.{name}" if where else name
        if hint is UIOConfig:
            try:
                kwargs[name] = UIOConfig.from_dict(value) if isinstance(value, dict) else value
            except ConfigError as err:
                problems += [f"uio.{p}" for p in err.problems]
                continue
        elif dataclasses.is_dataclass(hint):
            value = _build(hint, value, here, problems)
            if value is None:
                continue
            kwargs[name] = value
        elif typing.get_origin(hint) is list and dataclasses.is_dataclass(typing.get_args(hint)[0]):
            if not isinstance(value, list):
                problems.append(f"{here} must be a list")
                continue
            items = [_build(typing.get_args(hint)[0], v, f"{here}[{i}]", problems) for i, v in enumerate(value)]
            kwargs[name] = [v for v in items if v is not None]
        elif typing.get_origin(hint) is tuple and isinstance(value, list):
            kwargs[name] = tuple(value)
        else:
            kwargs[name] = value
    if problems:
        return None
    try:
        return cls(**kwargs)
    except ConfigError as err:
        problems += err.problems
        return None
