"""Serving under load: requests/s, time to first token and tokens/s at 1, 4 and 16 concurrent
clients, UIO memory against the base model with full attention, and the time to first token
of a follow-up question in a session against the document's length.

Two servers are started on loopback (``uio-ds serve``), one after the other, over the same base:

* **uio**: the trained parts (``--uio``): the document is compressed segment by segment;
* **full**: the base alone, its window as long as the request (``--segment-length`` past the
  prompt): plain full attention over the whole document, through the same engine and batching.

Each client sends ``--requests`` streamed completions, each a ``--doc-tokens``-token stretch of
the held-out books (token ids, so every prompt has the same length and concurrent ones can
batch) and asks for ``--max-tokens`` tokens. Then, on the UIO server only, for each document
length: a first request in a session and a follow-up question; the follow-up's time to first
token against the first's.

    python benchmarks/serve_load.py --clients 1 4 16 --doc-tokens 8000
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import threading
import time

from common import print_table, summary_line, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, extra: list[str]) -> tuple[subprocess.Popen, str]:
    port = free_port()
    cmd = [sys.executable, "-m", "uio_ds", "serve", "--model", args.model, "--port", str(port), "--device", args.device,
           "--max-batch", str(max(args.clients)), *extra]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {proc.stderr.read()[-3000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc, url
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("server did not start in 300 s")


def stretches(tokenizer, corpus: str, count: int, length: int) -> list[list[int]]:
    """``count`` different stretches of exactly ``length`` tokens from the held-out books."""
    from uio_ds.config import SourceConfig
    from uio_ds.data.sources import read_texts

    texts, _ = read_texts(SourceConfig(path=corpus, split="eval"))
    ids = [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if len(ids) < count * length:
        raise ValueError(f"the held-out books hold {len(ids)} tokens, fewer than {count} x {length}")
    step = (len(ids) - length) // max(count - 1, 1)
    return [ids[i * step: i * step + length] for i in range(count)]


def one_request(client, model: str, prompt: list[int], max_tokens: int, session: str | None = None) -> dict:
    start = time.perf_counter()
    first, tokens = None, 0
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                       stream_options={"include_usage": True},
                                       extra_body={"session": session} if session else None)
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text and first is None:
            first = time.perf_counter() - start
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return {"ttft": first if first is not None else total, "seconds": total, "tokens": tokens}


def load_round(url: str, model: str, clients: int, docs: list[list[int]], requests: int, max_tokens: int) -> dict:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)
    results: list[dict] = []
    lock = threading.Lock()

    def run(c: int) -> None:
        for r in range(requests):
            out = one_request(client, model, docs[(c * requests + r) % len(docs)], max_tokens)
            with lock:
                results.append(out)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"clients": clients, "requests": len(results), "wall_s": round(wall, 1),
            "requests_per_s": round(len(results) / wall, 4),
            "ttft_median_s": round(statistics.median(r["ttft"] for r in results), 2),
            "ttft_max_s": round(max(r["ttft"] for r in results), 2),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2)}


def follow_ups(url: str, model: str, tokenizer, corpus: str, lengths: list[int], max_tokens: int) -> list[dict]:
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)
    question = tokenizer(" Who is named in the text above?", add_special_tokens=False)["input_ids"]
    rows = []
    for n in lengths:
        doc = stretches(tokenizer, corpus, 1, n)[0]
        session = f"followup-{n}"
        first = client.completions.create(model=model, prompt=doc + question, max_tokens=max_tokens, temperature=0,
                                          extra_body={"session": session})
        answer = first.model_extra["uio"]["completion_token_ids"]
        start = time.perf_counter()
        fresh = one_request(client, model, doc + question, max_tokens)  # no session: reads the whole document
        follow = one_request(client, model, doc + question + answer + question, max_tokens, session=session)
        rows.append({"doc_tokens": n, "first_ttft_s": round(fresh["ttft"], 3), "follow_up_ttft_s": round(follow["ttft"], 3),
                     "ratio": round(follow["ttft"] / fresh["ttft"], 3), "seconds": round(time.perf_counter() - start, 1)})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def plot(result: dict, path: str) -> str | None:
    """Requests/s and median time to first token by clients (both methods), and the follow-up's
    time to first token against the document's length."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'uio_ds[plot]')")
        return None
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    for method, style in (("uio", "o-"), ("full", "s--")):
        rows = [r for r in result["rows"] if r["method"] == method]
        label = "UIO memory" if method == "uio" else "full attention"
        axes[0].plot([r["clients"] for r in rows], [r["requests_per_s"] for r in rows], style, label=label)
        axes[1].plot([r["clients"] for r in rows], [r["ttft_median_s"] for r in rows], style, label=label)
    for ax, title in ((axes[0], "requests/s"), (axes[1], "median time to first token (s)")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend()
    follow = result.get("follow_up") or []
    if follow:
        x = [r["doc_tokens"] for r in follow]
        axes[2].plot(x, [r["first_ttft_s"] for r in follow], "o-", label="first question (reads the document)")
        axes[2].plot(x, [r["follow_up_ttft_s"] for r in follow], "s-", label="follow-up in the session")
        axes[2].set_xlabel("document tokens")
        axes[2].set_title("time to first token (s), UIO")
        axes[2].legend()
    s = result["settings"]
    fig.suptitle(f"uio-ds serve, SmolLM2-135M, {s['doc_tokens']}-token documents, {s['max_tokens']} new tokens "
                 f"({result['machine'].get('cpu', 'CPU')})", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/smollm2")
    p.add_argument("--uio", default="release/smollm2-uio")
    p.add_argument("--corpus", default="data/kjv")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--requests", type=int, default=1, help="requests per client per round")
    p.add_argument("--doc-tokens", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--follow-up-lengths", type=int, nargs="*", default=[1000, 2000, 4000, 8000])
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default="serve_load")
    args = p.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    docs = stretches(tokenizer, args.corpus, max(args.clients) * args.requests, args.doc_tokens)
    window = -(-(args.doc_tokens + args.max_tokens + 64) // 8) * 8  # a multiple of the ratio, past the request
    arms = {"uio": ["--uio", args.uio, "--name", "uio"],
            # one <mem> token per (never filled) segment, so the encoder's positions fit too
            "full": ["--segment-length", str(window), "--compression-ratio", str(window), "--name", "full"]}
    rows, follow = [], []
    for arm, extra in arms.items():
        proc, url = start_server(args, extra)
        try:
            for clients in args.clients:
                row = {"method": arm, **load_round(url, arm, clients, docs, args.requests, args.max_tokens)}
                rows.append(row)
                print(json.dumps(row), flush=True)
            if arm == "uio" and args.follow_up_lengths:
                follow = follow_ups(url, arm, tokenizer, args.corpus, args.follow_up_lengths, args.max_tokens)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
    print_table(rows, ["method", "clients", "requests", "wall_s", "requests_per_s", "ttft_median_s", "ttft_max_s",
                       "tokens_per_s"])
    if follow:
        print_table(follow, ["doc_tokens", "first_ttft_s", "follow_up_ttft_s", "ratio"])
    settings = {k: getattr(args, k) for k in ("model", "uio", "clients", "requests", "doc_tokens", "max_tokens")}
    path = write_results(args.name, {"settings": settings, "rows": rows, "follow_up": follow})
    with open(path) as f:
        png = plot(json.load(f), path[: -len(".json")] + ".png")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    by = {(r["method"], r["clients"]): r for r in rows}
    summary_line({"uio_over_full_requests_per_s": {c: round(by[("uio", c)]["requests_per_s"] /
                                                            by[("full", c)]["requests_per_s"], 3) for c in args.clients},
                  "follow_up_ttft_ratio": [r["ratio"] for r in follow]})


if __name__ == "__main__":
    main()
