"""Serving under load, in one run: the engine of this tree (continuous batching, chunked prefill,
the memory cache) against an earlier engine (``--current-ref``, by default the one before
them) and against full attention; 1, 4 and 16 concurrent clients with 8K-token documents; a
cold pass, a warm pass (the same documents again) and a pass after a restart that keeps the disk
cache; and the running streams' inter-token latency while another client's 8K prompt is read.

Servers (``uio-ds serve``) run on loopback one after the other, over the same base and parts:

* **new**: this tree, ``--memory-cache DIR`` (a fresh directory);
* **current**: the engine at ``--current-ref``, from a ``git worktree`` of that commit;
* **full**: this tree, the base alone with its window as long as the request (full attention).

Each client sends one streamed completion: a document from the held-out books, its length
``--doc-tokens`` plus 7 tokens per client index (clients do not send prompts of one length, so
an engine gains nothing from reading equal lengths together), and asks for ``--max-tokens``
tokens. Every client count gets its own documents, so a cold pass never meets a document read
before. The warm and restart passes (new engine only: the others have no cache) send the same
documents again. Then the latency test: one client streams a long answer after a short prompt;
after ``--idle-tokens`` tokens another sends a new 8K document; the first stream's gaps between
tokens while that prompt is read, against its gaps before.

    python benchmarks/serve_load.py --clients 1 4 16 --doc-tokens 8000 --max-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from common import print_table, summary_line, write_results

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server(args, extra: list[str], tree: str = REPO) -> tuple[subprocess.Popen, str]:
    """``uio-ds serve`` from the source ``tree`` on a free port; (process, base URL) once it listens."""
    port = free_port()
    cmd = [sys.executable, "-m", "uio_ds", "serve", "--model", os.path.abspath(args.model), "--port", str(port),
           "--device", args.device, "--max-batch", str(max(args.clients)), *extra]
    env = dict(os.environ, PYTHONPATH=tree)
    proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
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


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()


def documents(tokenizer, corpus: str, lengths: list[int]) -> list[list[int]]:
    """Stretches of the held-out books of the given lengths, none overlapping another."""
    from uio_ds.config import SourceConfig
    from uio_ds.data.sources import read_texts

    texts, _ = read_texts(SourceConfig(path=corpus, split="eval"))
    ids = [t for text in texts for t in tokenizer(text, add_special_tokens=False)["input_ids"]]
    if len(ids) < sum(lengths):
        raise ValueError(f"the held-out books hold {len(ids)} tokens, fewer than the {sum(lengths)} asked for")
    step = (len(ids) - max(lengths)) // max(len(lengths) - 1, 1)
    return [ids[i * step: i * step + n] for i, n in enumerate(lengths)]


def stream_request(client, model: str, prompt: list[int], max_tokens: int, on_token=None) -> dict:
    """One streamed completion; the time to its first token, its length, each token's arrival."""
    start = time.perf_counter()
    arrivals, tokens = [], 0
    stream = client.completions.create(model=model, prompt=prompt, max_tokens=max_tokens, temperature=0, stream=True,
                                       stream_options={"include_usage": True})
    for chunk in stream:
        if chunk.choices and chunk.choices[0].text:
            arrivals.append(time.perf_counter())
            if on_token is not None and on_token(len(arrivals)) is False:
                stream.close()  # the client goes away: the server cancels the request
                break
        if chunk.usage is not None:
            tokens = chunk.usage.completion_tokens
    total = time.perf_counter() - start
    return {"ttft": (arrivals[0] - start) if arrivals else total, "seconds": total, "tokens": tokens,
            "arrivals": arrivals}


def load_round(url: str, model: str, docs: list[list[int]], max_tokens: int) -> dict:
    """One request per client, all at once; requests/s, time to first token, tokens/s."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)
    results: list[dict] = [{}] * len(docs)

    def run(c: int) -> None:
        results[c] = stream_request(client, model, docs[c], max_tokens)

    start = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(len(docs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    ttft = [r["ttft"] for r in results]
    return {"clients": len(docs), "wall_s": round(wall, 1), "requests_per_s": round(len(docs) / wall, 4),
            "ttft_median_s": round(statistics.median(ttft), 3), "ttft_max_s": round(max(ttft), 3),
            "tokens_per_s": round(sum(r["tokens"] for r in results) / wall, 2)}


def latency_during_prefill(url: str, model: str, short: list[int], long_doc: list[int], idle_tokens: int) -> dict:
    """Stream A (a short prompt, a long answer) alone for ``idle_tokens`` tokens, then B sends
    ``long_doc``; A's gaps between tokens before B, and while B's prompt is read (until B's
    first token)."""
    import openai

    client = openai.OpenAI(base_url=url, api_key="unused", timeout=3600, max_retries=0)
    sent, b_result = threading.Event(), {}
    b_done = threading.Event()

    def send_b() -> None:
        b_result.update(stream_request(client, model, long_doc, 1))
        b_done.set()

    b_thread = threading.Thread(target=send_b)
    b_started: list[float] = []

    def on_token(count: int):
        if count == idle_tokens and not sent.is_set():
            sent.set()
            b_started.append(time.perf_counter())
            b_thread.start()
        return not b_done.is_set()  # A leaves once B has its first token

    a = stream_request(client, model, short, 4000, on_token)
    if not sent.is_set():
        raise RuntimeError(f"stream A ended after {len(a['arrivals'])} tokens, before {idle_tokens}")
    b_thread.join()
    b_start, b_first = b_started[0], b_started[0] + b_result["ttft"]
    times = a["arrivals"]
    gaps = [(t1, t1 - t0) for t0, t1 in zip(times, times[1:])]
    idle = [g for t, g in gaps[5:] if t <= b_start]  # the first few steps settle
    during = [g for t, g in gaps if b_start < t <= b_first]
    if b_first > times[-1]:  # A got nothing more until B's prompt was read (or A ended)
        during.append(b_first - max(t for t in times if t <= b_first))
    return {"idle_itl_median_s": round(statistics.median(idle), 4), "prefill_s": round(b_result["ttft"], 2),
            "itl_during_median_s": round(statistics.median(during), 4), "itl_during_max_s": round(max(during), 4),
            "tokens_during": len([1 for t, _ in gaps if b_start < t <= b_first]),
            "median_ratio": round(statistics.median(during) / statistics.median(idle), 2)}


def plot(result: dict, path: str) -> str | None:
    """Requests/s and median time to first token against clients, per engine and pass."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("plot skipped: matplotlib is not installed (pip install 'uio_ds[plot]')")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.4))
    styles = {"new": "o-", "current": "s--", "full": "^:"}
    for (engine, pass_), rows in _series(result["rows"]).items():
        label = f"{engine} ({pass_})"
        style = styles[engine] if pass_ == "cold" else {"warm": "D-", "restart": "v-"}[pass_]
        axes[0].plot([r["clients"] for r in rows], [r["requests_per_s"] for r in rows], style, label=label)
        axes[1].plot([r["clients"] for r in rows], [r["ttft_median_s"] for r in rows], style, label=label)
    for ax, title in ((axes[0], "requests/s"), (axes[1], "median time to first token (s)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend(fontsize=8)
    s = result["settings"]
    fig.suptitle(f"uio-ds serve, SmolLM2-135M, ~{s['doc_tokens']}-token documents, {s['max_tokens']} new tokens "
                 f"({result['machine'].get('cpu', 'CPU')}, {result['machine'].get('cpu_cores_visible', '?')} cores)",
                 fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def _series(rows: list[dict]) -> dict[tuple[str, str], list[dict]]:
    out: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        out.setdefault((r["engine"], r["pass"]), []).append(r)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/smollm2")
    p.add_argument("--uio", default="release/smollm2-uio")
    p.add_argument("--corpus", default="data/kjv")
    p.add_argument("--clients", type=int, nargs="+", default=[1, 4, 16])
    p.add_argument("--doc-tokens", type=int, default=8000)
    p.add_argument("--max-tokens", type=int, default=32)
    p.add_argument("--engines", nargs="+", default=["new", "current", "full"], choices=["new", "current", "full"])
    p.add_argument("--current-ref", default="6397edc",
                   help="the commit whose engine is 'current' (default: the engine before continuous batching, "
                        "chunked prefill and the memory cache)")
    p.add_argument("--idle-tokens", type=int, default=30, help="stream A's tokens before B's prompt is sent")
    p.add_argument("--device", default="auto")
    p.add_argument("--name", default="serve_load")
    args = p.parse_args()
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.model)
    counts = list(args.clients)
    lengths = [args.doc_tokens + 7 * i for c in counts for i in range(c)] + [args.doc_tokens]
    pool = documents(tokenizer, args.corpus, lengths)
    docs, at = {}, 0
    for c in counts:
        docs[c], at = pool[at:at + c], at + c
    long_doc = pool[-1]
    short = tokenizer("The ships went out to sea in the morning, and", add_special_tokens=False)["input_ids"]
    uio = ["--uio", os.path.abspath(args.uio)]
    window = -(-(max(lengths) + args.max_tokens + 1) // 8) * 8  # a multiple of the ratio, past the longest request
    full = ["--segment-length", str(window), "--compression-ratio", str(window), "--memory-cache-mb", "0"]
    scratch = tempfile.mkdtemp(prefix="serve_load_")
    cache_dir = os.path.join(scratch, "memory_cache")
    rows, latency = [], []

    def measure(engine: str, pass_: str, url: str) -> None:
        for c in counts:
            row = {"engine": engine, "pass": pass_, **load_round(url, engine, docs[c], args.max_tokens)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    def run_engine(engine: str, extra: list[str], tree: str = REPO, passes=("cold",), itl: bool = True) -> None:
        proc, url = start_server(args, [*extra, "--name", engine], tree)
        try:
            for pass_ in passes:
                measure(engine, pass_, url)
            if itl:
                latency.append({"engine": engine, **latency_during_prefill(url, engine, short, long_doc,
                                                                           args.idle_tokens)})
                print(json.dumps(latency[-1]), flush=True)
        finally:
            stop_server(proc)

    try:
        if "new" in args.engines:
            new = [*uio, "--memory-cache", cache_dir, "--max-queue", "256"]
            run_engine("new", new, passes=("cold", "warm"))
            run_engine("new", new, passes=("restart",), itl=False)
        if "current" in args.engines:
            tree = os.path.join(scratch, "current")
            subprocess.run(["git", "worktree", "add", "--detach", tree, args.current_ref], cwd=REPO, check=True,
                           capture_output=True)
            try:
                run_engine("current", uio, tree)
            finally:
                subprocess.run(["git", "worktree", "remove", "--force", tree], cwd=REPO, capture_output=True)
        if "full" in args.engines:
            run_engine("full", full)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)

    print_table(rows, ["engine", "pass", "clients", "wall_s", "requests_per_s", "ttft_median_s", "ttft_max_s",
                       "tokens_per_s"])
    print_table(latency, ["engine", "idle_itl_median_s", "prefill_s", "itl_during_median_s", "itl_during_max_s",
                          "tokens_during", "median_ratio"])
    settings = {k: getattr(args, k) for k in ("model", "uio", "clients", "doc_tokens", "max_tokens", "engines",
                                              "current_ref", "idle_tokens")}
    by = {(r["engine"], r["pass"], r["clients"]): r for r in rows}
    goals = {}
    top = max(counts)
    if ("current", "cold", top) in by:
        for pass_ in ("cold", "warm", "restart"):
            if ("new", pass_, top) in by:
                goals[f"requests_per_s_new_{pass_}_over_current_at_{top}"] = round(
                    by[("new", pass_, top)]["requests_per_s"] / by[("current", "cold", top)]["requests_per_s"], 2)
    for pass_ in ("warm", "restart"):
        if ("new", pass_, 1) in by:
            goals[f"ttft_cold_over_{pass_}_at_1"] = round(by[("new", "cold", 1)]["ttft_median_s"] /
                                                          by[("new", pass_, 1)]["ttft_median_s"], 1)
    for row in latency:
        goals[f"itl_during_prefill_over_idle_{row['engine']}"] = row["median_ratio"]
    path = write_results(args.name, {"settings": settings, "rows": rows, "latency_during_prefill": latency,
                                     "goals": goals})
    with open(path) as f:
        png = plot(json.load(f), path[: -len(".json")] + ".png")
    print(f"wrote {path}" + (f" and {png}" if png else ""))
    summary_line(goals)


if __name__ == "__main__":
    main()
