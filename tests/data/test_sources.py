"""Every source format and kind through the training pipeline: the same records give the same
tokens whatever the file format, bad records are skipped and named, chat and instruction records
score exactly the answers, the cache follows content and is built once, streams resume exactly."""

import bz2
import gzip
import json
import os
import re
import threading
import time

import pytest
from transformers import AutoTokenizer

from uio_ds.config import ALPACA_PROMPT, DataConfig, SourceConfig
from uio_ds.data.cache import LOCK_STALE_S, cache_key, tokenize_source
from uio_ds.data.files import source_files
from uio_ds.data.streams import build_stream
from uio_ds.formats import IGNORE_INDEX, synthetic_text

QUIET = {"log": lambda *_: None}


@pytest.fixture(scope="module")
def tok(tiny_dirs):
    return AutoTokenizer.from_pretrained(tiny_dirs["llama"])


RECORDS = [{"text": synthetic_text(4 + i, seed=i), "n": i} for i in range(6)]


def write_jsonl(path, records, extra_lines=(), first_lines=()):
    data = b"".join(first_lines) + "".join(json.dumps(r) + "\n" for r in records).encode() + b"".join(extra_lines)
    opener = {".gz": gzip.open, ".bz2": bz2.open}.get(os.path.splitext(str(path))[1])
    if str(path).endswith(".zst"):
        import zstandard

        path.write_bytes(zstandard.ZstdCompressor().compress(data))
    elif opener:
        with opener(path, "wb") as f:
            f.write(data)
    else:
        path.write_bytes(data)
    return str(path)


def tokens_of(source: SourceConfig, tok, cache) -> tuple[list[list[int]], dict]:
    ds, info = tokenize_source(source, tok, str(cache), **QUIET)
    return list(ds["input_ids"]), info


def test_every_format_gives_the_same_documents(tok, tmp_path):
    from datasets import Dataset, DatasetDict

    want = [tok(r["text"])["input_ids"] for r in RECORDS]
    paths = [write_jsonl(tmp_path / f"d.{suffix}", RECORDS) for suffix in ("jsonl", "jsonl.gz", "jsonl.zst",
                                                                          "jsonl.bz2", "json")]
    (tmp_path / "array.json").write_text(json.dumps(RECORDS, indent=1))  # LongAlpaca's layout: one JSON array
    table = Dataset.from_list(RECORDS)
    table.to_parquet(str(tmp_path / "d.parquet"))
    table.save_to_disk(str(tmp_path / "saved"))
    DatasetDict({"train": table, "eval": table.select([0])}).save_to_disk(str(tmp_path / "dict"))
    arrow = [os.path.join(tmp_path / "saved", f) for f in os.listdir(tmp_path / "saved") if f.endswith(".arrow")]
    paths += [str(tmp_path / "array.json"), str(tmp_path / "d.parquet"), arrow[0], str(tmp_path / "saved"),
              str(tmp_path / "dict")]
    for path in paths:
        got, info = tokens_of(SourceConfig(path=path), tok, tmp_path / "cache")
        assert got == want, path
        assert info["documents"] == len(RECORDS) and info["skipped"] == {}, path
    got, _ = tokens_of(SourceConfig(path=str(tmp_path / "dict"), split="eval"), tok, tmp_path / "cache")
    assert got == want[:1]
    with gzip.open(tmp_path / "t.txt.gz", "wt") as f:
        f.write(RECORDS[0]["text"])
    assert tokens_of(SourceConfig(path=str(tmp_path / "t.txt.gz")), tok, tmp_path / "cache")[0] == want[:1]


def test_bad_records_in_a_compressed_file_are_skipped_by_line(tok, tmp_path):
    bad = [b"{not json\n", b'{"text": "caf\xe9"}\n', b"[1, 2]\n", b'{"text": 7}\n', b'{"text": "  "}\n', b"\n"]
    path = write_jsonl(tmp_path / "d.jsonl.zst", RECORDS[:2], bad)
    got, info = tokens_of(SourceConfig(path=path), tok, tmp_path / "cache")
    assert len(got) == 2
    assert info["skipped"] == {"not valid JSON": 1, "undecodable bytes (not UTF-8)": 1,
                               "record is not a JSON object": 1, "field 'text' is int, not a string": 1,
                               "empty text": 1}
    assert info["examples"][0] == f"{path}:3: not valid JSON" and info["examples"][1].startswith(f"{path}:4:")
    nothing = write_jsonl(tmp_path / "none.jsonl.gz", [], bad)
    with pytest.raises(ValueError, match=r"none\.jsonl\.gz.*no usable document"):
        tokenize_source(SourceConfig(path=nothing), tok, str(tmp_path / "cache"), **QUIET)


def test_unsupported_and_unreadable_sources_fail_before_work(tmp_path):
    (tmp_path / "a.csv.gz").write_bytes(b"x")
    with pytest.raises(ValueError, match="only .jsonl / .json / .txt files may be compressed"):
        source_files(SourceConfig(path=str(tmp_path / "a.csv.gz")))
    (tmp_path / "doc.txt").write_text("text")
    with pytest.raises(ValueError, match="needs records"):
        source_files(SourceConfig(path=str(tmp_path / "doc.txt"), completion_field="a"))
    (tmp_path / "empty.jsonl").write_bytes(b"")
    with pytest.raises(ValueError, match="empty.jsonl.*is empty"):
        source_files(SourceConfig(path=str(tmp_path / "empty.jsonl")))


def test_group_by_joins_consecutive_records(tok, tmp_path):
    verses = [{"book": b, "text": f"verse {i} of {b}"} for b in ("Ruth", "Job") for i in range(3)]
    path = write_jsonl(tmp_path / "v.jsonl", verses + [{"text": "no book"}])
    got, info = tokens_of(SourceConfig(path=path, group_by=["book"]), tok, tmp_path / "cache")
    assert got == [tok("\n".join(v["text"] for v in verses if v["book"] == b))["input_ids"] for b in ("Ruth", "Job")]
    assert info["skipped"] == {"missing group key(s) ['book']": 1}


def test_chat_records_score_the_assistant_turns(tok, tmp_path):
    chats = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Two and two?"},
                           {"role": "assistant", "content": "Four."}, {"role": "user", "content": "And three?"},
                           {"role": "assistant", "content": "Six."}]},
             {"messages": [{"role": "user", "content": "Hello"}]},  # nothing to score
             {"messages": "not a list"}]
    path = write_jsonl(tmp_path / "chat.jsonl", chats)
    config = DataConfig(sources=[SourceConfig(path=path, chat_template=True)], max_tokens=512,
                        cache_dir=str(tmp_path / "cache"))
    stream, info = build_stream(config, tok, **QUIET)
    assert info[path]["skipped"] == {"no assistant turn (nothing to score)": 1, "messages is not a non-empty list": 1}
    doc = stream.next_documents()[0]
    assert doc["input_ids"].tolist() == tok.apply_chat_template(chats[0]["messages"], return_dict=True)["input_ids"]
    scored = doc["input_ids"][doc["labels"] != IGNORE_INDEX]
    assert tok.decode(scored) == "Four.</s>\nSix.</s>\n"  # each answer with its end of turn, nothing else
    with pytest.raises(ValueError, match="chat_template: true"):
        from uio_ds.config import TrainConfig
        TrainConfig.from_dict({"model_path": "m", "data": {"sources": [{"path": path, "kind": "chat"}]}})


def test_instruction_records_longalpaca(tok, tmp_path):
    rows = [{"instruction": "Summarise the book.", "output": "It is short.", "file": "a"},
            {"instruction": "Translate.", "input": "Bonjour", "output": "Hello."},
            {"instruction": "No answer.", "output": ""}]
    (tmp_path / "LongAlpaca-12k.json").write_text(json.dumps(rows))  # the file is one JSON array
    path = str(tmp_path / "LongAlpaca-12k.json")
    config = DataConfig(sources=[SourceConfig(path=path, kind="instruction")], max_tokens=512, documents_per_step=2,
                        cache_dir=str(tmp_path / "cache"))
    stream, info = build_stream(config, tok, **QUIET)
    assert info[path]["skipped"] == {"empty output": 1}
    prompts = {tuple(tok(ALPACA_PROMPT.format(instruction=i))["input_ids"]) for i in
               ("Summarise the book.", "Translate.\n\nBonjour")}
    for doc in stream.next_documents():
        ids, labels = doc["input_ids"].tolist(), doc["labels"]
        n = (labels == IGNORE_INDEX).sum().item()
        assert tuple(ids[:n]) in prompts and labels[:n].eq(IGNORE_INDEX).all()
        assert ids[-1] == tok.eos_token_id and labels[n:].tolist() == ids[n:]
        assert tok.decode(ids[n:-1]) in (" It is short.", " Hello.")
    chat = DataConfig(sources=[SourceConfig(path=path, kind="instruction", chat_template=True)], max_tokens=512,
                      cache_dir=str(tmp_path / "cache"))
    doc = build_stream(chat, tok, **QUIET)[0].next_documents()[0]
    assert tok.decode(doc["input_ids"][doc["labels"] != IGNORE_INDEX]) in ("It is short.</s>\n", "Hello.</s>\n")


def test_truncate_and_source_token_limits(tok, tmp_path):
    long_doc = [{"text": synthetic_text(40, seed=1)}]
    path = write_jsonl(tmp_path / "l.jsonl", long_doc)
    n = len(tok(long_doc[0]["text"])["input_ids"])
    cut = DataConfig(sources=[SourceConfig(path=path, max_tokens=100)], max_tokens=1000,
                     cache_dir=str(tmp_path / "cache"))
    assert build_stream(cut, tok, **QUIET)[1]["pieces"] == [-(-n // 100)]
    cut.sources[0].truncate = True
    stream, info = build_stream(cut, tok, **QUIET)
    assert info["pieces"] == [1] and stream.next_documents()[0].tolist() == tok(long_doc[0]["text"])["input_ids"][:100]


def test_cache_follows_content_and_is_built_in_parallel_once(tok, tmp_path):
    records = [{"text": synthetic_text(3 + i % 5, seed=i)} for i in range(300)]
    a = write_jsonl(tmp_path / "a.jsonl", records)
    cache = tmp_path / "cache"
    logs = []
    one, _ = tokenize_source(SourceConfig(path=a), tok, str(cache), log=logs.append, num_proc=1)
    again, _ = tokenize_source(SourceConfig(path=a), tok, str(cache), log=logs.append, num_proc=1)
    assert len(logs) == 1 and again.cache_files == one.cache_files  # the second run reads the cache
    copy = tmp_path / "elsewhere.jsonl"
    copy.write_bytes(open(a, "rb").read())
    key = cache_key(SourceConfig(path=a), [a], tok, str(cache))
    assert cache_key(SourceConfig(path=str(copy)), [str(copy)], tok, str(cache)) == key  # same content
    st = os.stat(a)
    with open(a, "r+b") as f:  # one byte changed, the size kept
        f.seek(12)
        f.write(b"Z" if f.read(1) != b"Z" else b"Y")
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 1))
    assert cache_key(SourceConfig(path=a), [a], tok, str(cache)) != key
    # two processes and two files (read in parallel too) give the same tokens as one
    write_jsonl(tmp_path / "b.jsonl", records[:40])
    two, info = tokenize_source(SourceConfig(path=str(tmp_path / "[ab].jsonl")), tok, str(tmp_path / "c2"),
                                num_proc=2, **QUIET)
    ones, _ = tokenize_source(SourceConfig(path=str(tmp_path / "[ab].jsonl")), tok, str(tmp_path / "c3"),
                              num_proc=1, **QUIET)
    assert info["num_proc"] == 2 and list(two["input_ids"]) == list(ones["input_ids"]) and len(two) == 340
    assert list(two["input_ids"])[300:] == [tok(r["text"])["input_ids"] for r in records[:40]]  # b.jsonl, in order


def test_one_large_file_is_read_in_parallel_parts(tok, tmp_path, monkeypatch):
    """A JSON-lines file is cut at line starts for the processes: the documents, their order and
    the bad records' line numbers are those of reading it whole."""
    import uio_ds.data.cache as cache

    records = [{"text": synthetic_text(2 + i % 7, seed=i)} for i in range(120)]
    path = write_jsonl(tmp_path / "one.jsonl", records[:50], [b"{broken\n"] + [
        (json.dumps(r) + "\n").encode() for r in records[50:]] + [b'{"text": 5}\n'])
    whole, info_whole = tokenize_source(SourceConfig(path=path), tok, str(tmp_path / "c1"), num_proc=1, **QUIET)
    monkeypatch.setattr(cache, "SHARD_MIN_BYTES", 1000)
    assert len(cache.plan_shards(SourceConfig(path=path), [path], 3)) == 3
    parts, info_parts = tokenize_source(SourceConfig(path=path), tok, str(tmp_path / "c2"), num_proc=3, **QUIET)
    assert info_parts["shards"] == 3 and info_parts["num_proc"] == 3
    assert list(parts["input_ids"]) == list(whole["input_ids"]) == [tok(r["text"])["input_ids"] for r in records]
    assert info_parts["examples"] == info_whole["examples"] == [f"{path}:51: not valid JSON",
                                                                f"{path}:122: field 'text' is int, not a string"]
    assert info_parts["records"] == info_whole["records"] == 122


def test_waiting_rank_takes_over_a_dead_builders_lock(tok, tmp_path):
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    source, cache = SourceConfig(path=path), tmp_path / "cache"
    os.makedirs(cache)
    lock = os.path.join(cache, cache_key(source, [path], tok, str(cache))) + ".lock"
    open(lock, "w").close()  # another rank is building (its heartbeat is fresh)
    result = {}
    waiter = threading.Thread(target=lambda: result.update(
        ds=tokenize_source(source, tok, str(cache), poll_s=0.05, **QUIET)[0]))
    waiter.start()
    time.sleep(0.5)
    assert waiter.is_alive() and not result  # waits on the file system, not in a collective
    os.utime(lock, (time.time() - LOCK_STALE_S - 1,) * 2)  # the builder died: its heartbeat stopped
    waiter.join(timeout=60)
    assert len(result["ds"]) == len(RECORDS) and not os.path.exists(lock)


def streaming_config(tmp_path, files: int, **extra) -> DataConfig:
    for i in range(files):
        write_jsonl(tmp_path / f"shard{i}.jsonl.gz",
                    [{"text": synthetic_text(3 + (7 * j + i) % 11, seed=100 * i + j)} for j in range(12)],
                    first_lines=[b"{broken\n"] if i == 0 else ())
    sources = [SourceConfig(path=str(tmp_path / "shard*.jsonl.gz"), weight=3), SourceConfig(path=str(tmp_path / "chat.jsonl"),
                                                                                            chat_template=True)]
    write_jsonl(tmp_path / "chat.jsonl", [{"messages": [{"role": "user", "content": f"Say {i}."},
                                                        {"role": "assistant", "content": f"{i}."}]} for i in range(5)])
    return DataConfig(sources=sources, streaming=True, max_tokens=48, min_tokens=8, documents_per_step=2,
                      cache_dir=str(tmp_path / "unused"), **extra)


def as_lists(docs):
    return [(d["input_ids"] if isinstance(d, dict) else d).tolist() for d in docs]


@pytest.mark.parametrize("files", [4, 3])  # whole files per rank; every other document per rank
def test_streaming_resumes_exactly_and_ranks_read_apart(tok, tmp_path, files):
    config = streaming_config(tmp_path, files)
    streams = [build_stream(config, tok, world_size=2, rank=r, **QUIET)[0] for r in (0, 1)]
    seen = [[], []]
    for _ in range(4):
        for r in (0, 1):
            seen[r] += as_lists(streams[r].next_documents())
    assert not set(map(tuple, seen[0])) & set(map(tuple, seen[1]))
    state = json.loads(json.dumps(streams[0].state_dict()))  # a checkpoint survives JSON
    want = [as_lists(streams[0].next_documents()) for _ in range(30)]  # crosses an epoch of the shards
    resumed = build_stream(config, tok, world_size=2, rank=0, **QUIET)[0]
    resumed.load_state_dict(state)
    assert [as_lists(resumed.next_documents()) for _ in range(30)] == want
    assert set(streams[0].stats()[config.sources[0].path]["skipped"]) == {"not valid JSON"}
    assert not os.path.exists(config.cache_dir)  # nothing was cached


def test_streaming_and_cached_checkpoints_do_not_mix(tok, tmp_path):
    config = streaming_config(tmp_path, 2)
    stream = build_stream(config, tok, **QUIET)[0]
    config.streaming = False
    cached = build_stream(config, tok, **QUIET)[0]
    with pytest.raises(ValueError, match="streaming run"):
        cached.load_state_dict(stream.state_dict())
    with pytest.raises(ValueError, match="cached its data"):
        stream.load_state_dict(cached.state_dict())


def test_paper_mixture_config_reads_the_sample_files(tok, tmp_path):
    """launch/configs/paper_mixture.json over the look-alike files of ``uio-ds make-sample-data``:
    every source gives documents of its kind, drawn by the paper's weights."""
    from uio_ds.config import TrainConfig, find_config
    from uio_ds.data.generators.samples import write_mixture_samples

    written = write_mixture_samples(str(tmp_path / "data" / "mixture"))
    config = TrainConfig.from_file(find_config("paper_mixture", "train"))
    data = config.data
    assert sorted(s.path for s in data.sources) == sorted(
        os.path.relpath(written[k], tmp_path) for k in ("beacon_redpajama", "longalpaca", "longdata", "redpajama_books"))
    for s in data.sources:
        s.path = str(tmp_path / s.path)
    # limits for the tiny tokenizer: documents of 64+ tokens, books truncated at 2,048
    data.min_tokens, data.max_tokens, data.cache_dir = 64, 2048, str(tmp_path / "cache")
    stream, info = build_stream(data, tok, **QUIET)
    assert all(info[s.name]["documents"] > 0 and not info[s.name]["skipped"] for s in data.sources)
    assert info["pieces"][3] == info["redpajama-books"]["documents"]  # truncated: one piece per book
    draws = [stream._draw()[0] for _ in range(4000)]
    assert [round(draws.count(i) / len(draws), 2) for i in range(4)] == pytest.approx([0.475, 0.475, 0.025, 0.025],
                                                                                       abs=0.03)
    answer = stream.datasets[1][0]  # LongAlpaca: the answer and its EOS scored, the paper and question read
    assert answer["input_ids"][-1] == tok.eos_token_id and answer["score_spans"][1] == answer["length"]
    assert 0 < answer["score_spans"][0] < answer["length"] - 1


def _damaged_files(folder) -> dict[str, str]:
    """Files that cannot be read at all, by the case they stand for."""
    import zstandard

    data = "".join(json.dumps(r) + "\n" for r in RECORDS * 20).encode()
    packed = bytearray(gzip.compress(data))
    packed[len(packed) // 2] ^= 0xFF
    (folder / "bad_byte.jsonl.gz").write_bytes(bytes(packed))
    (folder / "cut.jsonl.gz").write_bytes(gzip.compress(data)[:200])
    zst = bytearray(zstandard.ZstdCompressor(write_checksum=True).compress(data))  # as the zstd tool writes
    zst[len(zst) // 2] ^= 0xFF
    (folder / "bad_byte.jsonl.zst").write_bytes(bytes(zst))
    (folder / "garbage.parquet").write_bytes(b"this is not a parquet file " * 20)
    (folder / "cut_array.json").write_text(json.dumps(RECORDS)[:-30])
    return {p.name: str(p) for p in folder.iterdir()}


@pytest.mark.parametrize("num_proc", [1, 2])
def test_a_file_that_cannot_be_read_is_one_line_naming_it(tok, tmp_path, num_proc):
    """A bad byte in a .gz or .zst, a cut .gz, a garbage parquet, a cut JSON array: one
    SourceReadError (a ValueError, so training and evaluation print it as one ``error:`` line)
    naming the file and the cause, whether datasets' worker processes read it or not."""
    from uio_ds.data.files import SourceReadError

    (tmp_path / "files").mkdir()
    for name, path in _damaged_files(tmp_path / "files").items():
        with pytest.raises(SourceReadError) as err:
            tokenize_source(SourceConfig(path=path), tok, str(tmp_path / f"cache-{name}"), num_proc=num_proc, **QUIET)
        message = str(err.value)
        assert path in message and "\n" not in message, message
        assert any(w in message for w in ("cannot be read", "does not parse")), message


def test_a_streamed_file_that_cannot_be_read_stops_the_stream_naming_it(tok, tmp_path):
    from uio_ds.data.files import SourceReadError

    (tmp_path / "files").mkdir()
    path = _damaged_files(tmp_path / "files")["bad_byte.jsonl.gz"]
    stream, _ = build_stream(DataConfig(sources=[SourceConfig(path=path)], streaming=True, min_tokens=2), tok,
                             **QUIET)
    with pytest.raises(SourceReadError, match=re.escape(path)):
        for _ in range(50):
            stream.next_documents()


def test_a_damaged_cache_is_rebuilt(tok, tmp_path):
    """Half an Arrow file of the cache (a disk error, a copy cut short): the source is tokenised
    again, the log says so, and the documents are the same."""
    import glob
    import subprocess
    import sys

    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    cache = tmp_path / "cache"
    want, _ = tokens_of(SourceConfig(path=path), tok, cache)
    (arrow,) = glob.glob(str(cache / "*" / "*.arrow"))
    with open(arrow, "r+b") as f:
        f.truncate(os.path.getsize(arrow) // 2)
    # a fresh process, as a later run is (this one has the file mapped)
    script = (f"import json; from transformers import AutoTokenizer; from uio_ds.config import SourceConfig; "
              f"from uio_ds.data.cache import tokenize_source; logs = []; "
              f"ds, _ = tokenize_source(SourceConfig(path={path!r}), AutoTokenizer.from_pretrained({tok.name_or_path!r}), "
              f"{str(cache)!r}, log=logs.append); print(json.dumps([list(ds['input_ids']), logs]))")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    got, logs = json.loads(proc.stdout.strip().splitlines()[-1])
    assert got == want and "cannot be read" in logs[0] and "rebuilding them" in logs[0], logs


def test_data_digests_follow_the_content_and_order_of_the_files(tmp_path):
    from uio_ds.data.cache import data_digests

    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    source = SourceConfig(path=path, name="books")
    first = data_digests([source], str(tmp_path / "cache"))
    assert set(first) == {"books"} and data_digests([source], str(tmp_path / "cache")) == first
    write_jsonl(tmp_path / "a.jsonl", list(reversed(RECORDS)))  # the same records, reordered
    assert data_digests([source], str(tmp_path / "cache")) != first


def test_a_streamed_source_without_a_usable_document_is_refused_when_opened(tok, tmp_path):
    """Found when the stream is built (before the trainer loads the model), not at the first step;
    the probe leaves the stream where it was."""
    short = write_jsonl(tmp_path / "short.jsonl", [{"text": "a b"}] * 5)
    with pytest.raises(ValueError, match="no document of at least 64 tokens"):
        build_stream(DataConfig(sources=[SourceConfig(path=short)], streaming=True, min_tokens=64), tok, **QUIET)
    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    config = DataConfig(sources=[SourceConfig(path=path)], streaming=True, min_tokens=2)
    probed, _ = build_stream(config, tok, **QUIET)
    plain = [tok(r["text"])["input_ids"] for r in RECORDS]
    docs = probed.next_documents() + probed.next_documents()
    assert [(d["input_ids"] if isinstance(d, dict) else d).tolist() for d in docs] == plain[:2]


def test_streamed_data_digests_read_the_ends_and_write_nothing(tmp_path):
    """Streaming reads corpora too large to read twice: its digests take each file's size and ends,
    and leave no file in the cache directory."""
    from uio_ds.data.cache import data_digests

    path = write_jsonl(tmp_path / "a.jsonl", RECORDS)
    source = SourceConfig(path=path, name="books")
    first = data_digests([source], str(tmp_path / "cache"), streaming=True)
    assert not (tmp_path / "cache").exists() and data_digests([source], str(tmp_path / "cache"), True) == first
    write_jsonl(tmp_path / "a.jsonl", list(reversed(RECORDS)))
    assert data_digests([source], str(tmp_path / "cache"), streaming=True) != first
