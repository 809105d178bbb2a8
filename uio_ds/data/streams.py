"""Streams of training documents: mixed by weight, sharded over ranks, resumable.

The parts: ``sources`` (files and records), ``tokenise``, ``cache``, ``documents`` (pieces), here
the streams.

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

import random
from dataclasses import dataclass, field

import numpy as np

from uio_ds.config import DataConfig, SourceConfig
from uio_ds.data.cache import default_log, tokenize_source
from uio_ds.data.documents import document_pieces, make_document, source_limits
from uio_ds.data.files import source_files
from uio_ds.data.sources import Counts, Item, iter_source, skipped_summary
from uio_ds.data.tokenise import Tokenise


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
            pieces, skipped = document_pieces(np.asarray(ds.data.column("length")), **source_limits(config, source))
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
            out.append(make_document(row["input_ids"][start:stop], row["score_spans"], bool(self.config.autoencode_tokens),
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
        self.limits = source_limits(config, source)
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

    def __init__(self, config: DataConfig, tokenizer, world_size: int = 1, rank: int = 0, log=default_log):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.config, self.world_size, self.rank = config, world_size, rank
        self.readers = [_SourceReader(i, s, config, tokenizer, world_size, rank, log)
                        for i, s in enumerate(config.sources)]
        for reader in self.readers:  # a share without one usable document is refused now, before any model loads
            start = reader.state_dict()
            reader.next_piece()
            reader.load_state_dict(start)
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
            out.append(make_document(ids, spans, False, self.readers[source].source.objective))
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


def build_stream(config: DataConfig, tokenizer, world_size: int = 1, rank: int = 0, log=default_log):
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
        summary = skipped_summary(source.name or source.path, stats)
        if summary:
            log(summary)
    stream = DocumentStream(datasets, config, world_size, rank)
    info["skipped_pieces"] = stream.skipped  # too short, or a whole document too long
    if stream.skipped:
        log(f"data: skipped {stream.skipped} document(s) or piece(s) shorter than data.min_tokens={config.min_tokens}"
            + (f" or whole documents longer than the token limit (data.max_tokens={config.max_tokens})"
               if config.max_tokens else ""))
    info["pieces"] = [len(p) for p in stream.pieces]
    return stream, info
