"""Time and peak tensor memory of one gradient computation vs the window S (the paper's
Figure 7): plain TBPTT(S), incremental TBPTT(S) and unbiased incremental TBPTT(S), both
keeping the encoder graphs of the window ("keep"), plus incremental TBPTT(S) that rebuilds
each encoder graph at its single backward ("recompute"). Full BPTT is measured once as a
reference.

One document of ``--segments`` segments of generated English text on a small Llama.
Peak memory: one run per configuration inside ``TensorMemoryTracker`` (bytes of tensor
storage the run allocates: activations, saved tensors, gradients; the weights are not
counted); that run also gives the statistics and the gradient, and serves as the
configuration's warm-up (the tracker slows a run, so it is never timed). Time: then
``--repeats`` rounds over all configurations, each round in a new random order so that
load from other processes spreads over all of them; median per configuration, and the
minimum, which is the better estimate of the cost itself on a shared machine.

    python benchmarks/tbptt.py [--windows 1 2 4 8] [--repeats 3] [--hidden 256]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import tempfile
import time

import torch
from common import RESULTS_DIR, flat, perturb_trainable, print_table, summary_line, write_results
from transformers import AutoTokenizer

from uio_ds.algo import TBPTT, Full, Incremental, Unbiased
from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.formats import synthetic_text
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.tiny import build_tiny_model
from uio_ds.utils.memory_tracker import TensorMemoryTracker

MIB = 2**20
METHODS = {
    "tbptt": lambda S: TBPTT(S),
    "incremental": lambda S: Incremental(S, graph_mode="keep"),
    # a fixed seed: every run of a configuration draws the same windows, so repeats time the same work
    "unbiased": lambda S: Unbiased(S, seed=0, graph_mode="keep"),
    "incremental-recompute": lambda S: Incremental(S, graph_mode="recompute"),
}
STAT_KEYS = ("encoder_graph_forwards", "encoder_backward_passes", "max_live_graphs", "encoder_recomputes",
             "evictions")


def document(model_dir: str, length: int) -> torch.Tensor:
    tok = AutoTokenizer.from_pretrained(model_dir)
    sentences = max(64, length // 15)
    while True:
        # seed 1: the tokenizer was trained on seed 0's text
        ids = tok(synthetic_text(sentences, seed=1), return_tensors="pt")["input_ids"][0]
        if ids.numel() >= length:
            return ids[:length].unsqueeze(0)
        sentences *= 2


def timed(run) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


def plot(rows: list[dict], full: dict, windows: list[int], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5.2))
    styles = {"tbptt": ("tab:red", "o", "-"), "incremental": ("tab:blue", "s", "-"),
              "unbiased": ("tab:green", "^", "-"), "incremental-recompute": ("tab:purple", "D", "--")}
    for method, (color, marker, ls) in styles.items():
        sel = sorted((r for r in rows if r["method"] == method), key=lambda r: r["S"])
        if not sel:
            continue
        xs = [r["S"] for r in sel]
        label = {"tbptt": "tbptt (plain)", "incremental-recompute": "incremental (recompute)"}.get(
            method, f"{method} (keep)")
        ax_t.plot(xs, [r["time_median_s"] for r in sel], color=color, marker=marker, linestyle=ls,
                  label=f"{label}, median")
        # the minimum is drawn too: on a shared machine single repeats can be many times slower
        ax_t.plot(xs, [r["time_min_s"] for r in sel], color=color, marker=marker, markerfacecolor="none",
                  linestyle=":", linewidth=1, label=f"{label}, minimum")
        ax_m.plot(xs, [r["peak_mib"] for r in sel], color=color, marker=marker, linestyle=ls, label=label)
    ax_t.axhline(full["time_median_s"], color="gray", linestyle="-.", label="full BPTT (reference), median")
    ax_m.axhline(full["peak_mib"], color="gray", linestyle="-.", label="full BPTT (reference)")
    for ax in (ax_t, ax_m):
        ax.set_xscale("log", base=2)
        ax.set_xticks(windows, [str(w) for w in windows])
        ax.set_xlabel("window S (segments)")
        ax.grid(alpha=0.3)
        ax.set_ylim(bottom=0)
    ax_t.set_ylabel("seconds per gradient")
    ax_t.set_title("time of one gradient computation")
    ax_m.set_ylabel("peak tensor memory (MiB)")
    ax_m.set_title("peak tensor memory of one gradient computation")
    ax_t.legend(fontsize=7.5, ncol=2)
    ax_m.legend(fontsize=8.5)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="llama", choices=["llama", "mistral", "qwen2"])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--segment-length", type=int, default=128)
    p.add_argument("--compression-ratio", type=int, default=8)
    p.add_argument("--lora-rank", type=int, default=16)
    p.add_argument("--segments", type=int, default=16, help="segments in the document (T)")
    p.add_argument("--windows", type=int, nargs="+", default=[1, 2, 4, 8])
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--perturb", type=float, default=0.05, help="std of the perturbation of the trainable parts")
    p.add_argument("--name", default="tbptt")
    args = p.parse_args()
    if args.repeats < 1:
        raise SystemExit("--repeats must be >= 1")

    started = time.perf_counter()
    l, T = args.segment_length, args.segments
    with tempfile.TemporaryDirectory() as model_dir:
        build_tiny_model(args.arch, model_dir, seed=0, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2,
                         max_position_embeddings=8192)
        doc = document(model_dir, T * l)
        lora = dict(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
        config = UIOConfig(segment_length=l, compression_ratio=args.compression_ratio,
                           encoder_lora=LoRAConfig(**lora, target_modules=("q_proj", "v_proj")),
                           transfer_lora=LoRAConfig(**lora, target_modules=("k_proj", "v_proj")),
                           dtype="float32")
        model = UIOMemoryModel.from_pretrained(model_dir, config).eval()
    perturb_trainable(model, seed=0, scale=args.perturb)
    params = model.trainable_parameters()

    configs = [(m, S) for m in args.methods for S in args.windows] + [("full", None)]

    def runner(method, S):
        make = Full if method == "full" else lambda: METHODS[method](S)
        return lambda: make().run(model, doc)

    load_before = os.getloadavg()
    for method in args.methods:  # first calls pay for lazy initialisation
        runner(method, min(args.windows))()
    warm, peaks, times = {}, {}, {c: [] for c in configs}
    for c in configs:
        with TensorMemoryTracker() as tracker:
            warm[c] = runner(*c)()
        peaks[c] = tracker.peak
    for round_ in range(args.repeats):
        for c in random.Random(round_).sample(configs, len(configs)):
            times[c].append(timed(runner(*c)))
    load_after = os.getloadavg()

    reference = {S: flat(warm[("tbptt", S)].grads, params) for S in args.windows if ("tbptt", S) in warm}
    rows = []
    for c in configs:
        method, S = c
        res = warm[c]
        row = {"method": method, "S": S,
               "time_median_s": statistics.median(times[c]), "time_min_s": min(times[c]),
               "time_max_s": max(times[c]), "times_s": times[c], "peak_mib": peaks[c] / MIB,
               **{k: int(res.stats[k]) for k in STAT_KEYS if k in res.stats}}
        if method in ("incremental", "incremental-recompute") and S in reference:
            # incremental TBPTT is the TBPTT gradient, computed another way: they must agree
            g = flat(res.grads, params)
            row["rel_err_vs_tbptt"] = ((g - reference[S]).norm() / reference[S].norm()).item()
        rows.append(row)
    full = next(r for r in rows if r["method"] == "full")
    rows = [r for r in rows if r["method"] != "full"]

    def ratio(a, b):
        return a / b if b else None

    lo, hi = min(args.windows), max(args.windows)
    by = {(r["method"], r["S"]): r for r in rows}
    time_ratio = {m: ratio(by[m, hi]["time_median_s"], by[m, lo]["time_median_s"]) for m in args.methods}
    time_ratio_min = {m: ratio(by[m, hi]["time_min_s"], by[m, lo]["time_min_s"]) for m in args.methods}
    memory_ratio = {}
    if "tbptt" in args.methods:
        for m in args.methods:
            if m != "tbptt":
                memory_ratio[m] = {S: ratio(by[m, S]["peak_mib"], by["tbptt", S]["peak_mib"]) for S in args.windows}

    table = [{
        "method": r["method"], "S": r["S"], "median_s": f"{r['time_median_s']:.3f}",
        "min-max_s": f"{r['time_min_s']:.2f}-{r['time_max_s']:.2f}", "peak_MiB": f"{r['peak_mib']:.1f}",
        "enc_fwd": r.get("encoder_graph_forwards", ""), "enc_bwd": r.get("encoder_backward_passes", ""),
        "live_graphs": r.get("max_live_graphs", ""), "recomputes": r.get("encoder_recomputes", ""),
        "rel_err_vs_tbptt": f"{r['rel_err_vs_tbptt']:.1e}" if "rel_err_vs_tbptt" in r else "",
    } for r in rows + [full]]
    table[-1]["S"] = "all"
    print(f"one gradient of a {T}-segment document (l={l}, ratio {args.compression_ratio}, {T * l} tokens), "
          f"tiny {args.arch} hidden {args.hidden} x {args.layers} layers; median of {args.repeats} after a warm-up; "
          f"load average {load_before[0]:.1f} before, {load_after[0]:.1f} after")
    print_table(table, list(table[0]))
    print()
    print(f"time ratio S={hi} / S={lo} (paper: incremental flat, <= 1.1; tbptt grows):")
    print_table([{"method": m, "of medians": f"{v:.2f}", "of minima": f"{time_ratio_min[m]:.2f}"}
                 for m, v in time_ratio.items()], ["method", "of medians", "of minima"])
    if memory_ratio:
        print()
        print("peak-memory ratio method / tbptt per S (paper: incremental about 0.5):")
        mem_rows = [{"method": m, **{f"S={S}": f"{v:.2f}" for S, v in d.items()}} for m, d in memory_ratio.items()]
        print_table(mem_rows, list(mem_rows[0]))

    elapsed = time.perf_counter() - started
    os.makedirs(RESULTS_DIR, exist_ok=True)
    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    plot(rows, full, args.windows, png,
         f"Gradient cost vs window S: one {T}-segment document (l={l}, ratio {args.compression_ratio}), tiny "
         f"{args.arch} (hidden {args.hidden}, {args.layers} layers), {torch.get_num_threads()} CPU threads")
    path = write_results(args.name, {
        "description": "Paper Figure 7: time (median of repeats after a warm-up) and peak tensor memory "
                       "(TensorMemoryTracker: storage allocated during the run, weights excluded) of one "
                       "gradient computation of one document, vs the window S. 'keep' methods hold the encoder "
                       "graphs of the window; 'incremental-recompute' rebuilds each at its single backward.",
        "model": {"arch": args.arch, "hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
                  "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "lora_rank": args.lora_rank, "lora_alpha": 2.0 * args.lora_rank, "perturb_std": args.perturb,
                  "trainable_parameters": sum(p.numel() for p in params)},
        "segment_length": l, "compression_ratio": args.compression_ratio, "segments": T, "tokens": T * l,
        "repeats": args.repeats,
        "text": "uio_ds.data.generators.synthetic.synthetic_text(seed=1), tokenized with the tiny tokenizer",
        "rows": rows, "full_bptt": full,
        f"time_ratio_S{hi}_over_S{lo}": time_ratio, f"time_ratio_S{hi}_over_S{lo}_of_minima": time_ratio_min,
        "load_average_1_5_15min": {"before": load_before, "after": load_after},
        "peak_memory_ratio_over_tbptt": {m: {str(S): v for S, v in d.items()} for m, d in memory_ratio.items()},
        "seconds": round(elapsed, 1),
    })
    print(f"wrote {path} and {png} in {elapsed:.0f} s")
    summary_line({"time_ratio": {m: round(v, 3) for m, v in time_ratio.items()},
                  "time_ratio_of_minima": {m: round(v, 3) for m, v in time_ratio_min.items()},
                  "memory_ratio_at_S%d" % hi: {m: round(d[hi], 3) for m, d in memory_ratio.items()}})


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(2)
    main()
