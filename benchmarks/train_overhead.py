"""What the framework costs: the DeepSpeed training step against the same model passes run bare.

One process, one rank (DeepSpeed on the CPU with gloo, or on the GPU where there is one), a
bundled training config (default: the main SmolLM2 run, l=256, ratio 8, unbiased(2), bf16) and
documents of ``--tokens`` tokens of the training books. Each round times, on the same documents:

* **step**: ``UIOEngine.train_step``, everything a training step does: the strategy's
  encoder / transfer / decoder passes, its bookkeeping (reservoir, leaf copies, gradient
  buffers, the factor), DeepSpeed's surrogate forward and backward, reduction and optimizer step;
* **bare passes**: the same passes replayed from a record of that step: every encoder call
  (with its backward where the step built a graph), every transfer-head call and every decoder
  forward+backward, called directly on the memory model, then a plain ``torch.optim.AdamW`` step:
  no strategy, no DeepSpeed;
* **plain fine-tuning** (context, not the goal): a transformers forward+backward of the same
  tokens in ``segment_length`` windows without memory, the cost of fine-tuning the base on them.

The ratio step / bare passes is the framework's own cost (goal: <= 1.10); step / plain
fine-tuning mixes it with the method's extra encoder passes. Rounds alternate, so both sides
see the same machine load; the medians are reported.

    python benchmarks/train_overhead.py                          # SmolLM2, 2,048-token documents
    python benchmarks/train_overhead.py --config tiny --tokens 1024 --rounds 3
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import tempfile
import time

import torch
from common import print_table, summary_line, write_results

from uio_ds.config import TrainConfig, find_config


@contextlib.contextmanager
def recording(model, events: list):
    """Record the encoder, transfer-head and decoder calls the step makes, in order."""

    def encode(input_ids):
        events.append(("encode", input_ids.detach().clone(), torch.is_grad_enabled()))
        return original["encode"](input_ids)

    def memory_kv(memory):
        events.append(("memory_kv", tuple(memory.shape), memory.dtype))
        return original["memory_kv"](memory)

    def decode(input_ids, memory=None, targets=None):
        events.append(("decode", input_ids.detach().clone(), None if targets is None else targets.detach().clone()))
        return original["decode"](input_ids, memory, targets)

    original = {name: getattr(model, name) for name in ("encode", "memory_kv", "decode")}
    model.encode, model.memory_kv, model.decode = encode, memory_kv, decode
    try:
        yield
    finally:
        for name in original:
            delattr(model, name)  # the instance attributes shadowed the methods


def replay(model, events: list, optimizer) -> None:
    """The recorded passes, each with its backward, then one AdamW step."""
    params = model.trainable_parameters()
    grads = [None] * len(params)

    def add(new):
        for i, g in enumerate(new):
            if g is not None:
                grads[i] = g if grads[i] is None else grads[i] + g

    kv = None
    for event in events:
        if event[0] == "encode":
            _, ids, with_graph = event
            if with_graph:
                out = model.encode(ids)
                add(torch.autograd.grad(out, params, grad_outputs=torch.full_like(out, 1e-3), allow_unused=True))
            else:
                with torch.no_grad():
                    model.encode(ids)
        elif event[0] == "memory_kv":
            _, shape, dtype = event
            kv = model.memory_kv(torch.randn(shape, dtype=dtype, device=model.device))
        else:
            _, ids, targets = event
            out = model.decode(ids, None if kv is None else kv.per_text(ids.shape[0]), targets)
            kv = None
            if out.loss_sum.requires_grad:
                add(torch.autograd.grad(out.loss_sum, params, allow_unused=True))
    for p, g in zip(params, grads):
        p.grad = None if g is None else g.to(p.dtype)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def plain_fine_tuning(model, documents) -> None:
    """A transformers forward+backward of the same tokens in segment_length windows, no memory."""
    from uio_ds.algo import as_batches

    l = model.segment_length
    with model.adapter(None):
        for doc, labels in as_batches(documents):
            doc, labels = doc.to(model.device), labels.to(model.device)
            for a in range(0, doc.shape[1] - 1, l):
                embeds = model.base.get_input_embeddings()(doc[:, a : a + l]).detach().requires_grad_(True)
                loss = model.base(inputs_embeds=embeds, labels=labels[:, a : a + l]).loss
                torch.autograd.grad(loss, embeds)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="smollm2", help="training config: a bundled name or a JSON file")
    p.add_argument("--deepspeed", default="zero2")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides")
    p.add_argument("--tokens", type=int, default=2048, help="document length (data.max_tokens)")
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after one warm-up round")
    p.add_argument("--name", default="train_overhead")
    args = p.parse_args()

    os.environ.setdefault("DS_ACCELERATOR", "cuda" if torch.cuda.is_available() else "cpu")
    import json

    from uio_ds.train.trainer import Trainer

    out_dir = tempfile.mkdtemp(prefix="train_overhead_")
    config = TrainConfig.from_file(args.config, [*args.set, f"output_dir={out_dir}", f"data.max_tokens={args.tokens}",
                                                 f"data.min_tokens={args.tokens}", "save_every=0"])
    with open(find_config(args.deepspeed, "deepspeed")) as f:
        ds_config = json.load(f)
    trainer = Trainer(config, ds_config, log=lambda *_: None).setup()
    model = trainer.model
    optimizer = torch.optim.AdamW(model.trainable_parameters(), lr=config.optim.lr)

    rows = []
    for round_ in range(args.rounds + 1):
        documents = trainer.stream.next_documents()
        events: list = []
        start = time.perf_counter()
        with recording(model, events):
            out = trainer.engine.train_step(documents)
        step = time.perf_counter() - start
        start = time.perf_counter()
        replay(model, events, optimizer)
        bare = time.perf_counter() - start
        start = time.perf_counter()
        plain_fine_tuning(model, documents)
        plain = time.perf_counter() - start
        counts = {kind: sum(e[0] == kind for e in events) for kind in ("encode", "memory_kv", "decode")}
        row = {"round": round_, "tokens": out.tokens, "step_s": round(step, 3), "bare_passes_s": round(bare, 3),
               "plain_fine_tuning_s": round(plain, 3), "step_over_bare": round(step / bare, 3),
               "step_over_plain": round(step / plain, 3), "encoder_calls": counts["encode"],
               "encoder_calls_with_graph": sum(e[0] == "encode" and e[2] for e in events),
               "decoder_calls": counts["decode"]}
        print(("warm-up " if round_ == 0 else "") + json.dumps(row))
        if round_ > 0:
            rows.append(row)
    trainer.close()

    median = {k: round(statistics.median(r[k] for r in rows), 3)
              for k in ("step_s", "bare_passes_s", "plain_fine_tuning_s", "step_over_bare", "step_over_plain")}
    print_table(rows, ["round", "tokens", "step_s", "bare_passes_s", "plain_fine_tuning_s", "step_over_bare",
                       "step_over_plain", "encoder_calls", "encoder_calls_with_graph", "decoder_calls"])
    print(f"median: step {median['step_s']} s, bare passes {median['bare_passes_s']} s "
          f"(step / bare {median['step_over_bare']}, goal <= 1.10), plain fine-tuning {median['plain_fine_tuning_s']} s "
          f"(step / plain {median['step_over_plain']})")
    settings = {"config": args.config, "deepspeed": args.deepspeed, "overrides": args.set, "tokens": args.tokens,
                "rounds": args.rounds, "uio": config.uio.to_dict(), "algorithm": vars(config.algorithm),
                "threads": torch.get_num_threads()}
    path = write_results(args.name, {"settings": settings, "rows": rows, "median": median})
    summary_line({"results": path, **median})


if __name__ == "__main__":
    main()
