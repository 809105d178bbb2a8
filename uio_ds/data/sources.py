"""Records of a data source, checked one by one.

A source is files (a path or a glob) or a directory that ``datasets`` saved (``uio_ds.data.files``
reads them). Every format is read into the same records, by the source's kind
(``SourceConfig.kind``):

* text: ``{"text"}``, records of a group joined (``group_by``);
* completion and instruction without a chat template: ``{"prompt", "completion"}``;
* chat, and instruction with a chat template: ``{"messages": [{"role", "content"}, ...]}``.

``iter_source`` yields ``Item``s: a good record, or a bad one with its reason and place. Its
position (file index, item index in the file) lets a stream stop anywhere and start there again.
Bad records are counted (``Counts``) and summarised (``skipped_summary``); ``read_texts`` gives a
text source's documents whole.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Iterator

from uio_ds.config import SourceConfig
from uio_ds.data.files import Undecodable, raw_items, source_files


@dataclass
class Item:
    """One record of a source: ``record`` (the kind's fields) or ``bad`` (why it was skipped)."""

    where: str
    record: dict | None = None
    bad: str | None = None
    key: tuple | None = None  # group key (kind text with group_by)


UNRENDERED = "the chat template refuses the turns or does not render them as prefixes of the whole"


@dataclass
class Counts:
    """Items read (documents and bad records), the bad ones by reason, with the places of the first few."""

    records: int = 0
    documents: int = 0
    skipped: dict[str, int] = field(default_factory=dict)
    examples: list[str] = field(default_factory=list)

    def add(self, item: Item, max_examples: int = 5) -> bool:
        """Count ``item``; True when it is the first bad one of its place."""
        self.records += 1
        if item.bad is None:
            self.documents += 1
            return False
        self.skipped[item.bad] = self.skipped.get(item.bad, 0) + 1
        if len(self.examples) < max_examples:
            self.examples.append(f"{item.where}: {item.bad}")
            return True
        return False

    def unrendered(self, n: int) -> None:
        """``n`` documents counted as good turned out not to render (a chat template that refuses them)."""
        if n:
            self.skipped[UNRENDERED] = self.skipped.get(UNRENDERED, 0) + n
            self.documents -= n

    def merge(self, other: dict, max_examples: int = 5) -> None:
        """Add another part's counts (``to_dict()``), after this one's."""
        self.records += other["records"]
        self.documents += other["documents"]
        for reason, n in other["skipped"].items():
            self.skipped[reason] = self.skipped.get(reason, 0) + n
        self.examples += other["examples"][: max(0, max_examples - len(self.examples))]

    @property
    def num_skipped(self) -> int:
        return sum(self.skipped.values())

    def to_dict(self) -> dict:
        return {"records": self.records, "documents": self.documents, "skipped": dict(self.skipped),
                "examples": list(self.examples)}


# ----------------------------------------------------------------------------- records by kind


def _string_fields(value: dict, names) -> str | None:
    for name in names:
        if name not in value or value[name] is None:
            return f"no field {name!r}"
        if not isinstance(value[name], str):
            return f"field {name!r} is {type(value[name]).__name__}, not a string"
    return None


def _messages(turns) -> tuple[list[dict] | None, str | None]:
    if not isinstance(turns, list) or not turns:
        return None, "messages is not a non-empty list"
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict) or not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
            return None, f"turn {i} is not an object with string 'role' and 'content'"
        out.append({"role": turn["role"], "content": turn["content"]})
    if not any(t["role"] == "assistant" for t in out):
        return None, "no assistant turn (nothing to score)"
    return out, None


def make_record(value, source: SourceConfig) -> tuple[dict | None, str | None]:
    """The kind's record from one decoded item, or (None, reason)."""
    if not isinstance(value, dict):
        return None, "record is not a JSON object"
    kind = source.resolved_kind
    if kind == "text":
        bad = _string_fields(value, (source.text_field,))
        if bad is None and not value[source.text_field].strip():
            bad = "empty text"
        if bad is None and any(k not in value for k in source.group_by):
            bad = f"missing group key(s) {[k for k in source.group_by if k not in value]}"
        return (None, bad) if bad else ({"text": value[source.text_field]}, None)
    if kind == "completion":
        bad = _string_fields(value, (source.text_field, source.completion_field))
        if bad is None and not value[source.completion_field].strip():
            bad = "empty completion"
        return (None, bad) if bad else ({"prompt": value[source.text_field],
                                         "completion": value[source.completion_field]}, None)
    if kind == "instruction":
        bad = _string_fields(value, ("instruction", "output"))
        extra = value.get("input")
        if bad is None and extra is not None and not isinstance(extra, str):
            bad = f"field 'input' is {type(extra).__name__}, not a string"
        if bad is None and not value["output"].strip():
            bad = "empty output"
        if bad:
            return None, bad
        instruction = value["instruction"] + (f"\n\n{extra}" if extra and extra.strip() else "")
        if source.chat_template:
            return {"messages": [{"role": "user", "content": instruction},
                                 {"role": "assistant", "content": value["output"]}]}, None
        return {"prompt": source.prompt_template.replace("{instruction}", instruction),
                "completion": " " + value["output"].lstrip()}, None
    messages, bad = _messages(value.get(source.messages_field))
    if bad:
        return None, (f"no field {source.messages_field!r}" if source.messages_field not in value else bad)
    return {"messages": messages}, None


def iter_source(source: SourceConfig, files: list[str], start: tuple[int, int] = (0, 0),
                file_indices: list[int] | None = None,
                byte_range: tuple[int, int] | None = None) -> Iterator[tuple[tuple[int, int], Item]]:
    """((file index, item index at which this document starts), item) for the source's documents in
    file order, from position ``start``. Text records with ``group_by`` are joined while consecutive
    records of a file share the key; bad items are yielded too (``Item.bad``), so the caller counts
    them. ``file_indices`` restricts reading to those files (a rank's share of a stream);
    ``byte_range`` to part of a single uncompressed JSON-lines file (see ``raw_items``)."""
    indices = file_indices if file_indices is not None else list(range(len(files)))
    grouping = bool(source.group_by) and source.resolved_kind == "text"
    for fi in indices:
        if fi < start[0]:
            continue
        first = start[1] if fi == start[0] else 0
        group: list[str] = []
        group_key, group_start, group_where = None, first, ""
        item_index = first
        for where, value in raw_items(files[fi], first, source.split, byte_range):
            position = item_index
            item_index += 1
            if value is None:  # blank line
                continue
            if isinstance(value, Undecodable):
                yield (fi, position), Item(where, bad=str(value))
                continue
            record, bad = make_record(value, source)
            if bad:
                yield (fi, position), Item(where, bad=bad)
                continue
            if not grouping:
                yield (fi, position), Item(where, record)
                continue
            key = tuple(json.dumps(value[k], sort_keys=True) for k in source.group_by)
            if group and key != group_key:
                yield (fi, group_start), Item(group_where, {"text": "\n".join(group)}, key=group_key)
                group = []
            if not group:
                group_key, group_start, group_where = key, position, where
            group.append(record["text"].strip())
        if group:
            yield (fi, group_start), Item(group_where, {"text": "\n".join(group)}, key=group_key)


def skipped_summary(name: str, counts: dict) -> str | None:
    """One line on the bad records a source skipped (``Counts.to_dict()``), or None when there were none."""
    if not counts["skipped"]:
        return None
    reasons = ", ".join(f"{n} {reason}" for reason, n in counts["skipped"].items())
    return (f"data source {name}: {counts['documents']} documents from {counts['records']} records; skipped "
            f"{sum(counts['skipped'].values())} bad record(s) ({reasons}); first: " + "; ".join(counts["examples"][:3]))


def read_texts(source: SourceConfig, log=None) -> tuple[list[str], dict]:
    """Document texts of a text source (for evaluation and pre-training), with its record counts.
    Bad records are skipped and counted, and summarised through ``log`` as training does; a source
    without one usable document is refused (ValueError naming the file and why)."""
    files = source_files(source)
    texts, counts = [], Counts()
    for _, item in iter_source(source, files):
        counts.add(item)
        if item.record is not None:
            texts.append(item.record["text"])
    info = counts.to_dict()
    if not texts:
        raise ValueError(f"data source {source.path!r} has no usable document ({info['records']} records"
                         + (f"; skipped {info['skipped']}; first: {'; '.join(info['examples'][:3])}"
                            if info["skipped"] else "") + ")")
    summary = skipped_summary(source.name or source.path, info)
    if summary and log is not None:
        log(summary)
    return texts, info
