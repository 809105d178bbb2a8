"""Plan a training config's accelerator memory per rank, without an accelerator (``uio-ds plan``).

    uio-ds plan --config smollm2 --deepspeed zero2_offload --ranks 8 --tokens 4096 16384
    uio-ds plan --config my_run.json --model llama2-7b --tokens 100000

Runs the config's own training step (its memory model, strategy and window, dtype, documents
per step) on fake tensors (``uio_ds.plan.memory``) at each document length, adds what lives
across steps under the DeepSpeed config's ZeRO stage on ``--ranks`` ranks, and says whether the
peak fits 24, 40 and 80 GB cards. The CUDA context, kernel workspaces and fragmentation are not
counted: leave a few GB.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

CARDS_GB = (24, 40, 80)


def settings_for(config, ds_config: dict, ranks: int, tokens: list[int], hidden_size: int | None = None) -> list:
    """The memory plan's settings for a training config and its DeepSpeed config, per document length."""
    import dataclasses

    from uio_ds.plan.memory import PlanSettings, zero_settings
    from uio_ds.train.ds_config import resolve_ds_config

    ds, graph_mode = resolve_ds_config(ds_config, config, ranks, hidden_size=hidden_size)
    zero = ds.get("zero_optimization", {})
    base = PlanSettings(
        segment_length=config.uio.segment_length, compression_ratio=config.uio.compression_ratio,
        algorithm=config.algorithm.name, window=config.algorithm.window, document_tokens=tokens[0],
        micro_batch=config.data.documents_per_step, dtype=config.uio.dtype, zero_stage=int(zero.get("stage", 0)),
        ranks=ranks, activation_offload=graph_mode in ("offload", "recompute_offload"),
        recompute=graph_mode in ("recompute", "recompute_offload"),
        optimizer_offload=zero.get("offload_optimizer", {}).get("device") == "cpu", **zero_settings(zero),
        position_overflow=config.uio.position_overflow, uio=config.uio, distill=config.objective.distill)
    return [dataclasses.replace(base, document_tokens=n) for n in tokens]


def main(argv=None) -> int:
    from uio_ds.config import TrainConfig, find_config
    from uio_ds.plan.memory import GIB, SHAPES, STEP_PARTS, base_config, plan

    p = argparse.ArgumentParser(prog="uio-ds plan", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", required=True, help="training config: a JSON file or a bundled name")
    p.add_argument("--deepspeed", default="zero2", help="DeepSpeed config: a JSON file or a bundled name")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="override training-config values")
    p.add_argument("--ranks", type=int, default=8, help="data-parallel ranks (ZeRO partitions over them)")
    p.add_argument("--tokens", type=int, nargs="+", default=None,
                   help="document lengths to plan (default: the config's data.max_tokens)")
    p.add_argument("--model", default=None, help=f"a local model directory or a named shape ({', '.join(SHAPES)}); "
                   "default: the config's model_path")
    p.add_argument("--out", default=None, help="also write the plans as JSON here")
    args = p.parse_args(argv)
    try:
        config = TrainConfig.from_file(args.config, args.set)
        with open(find_config(args.deepspeed, "deepspeed")) as f:
            ds_config = json.load(f)
        tokens = args.tokens or ([config.data.max_tokens] if config.data.max_tokens else None)
        if not tokens:
            raise ValueError("the config sets no data.max_tokens: give the document lengths with --tokens")
        if args.ranks < 1 or min(tokens) < 2:
            raise ValueError("--ranks must be >= 1 and every --tokens >= 2")
        source = args.model or config.model_path
        settings = settings_for(config, ds_config, args.ranks, tokens, hidden_size=base_config(source).hidden_size)
        plans = [plan(source, s) for s in settings]
    except (ValueError, FileNotFoundError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    first = settings[0]
    print(f"{source}, {args.config} on {args.ranks} rank(s), ZeRO-{first.zero_stage}, {first.algorithm}"
          f"({first.window}), graph_mode {first.graph_mode}, {first.dtype}, {first.micro_batch} document(s) per rank")
    rows = []
    for n, result in zip(tokens, plans):
        row = {"tokens": n, "peak_gib": round(result.peak / GIB, 2)}
        row.update({k: round(v / GIB, 2) for k, v in result.persistent.items()})
        row.update({k: round(result.step.get(k, 0) / GIB, 2) for k in STEP_PARTS})
        row.update({f"fits_{gb}gb": result.peak <= gb * 10**9 for gb in CARDS_GB})
        rows.append(row)
        fits = [f"{gb} GB" for gb in CARDS_GB if result.peak <= gb * 10**9]
        print(f"  {n:>7} tokens: {result.peak / GIB:6.2f} GiB per rank; fits {', '.join(fits) or 'none of'} "
              f"{'cards' if fits else '24/40/80 GB cards'}")
        for where, parts in (("persistent", result.persistent), ("step peak", result.step)):
            print("           " + where + ": " + ", ".join(f"{k} {v / GIB:.2f}" for k, v in parts.items() if v))
    for note in plans[-1].notes:
        print("note:", note)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            json.dump({"config": args.config, "deepspeed": args.deepspeed, "model": source, "ranks": args.ranks,
                       "rows": rows, "plans": [r.as_dict() for r in plans]}, f, indent=2, default=str)
        print(f"wrote {args.out}")
    return 0

