"""The data a run reads: its sources (files, globs, saved datasets, of text, completion,
instruction or chat records) and how documents are cut and batched."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from uio_ds.config.objective import ObjectiveConfig

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
