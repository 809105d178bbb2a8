"""The price of ZeRO-3: its training step time against ZeRO-2's, on the same documents and ranks.

Run under the deepspeed launcher (2 CPU ranks here, one rank per GPU there). Every rank builds
three trainers of one training config (default: the main SmolLM2 run, l=256, ratio 8,
unbiased(2), bf16) and times, round after round on the same documents, a step of each:

* **zero2**: ``ds_configs/zero2.json``, encoder graphs kept (the default);
* **zero2_recompute**: the same with ``algorithm.graph_mode=recompute``, the graph mode ZeRO-3
  runs: it separates the cost of rebuilding encoder graphs from the cost of ZeRO-3 itself;
* **zero3**: ``ds_configs/zero3.json``: frozen weights partitioned and gathered module by module,
  the ranks' passes in lockstep with padding passes.

Rounds alternate the arms, so all see the same machine load; medians of the per-round ratios
are reported, with the padding passes ZeRO-3 ran and the losses (equal up to rounding: the three
compute one gradient).

    deepspeed --num_gpus 2 benchmarks/zero3_step.py --rounds 4
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import torch
from common import print_table, summary_line, write_results

from uio_ds.config import TrainConfig, find_config

ARMS = {"zero2": ("zero2", []), "zero2_recompute": ("zero2", ["algorithm.graph_mode=recompute"]),
        "zero3": ("zero3", [])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2", help="training config (bundled name or JSON file)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="overrides of the training config")
    p.add_argument("--tokens", type=int, default=1024, help="data.max_tokens: the longest document")
    p.add_argument("--rounds", type=int, default=4, help="timed rounds after one warm-up round")
    p.add_argument("--out-dir", default="runs/zero3_step", help="the trainers' output directories (one per arm)")
    p.add_argument("--name", default="zero3_step")
    p.add_argument("--local_rank", type=int, default=-1)
    args = p.parse_args()

    from uio_ds.train import dist as process_group
    from uio_ds.train.trainer import Trainer

    trainers = {}
    for arm, (ds_name, extra) in ARMS.items():
        config = TrainConfig.from_file(args.config, [*args.set, *extra, f"output_dir={os.path.join(args.out_dir, arm)}",
                                                     f"data.max_tokens={args.tokens}", "save_every=0"])
        with open(find_config(ds_name, "deepspeed")) as f:
            trainers[arm] = Trainer(config, json.load(f), log=lambda *_: None, overwrite=True).setup()
    rank = trainers["zero2"].rank
    rows = []
    for round_ in range(args.rounds + 1):
        documents = trainers["zero2"].stream.next_documents()  # every arm steps on these
        row = {"round": round_, "tokens": None}
        for arm, trainer in trainers.items():
            process_group.barrier()
            if torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()
            start = time.perf_counter()
            out = trainer.engine.train_step(documents)
            process_group.barrier()
            row[f"{arm}_s"] = round(time.perf_counter() - start, 3)
            if torch.cuda.is_available():  # the other arms' weights and states are resident too
                row[f"{arm}_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 3)
            row[f"{arm}_loss"] = round(out.loss, 6)
            row["tokens"] = out.tokens
            if arm == "zero3":
                row["padding_passes"] = int(out.stats.get("padding_passes", 0))
        row["zero3_over_zero2"] = round(row["zero3_s"] / row["zero2_s"], 3)
        row["zero3_over_zero2_recompute"] = round(row["zero3_s"] / row["zero2_recompute_s"], 3)
        row["recompute_over_keep"] = round(row["zero2_recompute_s"] / row["zero2_s"], 3)
        if rank == 0:
            print(("warm-up " if round_ == 0 else "") + json.dumps(row), flush=True)
        if round_ > 0:
            rows.append(row)
    for trainer in trainers.values():
        trainer.close()
    if rank == 0:
        keys = ("zero2_s", "zero2_recompute_s", "zero3_s", "zero3_over_zero2", "zero3_over_zero2_recompute",
                "recompute_over_keep", "padding_passes")
        median = {k: round(statistics.median(r[k] for r in rows), 3) for k in keys}
        print_table(rows, ["round", "tokens", "zero2_s", "zero2_recompute_s", "zero3_s", "padding_passes",
                           "zero3_over_zero2", "zero3_over_zero2_recompute", "zero2_loss", "zero3_loss"])
        print(f"median: ZeRO-3 / ZeRO-2 {median['zero3_over_zero2']}, ZeRO-3 / ZeRO-2 with recompute "
              f"{median['zero3_over_zero2_recompute']}, recompute / keep {median['recompute_over_keep']}")
        settings = {"config": args.config, "overrides": args.set, "tokens": args.tokens, "rounds": args.rounds,
                    "ranks": int(os.environ.get("WORLD_SIZE", "1")), "threads": torch.get_num_threads(),
                    "uio": trainers["zero3"].config.uio.to_dict()}
        path = write_results(args.name, {"settings": settings, "rows": rows, "median": median})
        summary_line({"results": path, **median})
    process_group.shutdown()


if __name__ == "__main__":
    main()
