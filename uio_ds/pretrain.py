"""Pre-train every weight of a (small) base model on short windows of text, plain PyTorch.

The UIO recipe needs a frozen decoder that is a working language model and can copy a
key from its context; a random tiny model is neither. This script packs the documents of
the given sources into one token stream and trains on random windows.

    uio-ds pretrain --model runs/tiny_recipe/init --data data/kjv recall.jsonl \\
        --out runs/tiny_recipe/base --window 128 --batch 16 --steps 600
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import torch


def main(argv=None) -> int:
    from tqdm import tqdm
    from transformers import AutoTokenizer

    from uio_ds.config import SourceConfig
    from uio_ds.data.sources import read_texts
    from uio_ds.model.base import load_causal_lm

    p = argparse.ArgumentParser(prog="uio-ds pretrain", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="model directory to start from")
    p.add_argument("--data", nargs="+", required=True, help="sources: prepared corpus dirs or text files")
    p.add_argument("--weights", type=float, nargs="*", default=None, help="share of windows per source")
    p.add_argument("--out", required=True)
    p.add_argument("--window", type=int, default=128)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--warmup", type=int, default=30)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    weights = args.weights or [1.0] * len(args.data)
    if len(weights) != len(args.data):
        raise SystemExit(f"error: {len(weights)} weights for {len(args.data)} sources")

    torch.manual_seed(args.seed)
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    model = load_causal_lm(args.model, dtype=torch.float32)
    model.train()
    streams = []
    for path in args.data:
        texts, _ = read_texts(SourceConfig(path=path, split="train"))
        ids = tokenizer([t + (tokenizer.eos_token or "") for t in texts], add_special_tokens=False)["input_ids"]
        stream = torch.tensor([i for doc in ids for i in doc])
        if len(stream) <= args.window + 1:
            raise SystemExit(f"error: {path} has only {len(stream)} tokens, fewer than a window")
        streams.append(stream)
    total = sum(weights)
    gen = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.95))
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / args.warmup) * 0.5 * (
        1 + math.cos(math.pi * min(1.0, s / args.steps))))
    log = []
    bar = tqdm(range(args.steps), desc="pretrain")
    start = time.perf_counter()
    for _ in bar:
        counts = torch.multinomial(torch.tensor(weights) / total, args.batch, replacement=True, generator=gen)
        rows = []
        for source in counts.tolist():
            stream = streams[source]
            at = int(torch.randint(0, len(stream) - args.window - 1, (1,), generator=gen))
            rows.append(stream[at : at + args.window])
        batch = torch.stack(rows)
        loss = model(batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        log.append(loss.item())
        bar.set_postfix(loss=f"{sum(log[-20:]) / len(log[-20:]):.3f}")
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    with open(os.path.join(args.out, "pretrain_log.json"), "w") as f:
        json.dump({"args": vars(args), "loss": log, "seconds": time.perf_counter() - start}, f)
    print(f"pre-trained {args.steps} steps in {time.perf_counter() - start:.0f} s, final loss "
          f"{sum(log[-20:]) / len(log[-20:]):.3f}; saved to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
