"""Peak accelerator memory per rank of one UIO training step, planned without the accelerator.

For a named shape (llama2-7b, llama3-8b, mistral-7b, qwen2-7b) or a local model directory,
and the training settings below, runs uio_ds's own training step on fake tensors
(``uio_ds.plan.memory``) at each document length, with activation offload on and off, and
prints the breakdown: frozen weights, trainable weights, master weights, Adam moments,
gradients, reduce bucket (persistent, from DeepSpeed's ZeRO partitioning) and, at the step's
high-water mark, encoder graphs, memories, memory K/V, decoder activations, gradients and
backward temporaries (measured on fake tensors). A log-log PNG with 24/40/80 GB card lines.

``--validate`` instead checks the estimator: the same step on real CPU tensors (tiny model,
and SmolLM2 when ``models/smollm2`` is prepared), measured by the same tensor tracker,
against the fake-tensor prediction.

    python benchmarks/memory_plan.py                          # the 100K / 24 GB claim, 4K..128K
    python benchmarks/memory_plan.py --model models/smollm2 --lengths 4096 16384 --ranks 2
    python benchmarks/memory_plan.py --validate
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from concurrent.futures import ProcessPoolExecutor

import torch
from common import RESULTS_DIR, print_table, summary_line, write_results

from uio_ds.plan.memory import GIB, STEP_PARTS, PlanSettings, measure, plan, zero_settings

CARDS_GB = (24, 40, 80)


def settings_from(args, tokens: int, offload: bool, **over) -> PlanSettings:
    ds = {}
    if args.deepspeed:
        with open(args.deepspeed) as f:
            ds = json.load(f).get("zero_optimization", {})
    values = dict(segment_length=args.segment_length, compression_ratio=args.compression_ratio,
                  algorithm=args.algorithm, window=args.window, document_tokens=tokens,
                  micro_batch=args.micro_batch, dtype=args.dtype, zero_stage=args.zero_stage, ranks=args.ranks,
                  activation_offload=offload, optimizer_offload=args.optimizer_offload, lora_rank=args.lora_rank,
                  **zero_settings(ds))
    values.update(over)
    return PlanSettings(**values)


def plot(rows: list[dict], args, offloads) -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for offload in offloads:
        label = "on" if offload else "off"
        pts = sorted((r["tokens"], r["peak_gib"] * GIB / 1e9) for r in rows if r["offload"] == label)
        ax.plot(*zip(*pts), "o-", label=f"activation offload {label}")
    lengths = sorted({r["tokens"] for r in rows})
    for gb in CARDS_GB:
        ax.axhline(gb, color="grey", lw=0.8, ls="--")
        ax.annotate(f"{gb} GB card", (lengths[0], gb), xytext=(2, 3), textcoords="offset points",
                    fontsize=8, color="grey")
    ax.set_xscale("log", base=2)
    ax.set_ylim(0, max(CARDS_GB) * 1.08)
    ax.set(xlabel="document length (tokens)", ylabel="peak device memory per rank (GB)")
    ax.set_title(f"{args.model}: {args.algorithm}({args.window}), l={args.segment_length}, ratio "
                 f"{args.compression_ratio}, {args.dtype}, ZeRO-{args.zero_stage} x {args.ranks}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="center right")
    fig.tight_layout()
    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    fig.savefig(png, dpi=110)
    return png


def sweep(args) -> None:
    offloads = {"on": [True], "off": [False], "both": [True, False]}[args.offload]
    jobs = [(offload, tokens) for offload in offloads for tokens in args.lengths]
    # each plan is one single-threaded process's work: independent points run side by side
    with ProcessPoolExecutor(max_workers=args.jobs, initializer=torch.set_num_threads, initargs=(1,)) as pool:
        futures = {job: pool.submit(plan, args.model, settings_from(args, job[1], job[0]))
                   for job in sorted(jobs, key=lambda j: -j[1])}  # longest first
        results = [futures[job].result() for job in jobs]
    rows, plans = [], []
    for (offload, tokens), p in zip(jobs, results):
        plans.append(p.as_dict())
        row = {"offload": "on" if offload else "off", "tokens": tokens, "peak_gib": round(p.peak / GIB, 2)}
        row.update({k: round(v / GIB, 2) for k, v in p.persistent.items() if v})
        row.update({k: round(p.step.get(k, 0) / GIB, 2) for k in STEP_PARTS})
        row["plan_s"] = p.seconds
        rows.append(row)
        print(f"offload {row['offload']:>3}  {tokens:>7} tokens: {row['peak_gib']:6.2f} GiB per rank "
              f"(step {p.step_peak / GIB:.2f} GiB, planned in {p.seconds:.0f} s)", flush=True)
    columns = ["offload", "tokens", "peak_gib"] + [c for c in rows[0] if c not in ("offload", "tokens", "peak_gib")]
    print()
    print_table(rows, columns)
    for note in plans[-1]["notes"]:
        print("note:", note)

    png = plot(rows, args, offloads)
    path = write_results(args.name, {"model": args.model, "mode": "fake tensors (estimate)", "rows": rows,
                                     "plans": plans})
    print(f"wrote {path} and {png}")
    longest = max(args.lengths)
    summary_line({f"offload_{r['offload']}_gib": r["peak_gib"] for r in rows if r["tokens"] == longest})


def validate(args) -> None:
    """Fake-tensor prediction vs real CPU measurement of the same step."""
    from uio_ds.model.tiny import build_tiny_model

    cases = []
    with tempfile.TemporaryDirectory() as tmp:
        tiny = build_tiny_model("llama", os.path.join(tmp, "tiny"), hidden_size=256, intermediate_size=1024,
                                num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=4096)
        models = [("tiny llama (hidden 256, GQA)", tiny, 128, 4, 1024)]
        if os.path.isdir("models/smollm2"):
            models.append(("SmolLM2-135M", "models/smollm2", 256, 8, 1024))
        for label, source, l, ratio, tokens in models:
            for algorithm, window, mode in (("unbiased", 2, "keep"), ("unbiased", 2, "recompute"),
                                            ("tbptt", 2, "keep"), ("full", None, "keep")):
                for dtype in ("float32", "bfloat16"):
                    s = settings_from(args, tokens, False, segment_length=l, compression_ratio=ratio,
                                      algorithm=algorithm, window=window, recompute=mode == "recompute",
                                      dtype=dtype, ranks=2)
                    predicted, measured = plan(source, s), measure(source, s)
                    cases.append({"model": label, "algorithm": f"{algorithm}({window})" if window else algorithm,
                                  "graph_mode": mode, "dtype": dtype, "tokens": tokens,
                                  "predicted_mib": round(predicted.step_peak / 2**20, 1),
                                  "measured_mib": round(measured.step_peak / 2**20, 1),
                                  "ratio": round(predicted.step_peak / measured.step_peak, 3),
                                  "predicted_total_mib": round(predicted.peak / 2**20, 1),
                                  "measured_total_mib": round(measured.peak / 2**20, 1)})
                    print_table(cases[-1:], list(cases[-1]))
                    sys.stdout.flush()
    print()
    print_table(cases, list(cases[0]))
    worst = max(abs(c["ratio"] - 1) for c in cases)
    path = write_results(f"{args.name}_validation", {"cases": cases, "worst_relative_error": round(worst, 4)})
    print(f"wrote {path}; worst |predicted/measured - 1| = {worst:.3f}")
    summary_line({"worst_relative_error": round(worst, 4), "cases": len(cases)})


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="llama2-7b", help="named shape or local HF model directory")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 8192, 16384, 32768, 65536, 100000, 131072])
    p.add_argument("--segment-length", type=int, default=1024)
    p.add_argument("--compression-ratio", type=int, default=32)
    p.add_argument("--algorithm", default="unbiased", choices=["full", "tbptt", "incremental", "unbiased"])
    p.add_argument("--window", type=int, default=2)
    p.add_argument("--micro-batch", type=int, default=1)
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--zero-stage", type=int, default=2, choices=[0, 1, 2, 3])
    p.add_argument("--ranks", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--offload", default="both", choices=["on", "off", "both"], help="activation offload")
    p.add_argument("--optimizer-offload", action="store_true")
    p.add_argument("--deepspeed", default="ds_configs/zero2.json",
                   help="DeepSpeed config whose reduce_bucket_size / overlap_comm / contiguous_gradients apply")
    p.add_argument("--replot", action="store_true", help="only redraw the PNG from the sweep's JSON")
    p.add_argument("--jobs", type=int, default=1, help="plans computed in parallel processes")
    p.add_argument("--validate", action="store_true", help="fake-tensor prediction vs real CPU measurement")
    p.add_argument("--name", default="memory_plan")
    args = p.parse_args()
    if args.algorithm == "full":
        args.window = None
    if args.replot:  # redraw the PNG from the JSON a sweep wrote
        with open(os.path.join(RESULTS_DIR, f"{args.name}.json")) as f:
            rows = json.load(f)["rows"]
        print("wrote", plot(rows, args, [o == "on" for o in dict.fromkeys(r["offload"] for r in rows)]))
        return
    validate(args) if args.validate else sweep(args)


if __name__ == "__main__":
    main()
