"""What the prefill's memory budget costs: UIO's prefill with the encoder batch from the budget
("auto", the default) against fixed batches and against full attention, peak memory and time,
measured in the same run, length by length.

    python benchmarks/prefill_budget.py --model models/smollm2 --dtype bfloat16 --lengths 1024 2048 4096 8192

Peak memory is the high-water mark of tensor storage the prefill allocates, weights excluded
(TensorMemoryTracker on CPU, torch.cuda.max_memory_allocated on GPU); times are medians of
``--repeats`` runs taken in turns (auto, 8, all at once, full, auto, ...), so a noisy machine
slows them alike.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import print_table, summary_line, write_results
from prefill import DTYPES, build_base, device, sync, uio_model

from uio_ds.model.generation import MemoryStream
from uio_ds.utils.memory_tracker import TensorMemoryTracker

MIB = 2**20


def peak_of(fn) -> int:
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        start = torch.cuda.memory_allocated()
        fn()
        sync()
        return torch.cuda.max_memory_allocated() - start
    with TensorMemoryTracker() as tracker:
        fn()
    return tracker.peak


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default=None, help="local model directory (default: a random --shape)")
    p.add_argument("--shape", default="bench")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--lengths", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    p.add_argument("--segment-length", type=int, default=1024)
    p.add_argument("--compression-ratio", type=int, default=32)
    p.add_argument("--batches", nargs="+", default=["auto", "8", "all"], help="encoder batches to compare")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--name", default="prefill_budget")
    args = p.parse_args()
    base, label = build_base(args, max_positions=max(args.lengths) + 1024)
    uio = uio_model(base, args)
    gen = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, base.config.vocab_size, (1, max(args.lengths)), generator=gen).to(device())
    batches = {b: (b if b == "auto" else None if b == "all" else int(b)) for b in args.batches}
    runs = {f"uio batch {b}": (lambda ids, v=v: MemoryStream(uio, v).prefill(ids)) for b, v in batches.items()}
    runs["full"] = lambda ids: base(ids, use_cache=True, logits_to_keep=1)
    rows = []
    with torch.no_grad():
        for fn in runs.values():  # warm
            fn(tokens[:, : args.segment_length * 2])
        for length in args.lengths:
            ids = tokens[:, :length]
            peaks = {name: peak_of(lambda fn=fn: fn(ids)) for name, fn in runs.items()}
            times: dict[str, list[float]] = {name: [] for name in runs}
            for _ in range(args.repeats):
                for name, fn in runs.items():
                    sync()
                    t0 = time.perf_counter()
                    fn(ids)
                    sync()
                    times[name].append(time.perf_counter() - t0)
            chosen = uio.encode_batch_for(length - length % args.segment_length) if length >= args.segment_length else 0
            for name in runs:
                rows.append({"length": length, "method": name, "peak_mib": round(peaks[name] / MIB, 1),
                             "peak_vs_full": round(peaks[name] / peaks["full"], 3),
                             "prefill_s": round(statistics.median(times[name]), 3),
                             "time_vs_uio_batch_8": None, "auto_batch": chosen if name == "uio batch auto" else None})
            ref = statistics.median(times.get("uio batch 8", times["full"]))
            for row in rows[-len(runs):]:
                row["time_vs_uio_batch_8"] = round(row["prefill_s"] / ref, 3)
            print_table(rows[-len(runs):], ["length", "method", "peak_mib", "peak_vs_full", "prefill_s",
                                            "time_vs_uio_batch_8", "auto_batch"])
    print()
    print_table(rows, ["length", "method", "peak_mib", "peak_vs_full", "prefill_s", "time_vs_uio_batch_8", "auto_batch"])
    path = write_results(args.name, {"model": label, "dtype": args.dtype, "segment_length": args.segment_length,
                                     "compression_ratio": args.compression_ratio, "repeats": args.repeats,
                                     "device": device().type, "rows": rows})
    print(f"wrote {path}")
    auto = [r for r in rows if r["method"] == "uio batch auto"]
    summary_line({"peak_vs_full": {r["length"]: r["peak_vs_full"] for r in auto},
                  "time_vs_batch_8": {r["length"]: r["time_vs_uio_batch_8"] for r in auto}})


if __name__ == "__main__":
    main()
