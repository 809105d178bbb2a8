"""Data at corpus scale: tokenising a generated jsonl corpus into the cache, against the tokenizer.

Writes a corpus of generated book-like documents as gzip-free jsonl shards (``--gb`` sizes, the
largest >= 2 GB by default), then for each size, in a fresh process:

* **pipeline**: ``uio_ds.data.cache.tokenize_source`` with ``--num-proc`` processes, a cold
  cache: reading, checking every record, tokenising and writing the Arrow cache; its tokens/s;
* **peak host memory** of that process and its workers (sampled every 0.2 s): RSS, and the
  proportional anonymous memory ("private", Pss_Anon: what grows if a corpus is held in memory;
  pages shared with forked workers counted once, memory-mapped Arrow files not at all);

and, in this process, on a sample of the same documents:

* **tokenizer**: the tokenizer's own batch call (``tokenizer(list_of_texts)``, one process,
  ``TOKENIZERS_PARALLELISM=false``): the throughput the pipeline is held to, per process used;
  and the same call in ``--num-proc`` processes at once, summed (what the cores give the
  tokenizer together: the ceiling when they do not scale linearly);

then the time to the first training step of ``uio_ds.train`` (one process, SmolLM2, the largest
corpus) with the cache built (warm) and, on the smallest corpus, without it (cold): the data's
own share (the trainer's "data ready in" line), the whole set-up (imports, model, DeepSpeed)
and the end of the first step.

    python benchmarks/data_throughput.py --gb 0.5 2.0 --num-proc 2
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

from common import print_table, summary_line, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_corpus(folder: str, gigabytes: float, shard_mb: int = 256, seed: int = 0) -> dict:
    """jsonl shards of generated documents (20-600 sentences) up to ``gigabytes``."""
    import random

    from uio_ds.formats import synthetic_text

    os.makedirs(folder, exist_ok=True)
    rng = random.Random(seed)
    pool = [synthetic_text(rng.randint(20, 600), seed=i) for i in range(400)]  # ~20 MB of distinct text
    target, written, shard, docs = int(gigabytes * (1 << 30)), 0, 0, 0
    while written < target:
        path = os.path.join(folder, f"part-{shard:05d}.jsonl")
        with open(path, "w") as f:
            size = 0
            while size < shard_mb << 20 and written + size < target:
                line = json.dumps({"text": rng.choice(pool), "id": docs}) + "\n"
                f.write(line)
                size += len(line)
                docs += 1
        written += size
        shard += 1
    return {"bytes": written, "shards": shard, "documents": docs}


def _private_bytes(pid: int) -> int:
    """Proportional anonymous memory of a process (Pss_Anon of /proc/PID/smaps_rollup): pages a
    forked worker shares with its parent count once in the sum, memory-mapped files not at all."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss_Anon:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return 0


def _watch(pid: int, stop: threading.Event, peak: dict) -> None:
    import psutil

    root = psutil.Process(pid)
    while not stop.is_set():
        rss = private = 0
        try:
            for p in [root, *root.children(recursive=True)]:
                try:
                    rss += p.memory_info().rss
                except psutil.NoSuchProcess:
                    continue
                private += _private_bytes(p.pid)
        except psutil.NoSuchProcess:
            break
        peak["rss"], peak["private"] = max(peak["rss"], rss), max(peak["private"], private)
        stop.wait(0.2)


def run_watched(cmd: list[str], env: dict | None = None, mark: str | None = None):
    """Run ``cmd``, sampling the peak memory of its process tree; returns (output, peak GiB, seconds,
    seconds until the first output line that contains ``mark``)."""
    started = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stop, peak = threading.Event(), {"rss": 0, "private": 0}
    watcher = threading.Thread(target=_watch, args=(proc.pid, stop, peak), daemon=True)
    watcher.start()
    lines, marked = [], None
    for line in proc.stdout:
        lines.append(line)
        if mark and marked is None and mark in line:
            marked = time.perf_counter() - started
    proc.wait()
    seconds = time.perf_counter() - started
    stop.set()
    watcher.join()
    out = "".join(lines)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out[-4000:]}")
    return out, {k: v / (1 << 30) for k, v in peak.items()}, seconds, marked


TOKENISE = """
import json, sys, time
from transformers import AutoTokenizer
from uio_ds.data.cache import tokenize_source
from uio_ds.config import SourceConfig
tok = AutoTokenizer.from_pretrained(sys.argv[1])
t = time.perf_counter()
ds, info = tokenize_source(SourceConfig(path=sys.argv[2]), tok, sys.argv[3], num_proc=int(sys.argv[4]))
info["wall"] = time.perf_counter() - t
print("RESULT " + json.dumps(info))
"""


def tokenizer_rate(model: str, folder: str, sample_docs: int = 2000) -> float:
    """Tokens/s of the tokenizer's own batch call on the corpus's first documents, one process."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    first = sorted(os.listdir(folder))[0]
    with open(os.path.join(folder, first)) as f:
        texts = [json.loads(line)["text"] for line, _ in zip(f, range(sample_docs))]
    tok(texts[:50])  # warm-up
    best = 0.0
    for _ in range(3):
        t = time.perf_counter()
        n = sum(len(ids) for batch in range(0, len(texts), 256) for ids in tok(texts[batch:batch + 256])["input_ids"])
        best = max(best, n / (time.perf_counter() - t))
    return best


CEILING = """
import json, sys, time
from transformers import AutoTokenizer
tok = AutoTokenizer.from_pretrained(sys.argv[1])
texts = [json.loads(line)["text"] for line in open(sys.argv[2])][: int(sys.argv[3])]
tok(texts[:50])
t = time.perf_counter()
n = sum(len(ids) for b in range(0, len(texts), 256) for ids in tok(texts[b:b + 256])["input_ids"])
print("RATE", n / (time.perf_counter() - t))
"""


def concurrent_tokenizer_rate(model: str, folder: str, processes: int, sample_docs: int = 2000) -> float:
    """Tokens/s of ``processes`` copies of the tokenizer's batch call running at once, summed: what
    this machine's cores give the tokenizer together (the ceiling for that many processes)."""
    first = os.path.join(folder, sorted(os.listdir(folder))[0])
    procs = [subprocess.Popen([sys.executable, "-c", CEILING, model, first, str(sample_docs)], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
             for _ in range(processes)]
    return sum(float(next(line for line in p.communicate()[0].splitlines() if line.startswith("RATE"))[5:])
               for p in procs)


def first_step(model: str, corpus: str, cache: str, out: str) -> dict:
    """Seconds from start until ``uio_ds.train`` (one process) is set up (data, model, engine) and
    until its first training step has ended."""
    cmd = [sys.executable, "-m", "uio_ds.train", "--config", "smollm2", "--deepspeed", "zero2", "--overwrite", "--set",
           f"model_path={model}", f"data.sources=[{{\"path\": \"{corpus}/*.jsonl\"}}]", f"data.cache_dir={cache}",
           "steps=1", "save_every=0", "data.max_tokens=1024", f"output_dir={out}"]
    env = {**os.environ, "DS_ACCELERATOR": "cpu"}
    out, _, seconds, ready = run_watched(cmd, env, mark="rank(s), ZeRO stage")
    data = float(re.search(r"data ready in ([0-9.]+) s", out).group(1))
    return {"data_ready_s": data, "setup_s": round(ready, 1), "first_step_end_s": round(seconds, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--gb", type=float, nargs="+", default=[0.5, 2.0], help="corpus sizes in GiB")
    p.add_argument("--num-proc", type=int, default=2)
    p.add_argument("--model", default="models/smollm2", help="whose tokenizer (and model, for the first step)")
    p.add_argument("--work", default="runs/data_throughput", help="corpora and caches (GBs; removed unless --keep)")
    p.add_argument("--keep", action="store_true")
    p.add_argument("--name", default="data_throughput")
    args = p.parse_args()
    os.environ["TOKENIZERS_PARALLELISM"] = "false"
    rows, corpora = [], {}
    for gb in sorted(args.gb):
        folder = os.path.join(args.work, f"corpus_{gb:g}gb")
        if not os.path.isdir(folder):
            corpora[gb] = write_corpus(folder, gb)
        else:
            corpora[gb] = {"bytes": sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder))}
        per_process = tokenizer_rate(args.model, folder)
        together = concurrent_tokenizer_rate(args.model, folder, args.num_proc)
        cache = os.path.join(args.work, f"cache_{gb:g}gb")
        subprocess.run(["rm", "-rf", cache], check=True)
        out, peak, _, _ = run_watched([sys.executable, "-c", TOKENISE, args.model, os.path.join(folder, "*.jsonl"), cache,
                                     str(args.num_proc)], {**os.environ, "PYTHONPATH": REPO})
        info = json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])
        rate = info["tokens"] / info["wall"]
        rows.append({"corpus_gib": round(corpora[gb]["bytes"] / (1 << 30), 2), "documents": info["documents"],
                     "tokens": info["tokens"], "seconds": round(info["wall"], 1), "num_proc": args.num_proc,
                     "pipeline_tokens_per_s": round(rate), "tokenizer_tokens_per_s_per_process": round(per_process),
                     "ratio_per_process": round(rate / args.num_proc / per_process, 3),
                     "tokenizer_tokens_per_s_concurrent": round(together),
                     "ratio_to_concurrent": round(rate / together, 3), "phases_s": info.get("phases"),
                     "peak_rss_gib": round(peak["rss"], 2), "peak_private_gib": round(peak["private"], 2)})
        print_table(rows[-1:], list(rows[-1]))
    smallest, largest = min(args.gb), max(args.gb)
    warm = first_step(args.model, os.path.join(args.work, f"corpus_{largest:g}gb"),
                         os.path.join(args.work, f"cache_{largest:g}gb"), os.path.join(args.work, "run_warm"))
    cold_cache = os.path.join(args.work, "cache_cold")
    subprocess.run(["rm", "-rf", cold_cache], check=True)
    cold = first_step(args.model, os.path.join(args.work, f"corpus_{smallest:g}gb"), cold_cache,
                         os.path.join(args.work, "run_cold"))
    first = {"warm_cache_corpus_gib": largest, "warm": warm, "cold_cache_corpus_gib": smallest, "cold": cold}
    print_table(rows, ["corpus_gib", "tokens", "seconds", "pipeline_tokens_per_s", "tokenizer_tokens_per_s_per_process",
                       "ratio_per_process", "tokenizer_tokens_per_s_concurrent", "ratio_to_concurrent", "peak_rss_gib",
                       "peak_private_gib"])
    print(f"time to the first training step: {first}")
    path = write_results(args.name, {"rows": rows, "first_step": first, "corpora": {str(k): v for k, v in corpora.items()},
                                     "model": args.model, "num_proc": args.num_proc})
    print(f"wrote {path}")
    if not args.keep:
        subprocess.run(["rm", "-rf", args.work], check=True)
    summary_line({"ratio_per_process": [r["ratio_per_process"] for r in rows],
                  "ratio_to_concurrent": [r["ratio_to_concurrent"] for r in rows],
                  "peak_private_gib": [r["peak_private_gib"] for r in rows], **first})


if __name__ == "__main__":
    main()
