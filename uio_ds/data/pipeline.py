"""Training documents: read sources, tokenise once (cached through ``datasets``), mix, shard, resume.

Sources are checked before any work (a missing file or an empty glob fails with its path).
Bad records are skipped and counted (see ``uio_ds.data.corpus.group_records``). Each source
is tokenised once per tokenizer and cached as a ``datasets`` Arrow directory. Documents
shorter than ``min_tokens`` are skipped; longer than ``max_tokens`` are cut into pieces.

``DocumentStream`` draws, for every optimizer step, ``world_size * documents_per_step``
pieces: a source by weight, then the next piece of that source's seeded permutation
(a new permutation each epoch). Every rank draws the same sequence and keeps its own
slice, so ranks read different documents and the whole state is a few integers.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import random
from dataclasses import dataclass, field

import torch

from uio_ds.data.corpus import CORPUS_FILE, GroupingStats, group_records
from uio_ds.formats import IGNORE_INDEX
from uio_ds.train_config import DataConfig, SourceConfig

TEXT_SUFFIXES = (".jsonl", ".json", ".parquet", ".txt")


def source_files(source: SourceConfig) -> list[str]:
    """The files of a source, checked to exist and be readable (raises with the path otherwise)."""
    path = source.path
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, CORPUS_FILE)):
            raise FileNotFoundError(
                f"data source {path!r} is a directory but not a prepared corpus (no {CORPUS_FILE}); "
                "give files, a glob, or run `python -m uio_ds prepare-corpus`"
            )
        try:
            with open(os.path.join(path, "dataset_dict.json")) as f:
                splits = json.load(f)["splits"]
        except (OSError, ValueError, KeyError):
            splits = None  # not a datasets DatasetDict on disk: load_from_disk will say what it is
        if splits is not None and source.split not in splits:
            raise ValueError(f"prepared corpus {path!r} has no split {source.split!r} (it has {splits}): set the "
                             "source's \"split\"")
        return [path]
    files = sorted(glob.glob(path)) if any(c in path for c in "*?[") else [path]
    if not files:
        raise FileNotFoundError(f"data source glob {path!r} matches no file")
    for f in files:
        if not os.path.isfile(f):
            raise FileNotFoundError(f"data source file {f!r} not found")
        if not f.endswith(TEXT_SUFFIXES):
            raise ValueError(f"data source file {f!r}: unsupported type; use one of {list(TEXT_SUFFIXES)}")
        if not os.access(f, os.R_OK):
            raise PermissionError(f"data source file {f!r} is not readable")
        if os.path.getsize(f) == 0:
            raise ValueError(f"data source file {f!r} is empty: give a file with documents, or leave it out")
    return files


def read_texts(source: SourceConfig) -> tuple[list[str], GroupingStats]:
    """Document texts of a source, bad records skipped and counted."""
    files = source_files(source)
    if os.path.isdir(files[0]):
        from datasets import load_from_disk

        corpus = load_from_disk(files[0])
        if source.split not in corpus:
            raise ValueError(f"prepared corpus {files[0]} has no split {source.split!r} (it has {list(corpus)})")
        return list(corpus[source.split]["text"]), GroupingStats(records=len(corpus[source.split]))
    texts, stats = [], GroupingStats()
    jsonl = [f for f in files if f.endswith((".jsonl", ".json"))]
    if jsonl:
        docs, stats = group_records(jsonl, source.text_field, group_by=())
        texts += [d["text"] for d in docs]
    for f in files:
        if f.endswith(".parquet"):
            from datasets import load_dataset

            table = load_dataset("parquet", data_files=f, split="train")
            if source.text_field not in table.column_names:
                raise ValueError(f"{f}: no column {source.text_field!r} (columns: {table.column_names})")
            for row, text in enumerate(table[source.text_field]):
                stats.records += 1
                if not isinstance(text, str) or not text.strip():
                    stats.skip("missing, non-string or empty text", f"{f}:row {row}")
                else:
                    texts.append(text)
        elif f.endswith(".txt"):
            stats.records += 1
            try:
                with open(f, encoding="utf-8") as handle:
                    text = handle.read()
            except UnicodeDecodeError:
                stats.skip("undecodable bytes (not UTF-8)", f)
                continue
            if text.strip():
                texts.append(text)
            else:
                stats.skip("empty text", f)
    return texts, stats


def read_prompt_completions(source: SourceConfig) -> tuple[list[tuple[str, str]], GroupingStats]:
    """(prompt, completion) pairs of a prompt-completion source (``completion_field`` set), bad
    records skipped and counted; the texts are kept exactly (a completion's leading space matters)."""
    from uio_ds.data.corpus import iter_records

    files = source_files(source)
    wrong = [f for f in files if os.path.isdir(f) or not f.endswith((".jsonl", ".json"))]
    if wrong:
        raise ValueError(f"data source {source.path!r}: completion_field needs jsonl records; {wrong[0]!r} is not a "
                         ".jsonl / .json file")
    stats, pairs = GroupingStats(), []
    for where, record in iter_records(files, (source.text_field, source.completion_field), stats):
        if not record[source.completion_field].strip():
            stats.skip("empty completion", where)
            continue
        pairs.append((record[source.text_field], record[source.completion_field]))
    return pairs, stats


def completion_document(ids: torch.Tensor, score_from: int) -> dict:
    """A prompt-completion document for the strategies: the tokens before ``score_from`` (the
    prompt) are read but not scored (labels ``IGNORE_INDEX``)."""
    labels = ids.clone()
    labels[..., :score_from] = IGNORE_INDEX
    return {"input_ids": ids, "labels": labels}


def autoencode_document(segment: torch.Tensor) -> dict:
    """An auto-encoding document [x ; x] for a segment x of l tokens: only the copy's tokens after
    its first are scored, so the loss is the reconstruction of x from its memory given x's first
    token (what ``uio_ds.eval.autoencode`` measures), and the decoder never runs on the first copy."""
    return completion_document(torch.cat([segment, segment]), segment.shape[-1] + 1)


def _fingerprint(source: SourceConfig, tokenizer) -> str:
    files = source_files(source)
    parts = []
    for f in files:
        target = os.path.join(f, "dataset_dict.json") if os.path.isdir(f) else f
        st = os.stat(target)
        parts.append([os.path.abspath(f), st.st_size, int(st.st_mtime)])
    vocab = tokenizer.backend_tokenizer.to_str() if hasattr(tokenizer, "backend_tokenizer") else str(tokenizer.get_vocab())
    key = json.dumps([parts, source.text_field, source.split, hashlib.sha1(vocab.encode()).hexdigest()]
                     + ([source.completion_field] if source.completion_field else []))
    return hashlib.sha1(key.encode()).hexdigest()[:16]


def tokenize_source(source: SourceConfig, tokenizer, cache_dir: str, log=print):
    """A ``datasets.Dataset`` with ``input_ids`` per document (and, for a prompt-completion source,
    ``score_from``: the index of the first completion token), built once per source and tokenizer."""
    from datasets import Dataset, load_from_disk

    path = os.path.join(cache_dir, _fingerprint(source, tokenizer))
    if os.path.isfile(os.path.join(path, "uio_stats.json")):
        with open(os.path.join(path, "uio_stats.json")) as f:
            return load_from_disk(path), json.load(f)
    if source.completion_field:
        pairs, stats = read_prompt_completions(source)
        texts = [p for p, _ in pairs]
        columns = {"prompt": texts, "completion": [c for _, c in pairs]}

        def tokenise(batch):
            # Prompt and completion are tokenised apart, so the scored tokens are exactly the completion's.
            prompts = tokenizer(batch["prompt"])["input_ids"]
            completions = tokenizer(batch["completion"], add_special_tokens=False)["input_ids"]
            return {"input_ids": [p + c for p, c in zip(prompts, completions)], "score_from": [len(p) for p in prompts]}
    else:
        texts, stats = read_texts(source)
        columns = {"text": texts}

        def tokenise(batch):
            return {"input_ids": tokenizer(batch["text"])["input_ids"]}
    if not texts:
        raise ValueError(f"data source {source.path!r} has no usable document: {stats.skipped} {stats.examples}")
    dataset = Dataset.from_dict(columns).map(
        tokenise, batched=True, remove_columns=list(columns), desc=f"tokenising {source.name or source.path}"
    )
    info = {"records": stats.records, "skipped": stats.skipped, "examples": stats.examples, "documents": len(texts)}
    staging = f"{path}.tmp-{os.getpid()}"
    dataset.save_to_disk(staging)
    with open(os.path.join(staging, "uio_stats.json"), "w") as f:
        json.dump(info, f)
    if os.path.exists(path):  # another rank finished first: keep its copy
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
    else:
        os.replace(staging, path)
    return load_from_disk(path), info


def document_pieces(lengths: list[int], min_tokens: int, max_tokens: int | None,
                    whole: bool = False) -> tuple[list[tuple], int]:
    """(document, start, stop) pieces: long documents cut at ``max_tokens``, short pieces dropped.
    With ``whole`` a document is never cut: one longer than ``max_tokens`` is dropped.
    Returns the pieces and the number of documents, tails or pieces skipped."""
    pieces, skipped = [], 0
    for i, n in enumerate(lengths):
        if whole:
            if min_tokens <= n <= (max_tokens or n):
                pieces.append((i, 0, n))
            else:
                skipped += 1
            continue
        step = max_tokens or n
        for start in range(0, n, step):
            stop = min(start + step, n)
            if stop - start >= min_tokens:
                pieces.append((i, start, stop))
            else:
                skipped += 1
    return pieces, skipped


@dataclass
class StreamState:
    draws: int = 0
    cursors: list[int] = field(default_factory=list)
    epochs: list[int] = field(default_factory=list)
    mix_rng: object = None


class DocumentStream:
    """Seeded, resumable stream of training documents, sharded over data-parallel ranks."""

    def __init__(self, datasets: list, config: DataConfig, world_size: int = 1, rank: int = 0):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.config, self.world_size, self.rank = config, world_size, rank
        self.datasets = datasets
        self.pieces, self.skipped = [], 0
        cut = config.autoencode_tokens or config.max_tokens
        shortest = config.autoencode_tokens or config.min_tokens
        for ds, source in zip(datasets, config.sources):
            lengths = [len(ids) for ids in ds["input_ids"]]
            pieces, skipped = document_pieces(lengths, shortest, cut, whole=bool(source.completion_field))
            self.pieces.append(pieces)
            self.skipped += skipped
        empty = [config.sources[i].path for i, p in enumerate(self.pieces) if not p]
        if empty:
            raise ValueError(f"data source(s) {empty} have no document of at least {config.min_tokens} tokens "
                             f"(prompt-completion documents also at most data.max_tokens={config.max_tokens})")
        total = sum(s.weight for s in config.sources)
        self.weights = [s.weight / total for s in config.sources]
        self.state = StreamState(cursors=[0] * len(datasets), epochs=[0] * len(datasets))
        self._mix = random.Random(config.seed)
        self._orders: dict[int, tuple[int, list[int]]] = {}

    def _order(self, source: int, epoch: int) -> list[int]:
        cached = self._orders.get(source)
        if cached is None or cached[0] != epoch:  # one permutation per source and epoch, kept per source
            order = list(range(len(self.pieces[source])))
            random.Random(f"{self.config.seed}/{source}/{epoch}").shuffle(order)
            self._orders[source] = (epoch, order)
        return self._orders[source][1]

    def _draw(self) -> tuple[int, int]:
        source = self._mix.choices(range(len(self.weights)), weights=self.weights)[0]
        piece = self._order(source, self.state.epochs[source])[self.state.cursors[source]]
        self.state.cursors[source] += 1
        if self.state.cursors[source] == len(self.pieces[source]):
            self.state.cursors[source] = 0
            self.state.epochs[source] += 1
        self.state.draws += 1
        return source, piece

    def next_documents(self) -> list:
        """This rank's documents for the next optimizer step: 1-D token tensors (lengths may differ),
        and for prompt-completion sources dicts with ``input_ids`` and ``labels`` (the prompt's
        tokens marked ``IGNORE_INDEX``: read, not scored)."""
        k = self.config.documents_per_step
        drawn = [self._draw() for _ in range(self.world_size * k)]
        mine = drawn[self.rank * k : (self.rank + 1) * k]
        out = []
        for source, piece in mine:
            doc, start, stop = self.pieces[source][piece]
            ids = self.datasets[source][doc]["input_ids"][start:stop]
            if self.config.autoencode_tokens:
                out.append(autoencode_document(torch.tensor(ids, dtype=torch.long)))
                continue
            ids = torch.tensor(ids, dtype=torch.long)
            if "score_from" in self.datasets[source].column_names:
                out.append(completion_document(ids, self.datasets[source][doc]["score_from"]))
            else:
                out.append(ids)
        return out

    def state_dict(self) -> dict:
        return {"draws": self.state.draws, "cursors": list(self.state.cursors), "epochs": list(self.state.epochs),
                "mix_rng": self._mix.getstate(), "world_size": self.world_size}

    def load_state_dict(self, state: dict) -> None:
        self.state = StreamState(state["draws"], list(state["cursors"]), list(state["epochs"]))
        self._mix.setstate(_tuplify(state["mix_rng"]))


def _tuplify(x):
    return tuple(_tuplify(v) for v in x) if isinstance(x, list) else x


def build_stream(config: DataConfig, tokenizer, world_size: int = 1, rank: int = 0, log=print) -> tuple[DocumentStream, dict]:
    """Tokenise (or load from cache) every source and build the stream; returns it with data statistics."""
    datasets, info = [], {}
    for source in config.sources:
        ds, stats = tokenize_source(source, tokenizer, config.cache_dir, log=log)
        datasets.append(ds)
        info[source.name or source.path] = stats
        if stats["skipped"]:
            reasons = ", ".join(f"{n} {reason}" for reason, n in stats["skipped"].items())
            log(f"data source {source.name or source.path}: {stats['documents']} documents from {stats['records']} "
                f"records; skipped {sum(stats['skipped'].values())} bad record(s) ({reasons}); first: "
                + "; ".join(stats["examples"][:3]))
    stream = DocumentStream(datasets, config, world_size, rank)
    info["skipped_pieces"] = stream.skipped  # too short, or a prompt-completion document too long
    if stream.skipped:
        log(f"data: skipped {stream.skipped} document(s) or piece(s) shorter than data.min_tokens={config.min_tokens}"
            + (f" or prompt-completion documents longer than data.max_tokens={config.max_tokens}"
               if config.max_tokens else ""))
    info["pieces"] = [len(p) for p in stream.pieces]
    return stream, info
