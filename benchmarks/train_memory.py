"""Peak memory and time of one training step's gradient computation vs document length.

The strategies of ``uio_ds.algo`` on one document of 2..32 segments: ``full`` BPTT keeps every
encoder graph and every decoder's memory prefix alive, so its peak grows with the document;
``unbiased(S)`` keeps at most S encoder graphs (``keep``) or none (``recompute``), plus the
memory values (L x m x H per segment, small), one decoder pass, and one batched encoder call
of 8 segments without a graph for the memories outside the window. Peak = high-water mark of
tensor storage the step allocates (TensorMemoryTracker; weights excluded), on the CPU.

    python benchmarks/train_memory.py [--segments 2 4 8 16 32] [--hidden 256 --layers 4]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from common import RESULTS_DIR, perturb_trainable, print_table, summary_line, write_results

from uio_ds.algo import Full, Unbiased
from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.tiny import build_tiny_model
from uio_ds.utils.memory_tracker import TensorMemoryTracker

MIB = 2**20
METHODS = {
    "full": lambda: Full(),
    "unbiased(2), keep": lambda: Unbiased(2, seed=0, graph_mode="keep"),
    "unbiased(2), recompute": lambda: Unbiased(2, seed=0, graph_mode="recompute"),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--segments", type=int, nargs="+", default=[2, 4, 8, 16, 32])
    p.add_argument("--hidden", type=int, default=256)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--segment-length", type=int, default=256)
    p.add_argument("--compression-ratio", type=int, default=8)
    p.add_argument("--name", default="train_memory")
    args = p.parse_args()
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = build_tiny_model("llama", os.path.join(tmp, "m"), hidden_size=args.hidden,
                                intermediate_size=4 * args.hidden, num_hidden_layers=args.layers,
                                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=16384)
        lora = dict(rank=16, alpha=32.0)
        config = UIOConfig(segment_length=args.segment_length, compression_ratio=args.compression_ratio,
                           encoder_lora=LoRAConfig(target_modules=("q_proj", "v_proj"), **lora),
                           transfer_lora=LoRAConfig(target_modules=("k_proj", "v_proj"), **lora))
        model = UIOMemoryModel.from_pretrained(path, config)
    perturb_trainable(model, seed=0, scale=0.05)
    rows = []
    for segments in args.segments:
        doc = torch.randint(3, 500, (1, segments * args.segment_length), generator=torch.Generator().manual_seed(1))
        for name, make in METHODS.items():
            with TensorMemoryTracker() as tracker:
                start = time.perf_counter()
                result = make().run(model, doc)
                seconds = time.perf_counter() - start
            rows.append({"method": name, "segments": segments, "tokens": doc.shape[1],
                         "peak_mib": round(tracker.peak / MIB, 1), "seconds": round(seconds, 2),
                         "encoder_backward_passes": result.stats["encoder_backward_passes"],
                         "max_live_graphs": result.stats["max_live_graphs"]})
            print_table(rows[-1:], list(rows[-1]))
            sys.stdout.flush()
    print()
    print_table(rows, list(rows[0]))

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name in METHODS:
        pts = [(r["tokens"], r["peak_mib"]) for r in rows if r["method"] == name]
        ax.plot(*zip(*pts), "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="document length (tokens)", ylabel="peak tensor memory of one step (MiB)",
           title=f"training-step memory vs length (hidden {args.hidden}, {args.layers} layers, "
                 f"l={args.segment_length}, ratio {args.compression_ratio})")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    fig.savefig(png, dpi=110)
    path = write_results(args.name, {"hidden": args.hidden, "layers": args.layers,
                                     "segment_length": args.segment_length,
                                     "compression_ratio": args.compression_ratio, "rows": rows})
    print(f"wrote {path} and {png}")
    last = max(args.segments)
    summary_line({r["method"]: r["peak_mib"] for r in rows if r["segments"] == last})


if __name__ == "__main__":
    main()
