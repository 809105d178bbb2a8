"""Prefill and decode speed of streaming generation on a real model with real long text.

Default: SmolLM2-135M-Instruct (``make prepare``) reading held-out King James books as the
prompt, at 8K, 16K and 32K prompt tokens (past the model's 8,192 positions), with the
paper's segmenting (l=1024, ratio 32) and untrained UIO parts: the text is not the point,
the pipeline and its speed are.

    python benchmarks/generate_real.py [--model models/smollm2] [--corpus data/kjv]
"""

from __future__ import annotations

import argparse
import os

import torch
from common import print_table, summary_line, write_results
from transformers import AutoTokenizer

from uio_ds.config import UIOConfig
from uio_ds.data.generators.corpus import load_corpus
from uio_ds.model.generation import generate
from uio_ds.model.memory_model import UIOMemoryModel


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/smollm2")
    p.add_argument("--corpus", default="data/kjv")
    p.add_argument("--lengths", type=int, nargs="+", default=[8192, 16384, 32768])
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--segment-length", type=int, default=1024)
    p.add_argument("--compression-ratio", type=int, default=32)
    p.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    p.add_argument("--name", default="generate_smollm2")
    args = p.parse_args()

    tok = AutoTokenizer.from_pretrained(args.model)
    text = "\n".join(load_corpus(args.corpus)["eval"].sort("num_chars", reverse=True)["text"])
    all_ids = tok(text, return_tensors="pt")["input_ids"]
    if all_ids.shape[1] < max(args.lengths):
        raise SystemExit(f"the held-out text has {all_ids.shape[1]} tokens, fewer than {max(args.lengths)}")
    rows = []
    for dtype in args.dtypes:
        config = UIOConfig(segment_length=args.segment_length, compression_ratio=args.compression_ratio, dtype=dtype)
        model = UIOMemoryModel.from_pretrained(args.model, config).eval()
        generate(model, all_ids[:, :1100], 4)  # warm-up
        for length in args.lengths:
            r = generate(model, all_ids[:, :length], args.new_tokens)
            rows.append({
                "dtype": dtype,
                "prompt_tokens": length,
                "compressed_segments": r.num_compressions,
                "memory_tokens": r.memory_tokens,
                "peak_positions": model.peak_positions(length + args.new_tokens),
                "prefill_s": round(r.prefill_seconds, 2),
                "prefill_tok_s": round(r.prefill_tokens_per_second, 1),
                "decode_tok_s": round(r.decode_tokens_per_second, 2),
            })
            print_table(rows[-1:], list(rows[-1]))
    print()
    print_table(rows, list(rows[0]))
    path = write_results(args.name, {
        "model": os.path.abspath(args.model),
        "segment_length": args.segment_length,
        "compression_ratio": args.compression_ratio,
        "new_tokens": args.new_tokens,
        "prompt": "held-out King James books, longest first",
        "rows": rows,
    })
    print(f"wrote {path}")
    summary_line({f"{r['dtype']}@{r['prompt_tokens']}": [r["prefill_tok_s"], r["decode_tok_s"]] for r in rows})


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
