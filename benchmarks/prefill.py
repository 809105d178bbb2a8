"""Prefill time and peak memory vs context length: UIO against full attention and StreamingLLM
(and HOMER when it is available), plus decode throughput vs context length.

* uio: every full segment compressed in parallel (batched encoder, chunked), then the
  decoder over the residual with the memories as a prefix cache;
* full: the base model over the whole prompt in one pass, building its KV cache (torch SDPA;
  flash-attn on GPU when installed);
* streaming: StreamingLLM, 4 attention sinks + a 1,020-token window, read in chunks;
* homer: HOMER, chunks of 2l tokens merged hierarchically into one chunk-sized cache (the
  first and last 16 tokens as its never-pruned prefix and suffix).

Default: a CPU sweep (1K..64K tokens) on a small random Llama shape ("bench": hidden 256,
4 layers, GQA 8/4 heads); ``--model PATH`` takes a local model directory, ``--shape
llama2-7b`` a random Llama-2-7B (for a GPU; random weights are honest for timing). Peak
memory is the high-water mark of tensor storage the prefill allocates (weights excluded):
TensorMemoryTracker on CPU, torch.cuda.max_memory_allocated on GPU. A point that runs out
of memory is recorded as OOM; a method whose last point took longer than ``--time-budget``
seconds skips the longer lengths. Fitted exponents: slope of log(time) and log(memory) vs
log(length), over the whole sweep and over its upper half.

    python benchmarks/prefill.py [--lengths 1024 2048 ...] [--methods uio full streaming]
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import torch
from common import RESULTS_DIR, print_table, summary_line, write_results

from uio_ds.baselines import HOMER, StreamingLLM
from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.model.base import load_causal_lm
from uio_ds.model.generation import MemoryStream
from uio_ds.model.kv import forward_after_cache, prefix_cache
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.utils.memory_tracker import TensorMemoryTracker

MIB = 2**20
SHAPES = {
    "bench": dict(hidden_size=256, intermediate_size=688, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=512),
    "llama2-7b": dict(hidden_size=4096, intermediate_size=11008, num_hidden_layers=32, num_attention_heads=32,
                      num_key_value_heads=32, vocab_size=32000),
}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16}


def device() -> torch.device:
    return torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def build_base(args, max_positions: int):
    from transformers import AutoModelForCausalLM, LlamaConfig

    dtype = DTYPES[args.dtype]
    if args.model:
        return load_causal_lm(args.model, dtype=dtype).to(device()).eval(), args.model
    config = LlamaConfig(max_position_embeddings=max_positions, rope_theta=10000.0, **SHAPES[args.shape])
    torch.manual_seed(0)
    with torch.device(device()):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval(), f"random {args.shape}"


def uio_model(base, args) -> UIOMemoryModel:
    lora = dict(rank=8, alpha=32.0)
    config = UIOConfig(segment_length=args.segment_length, compression_ratio=args.compression_ratio,
                       encoder_lora=LoRAConfig(target_modules=("q_proj", "v_proj"), **lora),
                       transfer_lora=LoRAConfig(target_modules=("k_proj", "v_proj"), **lora), dtype=args.dtype)
    return UIOMemoryModel(base, config).eval()


class Runner:
    """prefill(ids) and decode(n) for one method, with whatever state decoding needs."""

    def __init__(self, method: str, base, uio: UIOMemoryModel, args):
        self.method, self.base, self.uio, self.args = method, base, uio, args
        self.state = None

    @torch.no_grad()
    def prefill(self, ids: torch.Tensor) -> torch.Tensor:
        if self.method == "uio":
            self.state = MemoryStream(self.uio, encode_batch_size=self.args.encode_batch)
            return self.state.prefill(ids)
        if self.method == "full":
            self.state = prefix_cache(self.base, None)  # an empty cache the pass fills
            return forward_after_cache(self.base, ids, self.state, logits_to_keep=1)[:, -1]
        if self.method == "streaming":
            self.state = StreamingLLM(self.base, sink_tokens=4, window_tokens=1020)
            return self.state.prefill(ids)
        if self.method == "homer":
            self.state = HOMER(self.base, chunk_tokens=2 * self.args.segment_length)
            return self.state.prefill(ids[:, 16:-16], ids[:, :16], ids[:, -16:])
        raise ValueError(self.method)

    @torch.no_grad()
    def decode(self, steps: int) -> None:
        token = torch.full((1, 1), 5, dtype=torch.long, device=device())
        for _ in range(steps):
            if self.method == "uio":
                self.state.feed(token)
            elif self.method == "full":
                forward_after_cache(self.base, token, self.state, logits_to_keep=1)
            else:
                self.state.step(token)


def is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.OutOfMemoryError) or "out of memory" in str(err).lower()


def measure(runner: Runner, ids: torch.Tensor, args) -> dict:
    """Peak memory (one tracked run), then the median of timed runs, then decode speed."""
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start_bytes = torch.cuda.memory_allocated()
        sync()
        t0 = time.perf_counter()
        runner.prefill(ids)
        sync()
        first = time.perf_counter() - t0
        peak = torch.cuda.max_memory_allocated() - start_bytes
    else:
        with TensorMemoryTracker() as tracker:
            t0 = time.perf_counter()
            runner.prefill(ids)
            first = time.perf_counter() - t0
        peak = tracker.peak
    repeats = args.repeats if first < args.repeat_below else 1
    times = [first] if repeats == 1 else []
    for _ in range(repeats if repeats > 1 else 0):
        sync()
        t0 = time.perf_counter()
        runner.prefill(ids)
        sync()
        times.append(time.perf_counter() - t0)
    row = {"prefill_s": statistics.median(times), "peak_mib": peak / MIB, "runs": len(times)}
    if args.decode_tokens:
        runner.decode(2)  # warm
        sync()
        t0 = time.perf_counter()
        runner.decode(args.decode_tokens)
        sync()
        row["decode_tok_s"] = args.decode_tokens / (time.perf_counter() - t0)
    return row


def matmul_rate(dtype: torch.dtype) -> float:
    """Best-of-10 2048x2048 matmul rate of this device, FLOP/s: the roof for MFU."""
    a = torch.randn(2048, 2048, dtype=dtype, device=device())
    best = math.inf
    for _ in range(10):
        sync()
        t0 = time.perf_counter()
        a @ a
        sync()
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best


def encoder_flops(base, tokens_per_segment: int, segments: int) -> float:
    """Matmul FLOPs of the encoder: 2 x layer weights x tokens, plus causal attention."""
    cfg = base.config
    layer_params = sum(p.numel() for p in base.model.layers.parameters() if p.ndim == 2)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    attention = 2 * cfg.num_hidden_layers * cfg.num_attention_heads * head_dim * tokens_per_segment**2
    return segments * (2 * layer_params * tokens_per_segment + attention)


def encoder_throughput(uio: UIOMemoryModel, args) -> dict:
    segments = args.encode_batch if args.encode_batch != "auto" else 8
    ids = torch.randint(3, 500, (segments, uio.segment_length), device=device())
    with torch.no_grad():
        uio.encode(ids)
        times = []
        for _ in range(3):
            sync()
            t0 = time.perf_counter()
            uio.encode(ids)
            sync()
            times.append(time.perf_counter() - t0)
    flops = encoder_flops(uio.base, uio.segment_length + uio.num_mem_tokens, segments)
    rate = flops / min(times)
    roof = matmul_rate(DTYPES[args.dtype])
    return {"segments": segments, "seconds": min(times), "tflops": rate / 1e12, "roof_tflops": roof / 1e12,
            "mfu": rate / roof}


def fit(lengths: list[int], values: list[float]) -> float | None:
    if len(lengths) < 2:
        return None
    xs, ys = [math.log(x) for x in lengths], [math.log(y) for y in values]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)


def exponents(rows: list[dict], method: str) -> dict:
    ok = [r for r in rows if r["method"] == method and r["status"] == "ok"]
    lengths = [r["length"] for r in ok]
    out = {}
    for key in ("prefill_s", "peak_mib"):
        out[key] = fit(lengths, [r[key] for r in ok])
        upper = [r for r in ok if r["length"] >= statistics.median(lengths)] if ok else []
        out[key + "_upper_half"] = fit([r["length"] for r in upper], [r[key] for r in upper])
    return out


def plot(rows: list[dict], methods: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(17, 5))
    panels = (("prefill_s", "prefill time (s)"), ("peak_mib", "peak tensor memory (MiB)"),
              ("decode_tok_s", "decode tokens/s"))
    for ax, (key, label) in zip(axes, panels):
        for method in methods:
            ok = [r for r in rows if r["method"] == method and r["status"] == "ok" and key in r]
            if ok:
                ax.plot([r["length"] for r in ok], [r[key] for r in ok], "o-", label=method)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("context length (tokens)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
    axes[0].set_title("prefill time (log-log)")
    axes[1].set_title("prefill peak memory (log-log)")
    axes[2].set_title("decoding after the prefill")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local model directory (default: a random --shape)")
    p.add_argument("--shape", default="bench", choices=sorted(SHAPES))
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[1024 * 2**i for i in range(7)])
    p.add_argument("--methods", nargs="+", default=["uio", "full", "streaming", "homer"])
    p.add_argument("--segment-length", type=int, default=1024)
    p.add_argument("--compression-ratio", type=int, default=32)
    p.add_argument("--encode-batch", type=lambda v: v if v == "auto" else int(v), default="auto",
                   help="segments per batched encoder call: a number, or auto (from the memory budget: "
                        "UIOMemoryModel.encode_batch_for)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--repeat-below", type=float, default=10.0, help="repeat a point only if one run is faster")
    p.add_argument("--decode-tokens", type=int, default=16)
    p.add_argument("--time-budget", type=float, default=150.0)
    p.add_argument("--name", default="prefill")
    args = p.parse_args()
    if torch.cuda.is_available() is False:
        torch.set_num_threads(os.cpu_count() or 1)

    base, label = build_base(args, max_positions=max(args.lengths) + 1024)
    uio = uio_model(base, args)
    methods = args.methods
    vocab = base.config.vocab_size
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, vocab, (1, max(args.lengths)), generator=gen).to(device())

    rows, over_budget = [], set()
    warm = tokens[:, : min(args.lengths)]
    runners = {m: Runner(m, base, uio, args) for m in methods}
    for runner in runners.values():
        runner.prefill(warm)
    for length in sorted(args.lengths):
        for method in methods:
            row = {"method": method, "length": length}
            if method in over_budget:
                row["status"] = "skipped (time budget)"
            else:
                try:
                    row.update(measure(runners[method], tokens[:, :length], args), status="ok")
                    if row["prefill_s"] > args.time_budget:
                        over_budget.add(method)
                except RuntimeError as err:
                    if not is_oom(err):
                        raise
                    row["status"] = "OOM"
                    over_budget.add(method)
                    if torch.cuda.is_available():
                        torch.cuda.empty_cache()
            rows.append(row)
            shown = {k: (round(v, 3) if isinstance(v, float) else v) for k, v in row.items()}
            print_table([shown], ["method", "length", "status", "prefill_s", "peak_mib", "decode_tok_s", "runs"])
            sys.stdout.flush()

    fits = {m: exponents(rows, m) for m in methods}
    throughput = encoder_throughput(uio, args) if "uio" in methods else None
    print()
    table = [{k: (round(v, 3) if isinstance(v, float) else v) for k, v in r.items()} for r in rows]
    print_table(table, ["method", "length", "status", "prefill_s", "peak_mib", "decode_tok_s", "runs"])
    print("\nfitted exponents (whole sweep / upper half):")
    for m, f in fits.items():
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        print(f"  {m:10s} time {fmt(f['prefill_s'])} / {fmt(f['prefill_s_upper_half'])}   "
              f"memory {fmt(f['peak_mib'])} / {fmt(f['peak_mib_upper_half'])}")
    if throughput:
        print(f"UIO encoder: {throughput['tflops'] * 1e3:.1f} GFLOP/s = {100 * throughput['mfu']:.0f}% of the "
              f"measured {args.dtype} matmul rate ({throughput['roof_tflops'] * 1e3:.0f} GFLOP/s)")

    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    plot(rows, methods, png, f"{label}, {args.dtype}, l={args.segment_length}, ratio {args.compression_ratio}, "
                             f"device {device().type}")
    path = write_results(args.name, {
        "model": label, "dtype": args.dtype, "segment_length": args.segment_length,
        "compression_ratio": args.compression_ratio, "encode_batch": args.encode_batch,
        "streaming": {"sink_tokens": 4, "window_tokens": 1020},
        "rows": rows, "exponents": fits, "encoder_throughput": throughput,
    })
    print(f"wrote {path} and {png}")
    summary_line({"exponents": {m: {k: (round(v, 3) if v is not None else None) for k, v in f.items()}
                                for m, f in fits.items()},
                  "encoder_mfu": round(throughput["mfu"], 3) if throughput else None})


if __name__ == "__main__":
    main()
