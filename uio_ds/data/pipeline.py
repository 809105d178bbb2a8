"""Training documents: read sources, tokenise in parallel (cached by content), mix, shard, resume.

Sources are checked before any work (a missing file or an empty glob fails with its path). Bad
records are skipped and counted, the first few named by file and line (``uio_ds.data.sources``).

Cached mode (the default): each source is read and tokenised once, by ``data.num_proc`` processes
through ``datasets``, into an Arrow directory under ``data.cache_dir`` named by the content of
its files, the source's options and the tokenizer; a second run, or another rank, memory-maps it.
The first rank to take the source's lock file builds it; the others poll for the result (no
collective that could time out on a large corpus) and take over if the builder's heartbeat
stops. ``DocumentStream`` then draws, for every optimizer step, ``world_size *
documents_per_step`` pieces: a source by weight, then the next piece of that source's seeded
permutation (a new permutation each epoch). Every rank draws the same sequence and keeps its
own slice, so ranks read different documents and the whole state is a few integers.

Streaming mode (``data.streaming``): ``StreamingDocumentStream`` reads each source in file order,
tokenising and cutting documents as it goes; each rank reads its own share (whole files when
they divide evenly, else every world_size-th document). Its state is each source's position
(file, item, piece), so a resume continues exactly where the checkpoint was taken.

Documents shorter than ``min_tokens`` are skipped; text longer than the source's token limit is
cut into pieces (or truncated, ``truncate``). Completion, instruction and chat documents are
never cut: one too long is skipped and counted.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import threading
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from uio_ds.config import DataConfig, SourceConfig
from uio_ds.data.sources import Counts, Item, file_format, is_json_lines, iter_source, source_files
from uio_ds.formats import IGNORE_INDEX

__all__ = ["source_files", "read_texts", "tokenize_source", "build_stream", "DocumentStream",
           "StreamingDocumentStream", "document_pieces", "scored_document", "autoencode_document"]

CACHE_VERSION = 2  # bump when the cached columns or their meaning change
STATS_FILE = "uio_stats.json"
LOCK_STALE_S = 60.0  # a lock whose heartbeat is older than this belongs to a dead builder
SMALL_SOURCE_BYTES = 8 << 20  # below this a process pool costs more than it saves


def _default_log(message: str) -> None:
    print(message, flush=True)


# ----------------------------------------------------------------------------- reading whole sources


def read_texts(source: SourceConfig) -> tuple[list[str], dict]:
    """Document texts of a text source (for evaluation and pre-training), with its record counts."""
    files = source_files(source)
    texts, counts = [], Counts()
    for _, item in iter_source(source, files):
        counts.add(item)
        if item.record is not None:
            texts.append(item.record["text"])
    return texts, counts.to_dict()


# ----------------------------------------------------------------------------- tokenisation


class Tokenise:
    """Token ids and scored spans of records of one source kind; picklable for worker processes.

    Returns per record ``input_ids``, ``length`` and ``score_spans`` (flat [start, stop, ...] of
    the scored token ranges; empty for text, where every token is scored) or None when the record
    cannot be rendered (the reason in ``self.last_problem``)."""

    def __init__(self, tokenizer, source: SourceConfig):
        self.tokenizer, self.kind = tokenizer, source.resolved_kind
        self.eos = source.eos
        self.chat = self.kind == "chat" or (self.kind == "instruction" and source.chat_template)
        if self.chat and not getattr(tokenizer, "chat_template", None):
            raise ValueError(f"data source {source.path!r} asks for the tokenizer's chat template, but the tokenizer "
                             "has none: give a model whose tokenizer_config.json has a chat_template, or set "
                             "chat_template: false (instruction records then use prompt_template)")
        if self.eos and not self.chat and self.kind in ("completion", "instruction") and tokenizer.eos_token_id is None:
            raise ValueError(f"data source {source.path!r}: eos is set but the tokenizer has no EOS token; set "
                             "eos: false or give a tokenizer with one")

    def _ids(self, text: str, special: bool = True) -> list[int]:
        return self.tokenizer(text, add_special_tokens=special)["input_ids"]

    def _chat(self, messages: list[dict]) -> tuple[list[int], list[int]] | None:
        from jinja2 import TemplateError

        try:
            return self._render_chat(messages)
        except TemplateError:  # e.g. a template that insists on alternating user and assistant turns
            return None

    def _render_chat(self, messages: list[dict]) -> tuple[list[int], list[int]] | None:
        render = self.tokenizer.apply_chat_template
        ids = list(render(messages, tokenize=True, return_dict=True)["input_ids"])
        spans = []
        for i, turn in enumerate(messages):
            if turn["role"] != "assistant":
                continue
            before = list(render(messages[:i], tokenize=True, add_generation_prompt=True, return_dict=True)["input_ids"])
            through = list(render(messages[: i + 1], tokenize=True, return_dict=True)["input_ids"])
            # the template must render a conversation's start as the start of the whole, or the
            # scored tokens would not be the assistant's
            if ids[: len(through)] != through or through[: len(before)] != before:
                return None
            spans += [len(before), len(through)]
        return ids, spans

    def __call__(self, batch: dict) -> dict:
        out = {"input_ids": [], "length": [], "score_spans": []}
        keep = list(range(len(next(iter(batch.values()), []))))
        if not keep:
            return out
        if self.kind == "text":
            for ids in self.tokenizer([batch["text"][i] for i in keep])["input_ids"]:
                out["input_ids"].append(ids)
                out["score_spans"].append([])
        elif not self.chat:
            prompts = self.tokenizer([batch["prompt"][i] for i in keep])["input_ids"]
            # prompt and completion are tokenised apart, so the scored tokens are exactly the completion's
            completions = self.tokenizer([batch["completion"][i] for i in keep], add_special_tokens=False)["input_ids"]
            tail = [self.tokenizer.eos_token_id] if self.eos else []
            for p, c in zip(prompts, completions):
                out["input_ids"].append(p + c + tail)
                out["score_spans"].append([len(p), len(p) + len(c) + len(tail)])
        else:
            for i in keep:
                rendered = self._chat(batch["messages"][i])
                if rendered is None:
                    continue  # counted by the caller: the template does not render turns as prefixes
                out["input_ids"].append(rendered[0])
                out["score_spans"].append(rendered[1])
        out["length"] = [len(ids) for ids in out["input_ids"]]
        return out


def _token_features():
    from datasets import Features, List, Value

    return Features({"input_ids": List(Value("int32")), "length": Value("int32"), "score_spans": List(Value("int32"))})


SHARD_MIN_BYTES = 32 << 20  # a JSON-lines file is split for parallel reading in parts of at least this


def plan_shards(source: SourceConfig, files: list[str], num_proc: int) -> list[dict]:
    """Work units for the processes that read and tokenise a source: whole files, and large
    uncompressed JSON-lines files cut at line starts into parts, so that ``num_proc`` processes
    have work even when the source is one file (not when records are grouped: a group may not be
    cut)."""
    sizes = [os.path.getsize(f) if not os.path.isdir(f) else 0 for f in files]
    target = max(SHARD_MIN_BYTES, sum(sizes) // max(num_proc, 1) + 1)
    shards = []
    for path, size in zip(files, sizes):
        parts = -(-size // target)
        if parts < 2 or source.group_by or file_format(path)[1] is not None or not is_json_lines(path):
            shards.append({"path": path, "lo": -1, "hi": -1})
            continue
        bounds = [0]
        with open(path, "rb") as f:
            for k in range(1, parts):
                f.seek(max(k * size // parts - 1, bounds[-1]))
                f.readline()  # to the start of the next line
                bounds.append(f.tell())
        bounds.append(size)
        shards += [{"path": path, "lo": lo, "hi": hi} for lo, hi in zip(bounds, bounds[1:]) if hi > lo]
    return shards


def _generate_tokens(shards: list[dict], digests: list[str], source_json: str, tokenizer, report_dir: str,
                     batch_size: int = 256):
    """Rows for ``datasets.Dataset.from_generator``: the tokenised documents of ``shards``, read,
    checked and tokenised in one pass; each shard's record counts go to a file in ``report_dir``
    (this runs in worker processes). ``digests`` only makes the generator's fingerprint follow the
    files' content."""
    source = SourceConfig(**json.loads(source_json))
    tokenise = Tokenise(tokenizer, source)
    for shard in shards:
        counts, batch = Counts(), []
        byte_range = None if shard["lo"] < 0 else (shard["lo"], shard["hi"])

        def flush():
            out = tokenise({k: [r[k] for r in batch] for k in batch[0]})
            counts.unrendered(len(batch) - len(out["input_ids"]))
            batch.clear()
            for ids, length, spans in zip(out["input_ids"], out["length"], out["score_spans"]):
                yield {"input_ids": ids, "length": length, "score_spans": spans}

        for _, item in iter_source(source, [shard["path"]], byte_range=byte_range):
            counts.add(item)
            if item.record is not None:
                batch.append(item.record)
                if len(batch) == batch_size:
                    yield from flush()
        if batch:
            yield from flush()
        with open(_report_path(report_dir, shard), "w") as f:
            json.dump(counts.to_dict(), f)


def _report_path(report_dir: str, shard: dict) -> str:
    return os.path.join(report_dir, hashlib.sha1(f"{shard['path']}|{shard['lo']}".encode()).hexdigest() + ".json")


def _merge_reports(shards: list[dict], report_dir: str) -> Counts:
    """The record counts of all shards, in shard order (the first bad records named first)."""
    total = Counts()
    for shard in shards:
        with open(_report_path(report_dir, shard)) as f:
            total.merge(json.load(f))
    return total


# ----------------------------------------------------------------------------- the cache


def _digest_file(path: str, memo: dict) -> str:
    st = os.stat(path)
    key = f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}|{st.st_ino}"
    if key not in memo:
        h = hashlib.blake2b(digest_size=16)
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 22), b""):
                h.update(block)
        memo[key] = h.hexdigest()
    return memo[key]


def content_digests(files: list[str], cache_dir: str) -> list[str]:
    """One digest per file (of a directory: of all its files), remembered by path, size, mtime and
    inode in ``cache_dir/digests.json`` so that an unchanged corpus is not read again."""
    memo_path = os.path.join(cache_dir, "digests.json")
    try:
        with open(memo_path) as f:
            memo = json.load(f)
    except (OSError, ValueError):
        memo = {}
    size = len(memo)
    digests = []
    for path in files:
        if os.path.isdir(path):
            parts = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
            digests.append(hashlib.sha1(json.dumps(
                [[os.path.relpath(p, path), _digest_file(p, memo)] for p in parts]).encode()).hexdigest())
        else:
            digests.append(_digest_file(path, memo))
    if len(memo) != size:
        os.makedirs(cache_dir, exist_ok=True)
        staging = f"{memo_path}.tmp-{os.getpid()}"
        with open(staging, "w") as f:
            json.dump(memo, f)
        os.replace(staging, memo_path)
    return digests


def tokenizer_digest(tokenizer) -> str:
    vocab = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer.get_vocab())
    extra = [getattr(tokenizer, "chat_template", None) or "", tokenizer.eos_token_id]
    return hashlib.sha1((vocab + json.dumps(extra)).encode()).hexdigest()


def cache_key(source: SourceConfig, files: list[str], tokenizer, cache_dir: str,
              digests: list[str] | None = None) -> str:
    """The cache directory name of a source: its files' content (``digests``, else read through
    ``content_digests``), the options that change its tokens, the tokenizer."""
    digests = digests if digests is not None else content_digests(files, cache_dir)
    options = {k: getattr(source, k) for k in ("text_field", "split", "kind", "completion_field", "messages_field",
                                               "chat_template", "prompt_template", "eos", "group_by")}
    key = json.dumps([CACHE_VERSION, digests, options, tokenizer_digest(tokenizer)],
                     sort_keys=True)
    return hashlib.sha1(key.encode()).hexdigest()[:16]


class _Heartbeat:
    """Touches a lock file every few seconds while its holder works."""

    def __init__(self, path: str, every: float = LOCK_STALE_S / 6):
        self.path, self.every, self._stop = path, every, threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.wait(self.every):
            try:
                os.utime(self.path)
            except OSError:
                return

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def _take_lock(lock: str) -> bool:
    """True if this process now holds ``lock``; a lock left by a dead builder is broken."""
    try:
        fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        try:
            if time.time() - os.path.getmtime(lock) > LOCK_STALE_S:
                os.remove(lock)  # its builder stopped beating: the next try takes it
        except FileNotFoundError:
            pass
        return False
    with os.fdopen(fd, "w") as f:
        f.write(f"{os.uname().nodename} {os.getpid()}\n")
    return True


def default_num_proc(files: list[str]) -> int:
    total = 0
    for path in files:
        if os.path.isdir(path):
            total += sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names)
        else:
            total += os.path.getsize(path)
    if total < SMALL_SOURCE_BYTES:
        return 1
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def tokenize_source(source: SourceConfig, tokenizer, cache_dir: str, log=_default_log, num_proc: int | None = None,
                    poll_s: float = 2.0):
    """The source's tokenised documents as a memory-mapped ``datasets.Dataset`` (``input_ids``,
    ``length``, ``score_spans``) and its record counts; built once per content and tokenizer by
    whichever process takes the lock first, while the others wait for it."""
    from datasets import load_from_disk

    files = source_files(source)
    Tokenise(tokenizer, source)  # a tokenizer that cannot render the source fails here, before any work
    os.makedirs(cache_dir, exist_ok=True)
    digests = content_digests(files, cache_dir)
    path = os.path.join(cache_dir, cache_key(source, files, tokenizer, cache_dir, digests))
    lock = f"{path}.lock"
    while True:
        if os.path.isfile(os.path.join(path, STATS_FILE)):
            with open(os.path.join(path, STATS_FILE)) as f:
                return load_from_disk(path), json.load(f)
        if _take_lock(lock):
            try:
                if not os.path.isfile(os.path.join(path, STATS_FILE)):  # finished between the check and the lock
                    with _Heartbeat(lock):
                        _build(source, files, digests, tokenizer, path, num_proc or default_num_proc(files), log)
            finally:
                os.remove(lock)
            continue
        time.sleep(poll_s)  # another process is building it


def _build(source: SourceConfig, files: list[str], digests: list[str], tokenizer, path: str, num_proc: int,
           log) -> None:
    from datasets import Dataset, disable_progress_bars, enable_progress_bars

    name = source.name or source.path
    started = time.time()
    staging = f"{path}.tmp-{os.uname().nodename}-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    work, reports = os.path.join(staging, "work"), os.path.join(staging, "reports")
    os.makedirs(reports)
    shards = plan_shards(source, files, num_proc)
    digests = dict(zip(files, digests))
    processes = min(num_proc, len(shards))
    try:
        tokens = Dataset.from_generator(
            _generate_tokens, features=_token_features(), cache_dir=work, num_proc=processes if processes > 1 else None,
            gen_kwargs={"shards": shards, "digests": [digests[s["path"]] for s in shards],
                        "source_json": json.dumps({k: getattr(source, k) for k in SourceConfig.__dataclass_fields__}),
                        "tokenizer": tokenizer, "report_dir": reports},
            split="train")
    except Exception:
        # datasets refuses a split without rows: say why there are none, if the reports know
        if len(os.listdir(reports)) == len(shards) and not _merge_reports(shards, reports).documents:
            tokens = None
        else:
            shutil.rmtree(staging, ignore_errors=True)
            raise
    phases = {"read_and_tokenise": time.time() - started}
    counts = _merge_reports(shards, reports)
    if tokens is None or not len(tokens):
        shutil.rmtree(staging, ignore_errors=True)
        raise ValueError(f"data source {source.path!r} has no usable document: {counts.skipped}; first: "
                         f"{counts.examples}")
    disable_progress_bars()
    try:
        tokens.save_to_disk(os.path.join(staging, "out"))
    finally:
        enable_progress_bars()
    phases["save"] = time.time() - started - sum(phases.values())
    info = counts.to_dict()
    info.update(tokens=int(np.asarray(tokens.data.column("length")).sum()), seconds=round(time.time() - started, 1),
                num_proc=processes, shards=len(shards), files=len(files),
                phases={k: round(v, 1) for k, v in phases.items()})
    with open(os.path.join(staging, "out", STATS_FILE), "w") as f:
        json.dump(info, f)
    del tokens
    try:
        os.replace(os.path.join(staging, "out"), path)
    except OSError:  # another builder (a node without this lock file) finished first: keep its copy
        if not os.path.isfile(os.path.join(path, STATS_FILE)):
            raise
    shutil.rmtree(staging, ignore_errors=True)
    log(f"data source {name}: tokenised {info['documents']} documents, {info['tokens']:,} tokens, in "
        f"{info['seconds']} s with {processes} process(es) -> {path}")


# ----------------------------------------------------------------------------- documents


def document_pieces(lengths, min_tokens: int, max_tokens: int | None, whole: bool = False,
                    truncate: bool = False) -> tuple[np.ndarray, int]:
    """(document, start, stop) pieces as an (n, 3) integer array: long documents cut at
    ``max_tokens`` (or, with ``truncate``, only their first piece kept), short pieces dropped. With
    ``whole`` a document is never cut: one longer than ``max_tokens`` is dropped. Returns the
    pieces and the number of documents, tails or pieces skipped."""
    lengths = np.asarray(lengths, dtype=np.int64)
    docs = np.arange(len(lengths))
    if whole or truncate:
        if whole:
            ok = (lengths >= min_tokens) & (lengths <= (max_tokens or np.iinfo(np.int64).max))
            stops = lengths
        else:
            stops = np.minimum(lengths, max_tokens or np.iinfo(np.int64).max)
            ok = stops >= min_tokens
        pieces = np.stack([docs[ok], np.zeros(int(ok.sum()), np.int64), stops[ok]], axis=1)
        return pieces.reshape(-1, 3), int((~ok).sum())
    step = np.where(lengths > 0, max_tokens or np.maximum(lengths, 1), 1)
    counts = -(-lengths // step)  # pieces per document (ceil)
    doc = np.repeat(docs, counts)
    first = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
    start = (np.arange(len(doc)) - np.repeat(first, counts)) * np.repeat(step, counts)
    stop = np.minimum(start + np.repeat(step, counts), np.repeat(lengths, counts))
    ok = stop - start >= min_tokens
    skipped = int((~ok).sum()) + int((lengths == 0).sum())
    return np.stack([doc[ok], start[ok], stop[ok]], axis=1).reshape(-1, 3), skipped


def scored_document(ids: torch.Tensor, spans) -> dict:
    """A document for the strategies whose tokens outside ``spans`` (flat [start, stop, ...]) are
    read but not scored (labels ``IGNORE_INDEX``)."""
    labels = torch.full_like(ids, IGNORE_INDEX)
    for start, stop in zip(spans[0::2], spans[1::2]):
        labels[..., start:stop] = ids[..., start:stop]
    return {"input_ids": ids, "labels": labels}


def autoencode_document(segment: torch.Tensor) -> dict:
    """An auto-encoding document [x ; x] for a segment x of l tokens: only the copy's tokens after
    its first are scored, so the loss is the reconstruction of x from its memory given x's first
    token (what ``uio_ds.eval.autoencode`` measures), and the decoder never runs on the first copy."""
    l = segment.shape[-1]
    return scored_document(torch.cat([segment, segment]), [l + 1, 2 * l])


def _document(ids: list[int], spans: list[int], autoencode: bool, objective: dict | None = None):
    """A training document: a token tensor, or a dict with ``labels`` where only spans are scored,
    and ``objective`` (the source's weights) when the source sets its own."""
    tensor = torch.tensor(ids, dtype=torch.long)
    if autoencode:
        doc = autoencode_document(tensor)
    else:
        doc = scored_document(tensor, spans) if spans else tensor
    if objective is not None:
        doc = dict(doc) if isinstance(doc, dict) else {"input_ids": doc}
        doc["objective"] = dict(objective)
    return doc


def _limits(config: DataConfig, source: SourceConfig) -> dict:
    """How one source's documents become pieces (``document_pieces`` keywords)."""
    if config.autoencode_tokens:
        return {"min_tokens": config.autoencode_tokens, "max_tokens": config.autoencode_tokens}
    return {"min_tokens": config.min_tokens, "max_tokens": source.max_tokens or config.max_tokens,
            "whole": source.resolved_kind != "text", "truncate": source.truncate}


@dataclass
class StreamState:
    draws: int = 0
    cursors: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)


class DocumentStream:
    """Seeded, resumable stream of cached training documents, sharded over data-parallel ranks."""

    def __init__(self, datasets: list, config: DataConfig, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.config, self.world_size, self.rank = config, world_size, rank
        self.datasets = datasets
        self.pieces, self.skipped = [], 0
        for ds, source in zip(datasets, config.sources):
            pieces, skipped = document_pieces(np.asarray(ds.data.column("length")), **_limits(config, source))
            self.pieces.append(pieces)
            self.skipped += skipped
        empty = [config.sources[i].path for i, p in enumerate(self.pieces) if not len(p)]
        if empty:
            raise ValueError(f"data source(s) {empty} have no document of at least {config.min_tokens} tokens "
                             f"(completion, instruction and chat documents also at most the token limit, "
                             f"data.max_tokens={config.max_tokens})")
        total = sum(s.weight for s in config.sources)
        self.weights = [s.weight / total for s in config.sources]
        self.state = StreamState(cursors=[0] * len(datasets), epochs=[0] * len(datasets))
        self._mix = random.Random(config.seed)
        self._orders: dict[int, tuple[int, np.ndarray]] = {}

    @property
    def longest(self) -> int:
        """Tokens of the longest piece this stream can give."""
        return max(int((p[:, 2] - p[:, 1]).max()) for p in self.pieces)

    def _order(self, source: int, epoch: int) -> np.ndarray:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:  # one permutation per source and epoch, kept per source
            rng = np.random.default_rng([self.config.seed, source, epoch])
            self._orders[source] = (epoch, rng.permutation(len(self.pieces[source])))
        return self._orders[source][1]

    def _draw(self) -> tuple[int, int]:
        source = self._mix.choices(range(len(self.weights)), weights=self.weights)[0]
        piece = int(self._order(source, self.state.epochs[source])[self.state.cursors[source]])
        self.state.cursors[source] += 1
        if self.state.cursors[source] == len(self.pieces[source]):
            self.state.cursors[source] = 0
            self.state.epochs[source] += 1
        self.state.draws += 1
        return source, piece

    def next_documents(self) -> list:
        """This rank's documents for the next optimizer step: 1-D token tensors (lengths may differ),
        and for documents not scored whole, dicts with ``input_ids`` and ``labels`` (the tokens
        that are read but not scored marked ``IGNORE_INDEX``)."""
        k = self.config.documents_per_step
        drawn = [self._draw() for _ in range(self.world_size * k)]
        out = []
        for source, piece in drawn[self.rank * k : (self.rank + 1) * k]:
            doc, start, stop = (int(v) for v in self.pieces[source][piece])
            row = self.datasets[source][doc]
            out.append(_document(row["input_ids"][start:stop], row["score_spans"], bool(self.config.autoencode_tokens),
                                 self.config.sources[source].objective))
        return out

    def state_dict(self) -> dict:
        return {"draws": self.state.draws, "cursors": list(self.state.cursors), "epochs": list(self.state.epochs),
                "mix_rng": self._mix.getstate(), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        if "sources" in state:
            raise ValueError("the checkpoint was written by a streaming run (data.streaming: true); resume it with "
                             "the same setting")
        self.state = StreamState(state["draws"], list(state["cursors"]), list(state["epochs"]))
        self._mix.setstate(_tuplify(state["mix_rng"]))


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


# ----------------------------------------------------------------------------- streaming


class _SourceReader:
    """One source read in order for one rank: documents tokenised and cut as they come."""

    def __init__(self, index: int, source: SourceConfig, config: DataConfig, tokenizer, world_size: int, rank: int,
                 log):
        self.index, self.source, self.log = index, source, log
        self.files = source_files(source)
        if len(self.files) >= world_size and len(self.files) % world_size == 0:
            self.share, self.stride = list(range(rank, len(self.files), world_size)), 1  # whole files per rank
        else:
            self.share, self.stride = list(range(len(self.files))), world_size  # every world_size-th document
        self.rank, self.world_size = rank, world_size
        self.tokenise = Tokenise(tokenizer, source)
        self.limits = _limits(config, source)
        self.counts = Counts()
        # position: the current document's first item, how many of its pieces were taken, its number
        self.epoch, self.position, self.piece, self.doc = 0, (self.share[0], 0), 0, -1
        self._items = None
        self._pieces: list[tuple[list[int], list[int]]] = []

    def _open(self) -> None:
        self._items = iter_source(self.source, self.files, start=self.position, file_indices=self.share)

    def _next_document(self) -> bool:
        """Move to the next document of this rank's share; False at the end of the share."""
        for position, item in self._items:
            if self.counts.add(item):
                self.log(f"data source {self.source.name or self.source.path}: skipped {item.where} ({item.bad})")
            if item.bad:
                continue
            self.doc += 1
            if self.doc % self.stride != self.rank % self.stride:
                continue
            self.position, self.piece = position, 0
            self._pieces = self._cut(item)
            return True
        return False

    def _cut(self, item: Item) -> list[tuple[list[int], list[int]]]:
        tokens = self.tokenise({k: [v] for k, v in item.record.items()})
        if not tokens["input_ids"]:
            self.counts.unrendered(1)
            return []
        ids, spans = tokens["input_ids"][0], tokens["score_spans"][0]
        pieces, _ = document_pieces([len(ids)], **self.limits)
        return [(ids[start:stop], spans) for _, start, stop in pieces]

    def next_piece(self) -> tuple[list[int], list[int]]:
        if self._items is None:
            self._open()
        restarts = 0
        while self.piece >= len(self._pieces):
            if not self._next_document():
                restarts += 1
                if restarts > 1 or self.doc < 0:
                    raise ValueError(f"data source {self.source.path!r} gives rank {self.rank} no document of at "
                                     f"least {self.limits['min_tokens']} tokens (within its token limit); counts: "
                                     f"{self.counts.to_dict()}")
                self.epoch += 1  # a stream is read again in the same order
                self.position, self.piece, self.doc, self._pieces = (self.share[0], 0), 0, -1, []
                self._open()
        piece = self._pieces[self.piece]
        self.piece += 1
        return piece

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "file": self.position[0], "item": self.position[1], "piece": self.piece,
                "doc": self.doc, "counts": self.counts.to_dict(), "files": len(self.files)}

    def load_state_dict(self, state: dict) -> None:
        if state["files"] != len(self.files):
            raise ValueError(f"data source {self.source.path!r} had {state['files']} file(s) when the checkpoint was "
                             f"written and has {len(self.files)} now: a stream resumes only over the same files")
        self.epoch, self.position = state["epoch"], (state["file"], state["item"])
        self._pieces, self.piece = [], 0
        if state["doc"] >= 0:
            # read the current document again from its first item, and skip the pieces already taken
            self.doc = state["doc"] - 1
            self._open()
            if not self._next_document():
                raise ValueError(f"data source {self.source.path!r} ends before the checkpoint's position "
                                 f"{self.position}: a stream resumes only over the same files")
            self.piece = state["piece"]
        else:
            self.doc, self._items = -1, None
        counts = state["counts"]  # as saved: the document read again above is not counted twice
        self.counts = Counts(counts["records"], counts["documents"], dict(counts["skipped"]), list(counts["examples"]))


class StreamingDocumentStream:
    """Documents read from the sources as streams (``data.streaming``); every rank reads its own
    share and mixes the sources by weight with its own seeded generator."""

    def __init__(self, config: DataConfig, tokenizer, world_size: int = 1, rank: int = 0, log=_default_log):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.config, self.world_size, self.rank = config, world_size, rank
        self.readers = [_SourceReader(i, s, config, tokenizer, world_size, rank, log)
                        for i, s in enumerate(config.sources)]
        total = sum(s.weight for s in config.sources)
        self.weights = [s.weight / total for s in config.sources]
        self._mix = random.Random(f"{config.seed}/{rank}")
        self.draws = 0

    @property
    def longest(self) -> int:
        return max(r.limits["max_tokens"] for r in self.readers)

    def next_documents(self) -> list:
        out = []
        for _ in range(self.config.documents_per_step):
            source = self._mix.choices(range(len(self.weights)), weights=self.weights)[0]
            ids, spans = self.readers[source].next_piece()
            out.append(_document(ids, spans, False, self.readers[source].source.objective))
            self.draws += 1
        return out

    def stats(self) -> dict:
        return {r.source.name or r.source.path: r.counts.to_dict() for r in self.readers}

    def state_dict(self) -> dict:
        return {"draws": self.draws, "mix_rng": self._mix.getstate(), "world_size": self.world_size,
                "sources": [r.state_dict() for r in self.readers]}

    def load_state_dict(self, state: dict) -> None:
        if "sources" not in state:
            raise ValueError("the checkpoint was written by a run that cached its data (data.streaming: false); "
                             "resume it with the same setting")
        if len(state["sources"]) != len(self.readers):
            raise ValueError(f"the checkpoint's stream has {len(state['sources'])} source(s), the config "
                             f"{len(self.readers)}: resume with the same sources")
        self.draws = state["draws"]
        self._mix.setstate(_tuplify(state["mix_rng"]))
        for reader, saved in zip(self.readers, state["sources"]):
            reader.load_state_dict(saved)


def build_stream(config: DataConfig, tokenizer, world_size: int = 1, rank: int = 0, log=_default_log):
    """The training stream and data statistics: every source tokenised (or loaded from the cache),
    or, with ``data.streaming``, opened as streams."""
    if config.streaming:
        stream = StreamingDocumentStream(config, tokenizer, world_size, rank, log=log)
        return stream, {"streaming": True, "files": {r.source.name or r.source.path: len(r.files) for r in stream.readers}}
    datasets, info = [], {}
    for source in config.sources:
        ds, stats = tokenize_source(source, tokenizer, config.cache_dir, log=log, num_proc=config.num_proc)
        datasets.append(ds)
        info[source.name or source.path] = stats
        if stats["skipped"]:
            reasons = ", ".join(f"{n} {reason}" for reason, n in stats["skipped"].items())
            log(f"data source {source.name or source.path}: {stats['documents']} documents from {stats['records']} "
                f"records; skipped {sum(stats['skipped'].values())} bad record(s) ({reasons}); first: "
                + "; ".join(stats["examples"][:3]))
    stream = DocumentStream(datasets, config, world_size, rank)
    info["skipped_pieces"] = stream.skipped  # too short, or a whole document too long
    if stream.skipped:
        log(f"data: skipped {stream.skipped} document(s) or piece(s) shorter than data.min_tokens={config.min_tokens}"
            + (f" or whole documents longer than the token limit (data.max_tokens={config.max_tokens})"
               if config.max_tokens else ""))
    info["pieces"] = [len(p) for p in stream.pieces]
    return stream, info
