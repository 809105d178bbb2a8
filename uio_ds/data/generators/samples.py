"""Small look-alike files of every source kind the paper's training mixture uses, for tests, the
example config and for trying a mixture before the real corpora are on disk.

``write_mixture_samples(OUT)`` writes, under ``OUT``:

* ``beacon/redpajama.jsonl``: text samples of a few thousand tokens, as Activation Beacon's
  8K-token RedPajama samples (``{"text", "meta"}`` records);
* ``beacon/longalpaca.json``: one JSON array of ``{"instruction", "output", "file"}`` records, the
  layout of LongAlpaca-12k.json (a long text and a question in the instruction, the answer in
  the output);
* ``long/longdata.jsonl.gz``: long texts, as LongData-Corpus (gzip-compressed JSON lines);
* ``long/redpajama_books-0000{0,1}.jsonl.zst``: long books as RedPajama's book shards
  (zstd-compressed JSON lines, ``{"text", "meta"}``);
* ``chat/conversations.jsonl``: multi-turn ``{"messages": [...]}`` records.

The text is generated (``uio_ds.formats.synthetic_text``): the files have the real ones' layout,
kinds and proportions of length, not their content. ``launch/configs/paper_mixture.json`` reads
exactly these paths under ``data/mixture``.
"""

from __future__ import annotations

import gzip
import json
import os
import random

from uio_ds.formats import synthetic_text

MIXTURE_FILES = {
    "beacon_redpajama": "beacon/redpajama.jsonl",
    "longalpaca": "beacon/longalpaca.json",
    "longdata": "long/longdata.jsonl.gz",
    "redpajama_books": "long/redpajama_books-0000*.jsonl.zst",
    "chat": "chat/conversations.jsonl",
}


def _lines(records) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def write_mixture_samples(out: str, scale: int = 1, seed: int = 0) -> dict[str, str]:
    """Write the look-alike files under ``out``; ``scale`` multiplies every file's record count.
    Returns {source name: path or glob}."""
    import zstandard

    rng = random.Random(seed)

    def text(sentences: int) -> str:
        return synthetic_text(sentences, seed=rng.randrange(1 << 30))

    for folder in ("beacon", "long", "chat"):
        os.makedirs(os.path.join(out, folder), exist_ok=True)
    with open(os.path.join(out, MIXTURE_FILES["beacon_redpajama"]), "wb") as f:
        f.write(_lines({"text": text(rng.randint(40, 120)), "meta": {"source": "redpajama-sample", "id": i}}
                       for i in range(24 * scale)))
    with open(os.path.join(out, MIXTURE_FILES["longalpaca"]), "w") as f:
        json.dump([{"instruction": "Below is a paper. Memorize the paper and answer my question after the paper.\n"
                                   f"The paper begins.\n{text(rng.randint(30, 90))}\nNow the paper ends.\n"
                                   "What is the paper about?",
                    "output": text(2), "file": f"paper-{i}"} for i in range(12 * scale)], f, indent=1)
    with gzip.open(os.path.join(out, MIXTURE_FILES["longdata"]), "wb") as f:
        f.write(_lines({"text": text(rng.randint(150, 300))} for _ in range(4 * scale)))
    for shard in range(2):
        path = os.path.join(out, MIXTURE_FILES["redpajama_books"].replace("*", str(shard)))
        books = _lines({"text": text(rng.randint(200, 400)), "meta": {"title": f"book {shard}-{i}"}}
                       for i in range(3 * scale))
        with open(path, "wb") as f:
            f.write(zstandard.ZstdCompressor().compress(books))
    with open(os.path.join(out, MIXTURE_FILES["chat"]), "wb") as f:
        f.write(_lines({"messages": [{"role": "user", "content": f"Read this.\n{text(rng.randint(10, 40))}"},
                                     {"role": "assistant", "content": text(1)},
                                     {"role": "user", "content": "And in one word?"},
                                     {"role": "assistant", "content": rng.choice(["Long.", "Short.", "Old."])}]}
                       for _ in range(8 * scale)))
    return {name: os.path.join(out, path) for name, path in MIXTURE_FILES.items()}
