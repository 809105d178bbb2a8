"""fp32 or bf16 for training on this CPU: one training step's time and result, both dtypes.

The same step as a training rank runs (unbiased(2) over one document of the King James
books, SmolLM2 by default, l=256, ratio 8), one thread like one of two CPU ranks, in float32
and bfloat16, interleaved and repeated (median reported). Also how close bf16 is: the
relative loss difference and the cosine between the two gradients.

    python benchmarks/train_dtype.py [--model models/smollm2] [--tokens 1024] [--repeats 3]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import flat, perturb_trainable, print_table, summary_line, write_results

from uio_ds.algo import Unbiased
from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.model.memory_model import UIOMemoryModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/smollm2")
    p.add_argument("--corpus", default="data/kjv")
    p.add_argument("--tokens", type=int, default=1024)
    p.add_argument("--segment-length", type=int, default=256)
    p.add_argument("--compression-ratio", type=int, default=8)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1, help="torch threads (a CPU rank of `make train` has 1)")
    p.add_argument("--name", default="train_dtype")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    from datasets import load_from_disk
    from transformers import AutoTokenizer

    text = load_from_disk(args.corpus)["train"][0]["text"]
    ids = AutoTokenizer.from_pretrained(args.model)(text, return_tensors="pt")["input_ids"][:, : args.tokens]
    models = {}
    for dtype in ("float32", "bfloat16"):
        lora = dict(rank=8, alpha=16.0)
        config = UIOConfig(segment_length=args.segment_length, compression_ratio=args.compression_ratio,
                           encoder_lora=LoRAConfig(target_modules=("q_proj", "v_proj"), **lora),
                           transfer_lora=LoRAConfig(target_modules=("k_proj", "v_proj"), **lora), dtype=dtype)
        models[dtype] = UIOMemoryModel.from_pretrained(args.model, config)
        perturb_trainable(models[dtype], seed=0, scale=0.02)  # same values: perturbed before any rounding
    with torch.no_grad():  # bf16 copy of the fp32 model's trainable values, so both start equal
        for a, b in zip(models["float32"].trainable_parameters(), models["bfloat16"].trainable_parameters()):
            b.copy_(a)

    times = {d: [] for d in models}
    results = {}
    for _ in range(args.repeats):
        for dtype, model in models.items():
            start = time.perf_counter()
            results[dtype] = Unbiased(2, seed=0).run(model, ids)
            times[dtype].append(time.perf_counter() - start)
    g32 = flat(results["float32"].grads, models["float32"].trainable_parameters())
    g16 = flat(results["bfloat16"].grads, models["bfloat16"].trainable_parameters())
    rows = [{"dtype": d, "step_s": round(statistics.median(t), 2), "tokens_per_s": round(args.tokens / statistics.median(t), 1),
             "loss": round(results[d].loss, 4)} for d, t in times.items()]
    speedup = statistics.median(times["float32"]) / statistics.median(times["bfloat16"])
    loss_diff = abs(results["bfloat16"].loss - results["float32"].loss) / results["float32"].loss
    cosine = float(torch.nn.functional.cosine_similarity(g32, g16, dim=0))
    print_table(rows, list(rows[0]))
    print(f"bf16 speed-up {speedup:.2f}x; relative loss difference {loss_diff:.2e}; gradient cosine {cosine:.4f}; "
          f"gradient norm ratio {float(g16.norm() / g32.norm()):.4f}")
    path = write_results(args.name, {"model": args.model, "tokens": args.tokens, "segment_length": args.segment_length,
                                     "compression_ratio": args.compression_ratio, "threads": args.threads,
                                     "rows": rows, "bf16_speedup": round(speedup, 3),
                                     "relative_loss_difference": loss_diff, "gradient_cosine": round(cosine, 5),
                                     "gradient_norm_ratio": round(float(g16.norm() / g32.norm()), 5),
                                     "step_seconds": {d: [round(x, 3) for x in t] for d, t in times.items()}})
    print(f"wrote {path}")
    summary_line({"bf16_speedup": round(speedup, 3), "gradient_cosine": round(cosine, 5)})


if __name__ == "__main__":
    main()
