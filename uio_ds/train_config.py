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


SOURCE_KINDS = ("text", "completion", "instruction", "chat")
"""What a source's records hold (``uio_ds.data.sources``)."""
ALPACA_PROMPT = ("Below is an instruction that describes a task. Write a response that appropriately completes "
                 "the request.\n\n### Instruction:\n{instruction}\n\n### Response:")
"""The prompt of instruction records without a chat template (as LongAlpaca was trained)."""


@dataclass
class SourceConfig:
    """One data source: files of records (jsonl / JSON array / parquet / arrow / text, optionally
    compressed), a glob of them, or a directory saved by ``datasets`` (a prepared corpus among them)."""

    path: str = ""
    """A file, a glob of files, or a ``datasets`` directory. Files: .jsonl / .json (JSON lines or one
    JSON array), .parquet, .arrow, .txt (one document per file); .jsonl and .json and .txt may end in
    .gz, .zst, .bz2 or .xz."""

    text_field: str = "text"
    """Record field holding the document text (kind text) or the prompt (kind completion)."""

    weight: float = 1.0
    """Sampling weight when several sources are mixed (normalised over sources)."""

    split: str = "train"
    """Split of a ``datasets`` directory that holds several (a DatasetDict, e.g. a prepared corpus)."""

    name: str = ""
    """Name used in logs (default: the path)."""

    kind: str | None = None
    """text (the whole document is scored), completion (``text_field`` is read, ``completion_field``
    scored), instruction (``instruction`` [+ ``input``] read, ``output`` scored: LongAlpaca's records)
    or chat (``messages_field``: a list of {"role", "content"}; every assistant turn scored, the others
    read). Default: completion when ``completion_field`` is set, chat when ``chat_template`` is, else text."""

    completion_field: str | None = None
    """Prompt-completion records: ``text_field`` holds the prompt and this field the completion; the
    document is prompt + completion and only the completion's tokens are scored (the prompt is read,
    and compressed into memory, but not predicted). Such a document is never cut: one longer than
    the source's token limit is skipped and counted."""

    messages_field: str = "messages"
    """Field of a chat record holding its turns."""

    chat_template: bool = False
    """Render chat records (and instruction records, as one user turn and one assistant turn) with the
    tokenizer's chat template; its end-of-turn tokens are scored with each assistant turn."""

    prompt_template: str = ALPACA_PROMPT
    """Prompt of an instruction record without a chat template; ``{instruction}`` is replaced by the
    instruction, followed by a blank line and the record's ``input`` when it has one."""

    eos: bool = True
    """Append the tokenizer's EOS token to every completion (kinds completion and instruction without
    a chat template) and score it, so the model learns where an answer ends."""

    group_by: list[str] = field(default_factory=list)
    """Kind text: consecutive records of one file with equal values of these fields are joined (by a
    newline) into one document, e.g. ["book"] for verse records. Empty: every record is a document."""

    max_tokens: int | None = None
    """This source's limit on document length (default: ``data.max_tokens``)."""

    truncate: bool = False
    """Keep only the first ``max_tokens`` of a longer text document instead of cutting it into pieces
    (the official UIO-LLMs mixture truncates its books to 131,072 tokens)."""

    objective: dict[str, float] | None = None
    """This source's objective weights, e.g. {"lm": 1.0, "distill": 0.0} for answer-only fact data
    next to books trained by distillation (a weight not given is the default: lm 1, distill 0);
    null: the run's ``objective``."""

    @property
    def resolved_kind(self) -> str:
        if self.kind is not None:
            return self.kind
        return "completion" if self.completion_field else "chat" if self.chat_template else "text"

    def problems(self, where: str) -> list[str]:
        out = []
        if not self.path:
            out.append(f"{where}.path is empty: give a file, a glob or a datasets directory")
        if self.kind is not None and self.kind not in SOURCE_KINDS:
            out.append(f"{where}.kind={self.kind!r}: choose one of {list(SOURCE_KINDS)}")
        kind = self.resolved_kind
        if self.completion_field is not None and (not isinstance(self.completion_field, str) or not self.completion_field):
            out.append(f"{where}.completion_field={self.completion_field!r}: must be a field name or null")
        elif self.completion_field == self.text_field:
            out.append(f"{where}.completion_field={self.completion_field!r} equals text_field: the prompt and the "
                       "completion must be different fields")
        if kind == "completion" and not self.completion_field:
            out.append(f"{where}.kind is completion but completion_field is not set: name the completion's field")
        if kind != "completion" and self.completion_field:
            out.append(f"{where}.completion_field is set but kind is {kind}: drop one of the two")
        if kind == "chat" and not self.chat_template:
            out.append(f"{where}.kind is chat: set chat_template: true (chat records are rendered with the "
                       "tokenizer's chat template)")
        if kind == "text" and self.chat_template:
            out.append(f"{where}.chat_template is set for kind text: set kind to chat or instruction")
        if self.group_by and kind != "text":
            out.append(f"{where}.group_by={self.group_by!r}: only text records are grouped into documents")
        if not isinstance(self.group_by, list) or not all(isinstance(k, str) for k in self.group_by):
            out.append(f"{where}.group_by={self.group_by!r}: must be a list of field names")
        if kind == "instruction" and not self.chat_template and "{instruction}" not in self.prompt_template:
            out.append(f"{where}.prompt_template has no {{instruction}}: the instruction would be lost")
        if self.max_tokens is not None and (not isinstance(self.max_tokens, int) or self.max_tokens < 2):
            out.append(f"{where}.max_tokens={self.max_tokens!r}: must be an integer >= 2 or null")
        if self.truncate and kind != "text":
            out.append(f"{where}.truncate is set for kind {kind}: only text documents are truncated (the others "
                       "are kept whole or skipped)")
        if not isinstance(self.weight, (int, float)) or self.weight <= 0:
            out.append(f"{where}.weight={self.weight!r}: must be a positive number")
        if self.objective is not None:
            known = {f.name for f in dataclasses.fields(ObjectiveConfig)}
            if not isinstance(self.objective, dict) or set(self.objective) - known:
                out.append(f"{where}.objective={self.objective!r}: give weights by name, e.g. "
                           '{"lm": 1.0, "distill": 0.0}')
            else:
                out += [p.replace("objective.", f"{where}.objective.")
                        for p in ObjectiveConfig(**self.objective).problems()]
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

    streaming: bool = False
    """Read the sources as streams instead of tokenising them into the cache first: for corpora larger
    than the disk or memory. Documents are read, tokenised and cut on the fly, in file order (shuffle
    the shards beforehand), each rank reading its own share; the position in every source is part of
    the checkpoint. Needs ``max_tokens``, so the longest document is known before training."""

    num_proc: int | None = None
    """Processes that read and tokenise a source into the cache (default: every core this process
    may use; 1 for a source of a few MB)."""

    def problems(self) -> list[str]:
        out = []
        if self.streaming and self.max_tokens is None:
            out.append("data.streaming needs data.max_tokens: a stream's longest document is not known "
                       "before training, so the limit must be")
        if self.streaming and self.autoencode_tokens is not None:
            out.append("data.streaming and data.autoencode_tokens: auto-encoding reads a cached corpus; "
                       "drop one of the two")
        if self.num_proc is not None and (not isinstance(self.num_proc, int) or self.num_proc < 1):
            out.append(f"data.num_proc={self.num_proc!r}: must be an integer >= 1 or null")
        if self.autoencode_tokens is not None and (not isinstance(self.autoencode_tokens, int)
                                                   or self.autoencode_tokens < 2):
            out.append(f"data.autoencode_tokens={self.autoencode_tokens!r}: must be an integer >= 2 or null")
        if self.autoencode_tokens is not None and any(s.resolved_kind != "text" for s in self.sources):
            out.append("data.autoencode_tokens is set and a source is not of kind text: auto-encoding "
                       "scores the copy of every piece, so prompt-completion, instruction and chat sources cannot take part; drop one of the two")
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
class ObjectiveConfig:
    """What each decoder step is trained to do (uio_ds.algo.Objective): the next-token loss,
    distillation from the frozen base reading the whole document, or a weighted sum."""

    lm: float = 1.0
    """Weight of the next-token cross-entropy of the scored tokens."""

    distill: float = 0.0
    """Weight of KL(base with full attention || memory decoder) at the scored tokens. The teacher is
    the frozen base reading the whole document (one more forward pass per segment, no gradient),
    as far as its position range goes; the loss then sits where the far context changes the
    prediction."""

    regularize: float = 0.0
    """Weight of KL(base || decoder LoRA) on each segment read without memory: keeps a decoder LoRA
    (``uio.decoder_lora``) close to the base where memory plays no part, so it keeps modelling
    language. One more pass of each kind per segment."""

    def problems(self) -> list[str]:
        out = []
        for name in ("lm", "distill", "regularize"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                out.append(f"objective.{name}={value!r}: must be a number >= 0")
        if not out and self.lm == 0 and self.distill == 0:
            out.append("objective.lm and objective.distill are both 0, so nothing is trained: give one a weight > 0")
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
        if self.objective.regularize and self.uio.decoder_lora is None:
            problems.append(f"objective.regularize={self.objective.regularize} keeps a decoder LoRA close to the base, "
                            "but uio.decoder_lora is not set: set one or drop the weight")
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
                     "data.cache_dir", "data.num_proc")


def _flatten(value: Any, where: str = "") -> dict[str, Any]:
    if isinstance(value, dict) and value:
        return {k: v for key, item in value.items() for k, v in _flatten(item, f"{where}.{key}" if where else key).items()}
    return {where: list(value) if isinstance(value, tuple) else value}


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """The differences between the training config a checkpoint was written with and ``new``
    (both ``TrainConfig.to_dict()``), as ``key: old -> new``: (those a resume may apply, those
    that change the run's trajectory)."""
    before, after = _flatten(json.loads(json.dumps(saved))), _flatten(json.loads(json.dumps(new)))
    defaults = _flatten(json.loads(json.dumps(_field_defaults(TrainConfig))))
    allowed, trajectory = [], []
    for key in sorted(set(before) | set(after)):
        old, value = before.get(key, "(unset)"), after.get(key, "(unset)")
        if old == value or (old == "(unset)" and key in defaults and value == defaults[key]):
            continue  # an option added since the checkpoint was written, at its default: the same run
        change = f"{key}: {json.dumps(old)} -> {json.dumps(value)}"
        may = any(key == k or (k.endswith(".") and key.startswith(k)) for k in RESUME_MAY_CHANGE)
        (allowed if may else trajectory).append(change)
    return allowed, trajectory


def _field_defaults(cls) -> dict[str, Any]:
    """The defaults of a config dataclass's fields, nested sections as dicts (no validation runs)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            value = f.default_factory()
            out[f.name] = _field_defaults(type(value)) if dataclasses.is_dataclass(value) else value
    return out


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
