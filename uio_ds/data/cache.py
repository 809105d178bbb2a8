"""The tokenised cache of a source: read and tokenised once, by ``data.num_proc`` processes through
``datasets``, into an Arrow directory under ``data.cache_dir`` named by the content of its
files, the source's options and the tokenizer; a second run, or another rank, memory-maps it.
The first rank to take the source's lock file builds it; the others poll for the result (no
collective that could time out on a large corpus) and take over if the builder's heartbeat
stops."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time

import numpy as np

from uio_ds.config import SourceConfig
from uio_ds.data.files import SourceReadError, file_format, is_json_lines, source_files, source_read_error
from uio_ds.data.sources import Counts, iter_source
from uio_ds.data.tokenise import Tokenise, token_features, tokenizer_digest

CACHE_VERSION = 2  # bump when the cached columns or their meaning change
STATS_FILE = "uio_stats.json"
LOCK_STALE_S = 60.0  # a lock whose heartbeat is older than this belongs to a dead builder
SMALL_SOURCE_BYTES = 8 << 20  # below this a process pool costs more than it saves


def default_log(message: str) -> None:
    print(message, flush=True)


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


def data_digests(sources: list[SourceConfig], cache_dir: str, streaming: bool = False) -> dict[str, str]:
    """One digest per source (by name, else path) of its files in their order: what a checkpoint's
    data position means. Cached mode: of their whole content (``content_digests``, read once and
    remembered in ``cache_dir``). Streaming mode, which reads corpora too large to read twice and
    writes nothing: of each file's size and its first and last MiB (a reordered or rewritten file
    changes them; an edit inside a file that keeps its size and both ends is not seen)."""
    out = {}
    for source in sources:
        files = source_files(source)
        digests = [_sampled_digest(f) for f in files] if streaming else content_digests(files, cache_dir)
        out[source.name or source.path] = hashlib.sha1(json.dumps(digests).encode()).hexdigest()[:16]
    return out


def _sampled_digest(path: str, span: int = 1 << 20) -> str:
    """Size and first and last ``span`` bytes of a file (of a directory: of each of its files)."""
    if os.path.isdir(path):
        parts = sorted(os.path.join(root, name) for root, _, names in os.walk(path) for name in names)
        return hashlib.sha1(json.dumps([[os.path.relpath(p, path), _sampled_digest(p, span)] for p in parts])
                            .encode()).hexdigest()
    digest = hashlib.sha1(str(os.path.getsize(path)).encode())
    with open(path, "rb") as f:
        digest.update(f.read(span))
        if os.path.getsize(path) > span:
            f.seek(max(span, os.path.getsize(path) - span))
            digest.update(f.read(span))
    return digest.hexdigest()


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


def tokenize_source(source: SourceConfig, tokenizer, cache_dir: str, log=default_log, num_proc: int | None = None,
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
    damaged, rebuilt = None, False
    while True:
        if os.path.isfile(os.path.join(path, STATS_FILE)):
            try:
                with open(os.path.join(path, STATS_FILE)) as f:
                    stats = json.load(f)
                return load_from_disk(path), stats
            except Exception as err:  # noqa: BLE001 - a cut or overwritten Arrow file, whatever pyarrow says
                if rebuilt:  # rebuilt here and still unreadable: the disk, not the cache
                    raise OSError(f"the cached tokens in {path} cannot be read ({type(err).__name__}: "
                                  f"{str(err).splitlines()[0][:200]}), even rebuilt: check the disk under "
                                  f"data.cache_dir, or delete {path}") from None
                damaged = f"{type(err).__name__}: {str(err).splitlines()[0][:200]}"
        if _take_lock(lock):
            try:
                if damaged is not None and _readable(path):  # another process rebuilt it meanwhile
                    damaged = None
                if damaged is not None and os.path.isdir(path):  # moved aside first: readers never see half a copy
                    aside = f"{path}.damaged-{os.getpid()}"
                    os.replace(path, aside)
                    shutil.rmtree(aside, ignore_errors=True)
                    log(f"data source {source.name or source.path}: the cached tokens in {path} cannot be read "
                        f"({damaged}): rebuilding them")
                if not os.path.isfile(os.path.join(path, STATS_FILE)):  # finished between the check and the lock
                    with _Heartbeat(lock):
                        _build(source, files, digests, tokenizer, path, num_proc or default_num_proc(files), log)
                    rebuilt = damaged is not None
            finally:
                os.remove(lock)
            continue
        time.sleep(poll_s)  # another process is building it (or rebuilding a damaged copy)


def _readable(path: str) -> bool:
    from datasets import load_from_disk

    try:
        load_from_disk(path)
        return True
    except Exception:  # noqa: BLE001 - unreadable, whatever the cause
        return False


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
            _generate_tokens, features=token_features(), cache_dir=work, num_proc=processes if processes > 1 else None,
            gen_kwargs={"shards": shards, "digests": [digests[s["path"]] for s in shards],
                        "source_json": json.dumps({k: getattr(source, k) for k in SourceConfig.__dataclass_fields__}),
                        "tokenizer": tokenizer, "report_dir": reports},
            split="train")
    except Exception as err:
        # datasets refuses a split without rows: say why there are none, if the reports know
        if len(os.listdir(reports)) == len(shards) and not _merge_reports(shards, reports).documents:
            tokens = None
        else:
            shutil.rmtree(staging, ignore_errors=True)
            unreadable = source_read_error(err)  # a damaged file, as datasets wraps it: its own one line
            if unreadable is not None:
                raise SourceReadError(str(unreadable)) from None
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
