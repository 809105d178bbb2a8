"""When a tiny memory starts to carry a pass key, by training loss, decoder LoRA and window.

One run per setting (same seed, documents and initial parts): the held-out answer loss sits at
chance, then falls abruptly, and the step where it falls varies between runs, so a single run
per setting shows that escape, not a ranking of the settings.

Single process, plain PyTorch AdamW (no DeepSpeed: the training signal is the question here, not
the distributed step), on the tiny recipe's pre-trained base (``make tiny-recipe`` stage 1). Every
variant trains fresh UIO parts (l=64, ratio 8, encoder / transfer LoRA rank 16) on recall
documents of exactly 4 segments (the key in segment 1, the question and answer in segment 4) with
the framework's own strategies, then scores held-out documents of the same shape: the mean loss of
the 5 answer digits and the exact match of all 5 (argmax of each digit given the true prefix, what
greedy decoding produces). Variants:

* ``all tokens``: every token scored (plain language-model loss), decoder LoRA, full gradient;
* ``answer only``: only the answer scored (prompt-completion labels), decoder LoRA, full gradient;
* ``answer only, frozen decoder``: as above without the decoder LoRA;
* ``answer only, unbiased(2)``: as ``answer only`` with the reservoir of 2 of the 3 memories.

    python benchmarks/recall_signal.py --base runs/tiny_recipe/base --steps 500

Prints a table, writes benchmarks/results/recall_signal.json and recall_signal.png (``--seed`` and
``--name`` for repeats: recall_signal_seed1.json ...).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time

import torch

VARIANTS = {
    "all tokens": {"answer_only": False, "decoder_lora": True, "strategy": ("full", None)},
    "answer only": {"answer_only": True, "decoder_lora": True, "strategy": ("full", None)},
    "answer only, frozen decoder": {"answer_only": True, "decoder_lora": False, "strategy": ("full", None)},
    "answer only, unbiased(2)": {"answer_only": True, "decoder_lora": True, "strategy": ("unbiased", 2)},
}


def documents(tokenizer, count: int, seed: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids, labels) of ``count`` recall documents of ``length`` tokens, tokenised and labelled as the
    training pipeline does (``completion_field``): the labels keep the answer only."""
    from uio_ds.config import SourceConfig
    from uio_ds.data.cache import tokenize_source
    from uio_ds.data.documents import scored_document
    from uio_ds.data.generators.synthetic import write_recall_completion_jsonl

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "recall.jsonl")
        write_recall_completion_jsonl(path, count, tokenizer, [length], seed=seed)
        source = SourceConfig(path=path, text_field="prompt", completion_field="completion", eos=False)
        dataset, _ = tokenize_source(source, tokenizer, os.path.join(tmp, "cache"), log=lambda *_: None)
        docs = [scored_document(torch.tensor(ids), spans)
                for ids, spans in zip(dataset["input_ids"], dataset["score_spans"])]
    return torch.stack([d["input_ids"] for d in docs]), torch.stack([d["labels"] for d in docs])


def digit_positions(ids: torch.Tensor) -> torch.Tensor:
    """Positions of the 5 answer digits (the completion is ' ' + 5 digits + '.')."""
    return torch.arange(ids.shape[1] - 6, ids.shape[1] - 1)


@torch.no_grad()
def evaluate(model, ids: torch.Tensor, digits: torch.Tensor) -> dict:
    # the last segment (question and answer) decoded after the memories of the three before it
    l = model.segment_length
    bounds = list(range(0, ids.shape[1], l))
    last = bounds[-1]
    memory = model.memory_kv(model.encode(ids[:, :last].reshape(-1, l))).per_text(ids.shape[0])
    logits = model.decode(ids[:, last:], memory).logits.float()
    pos = digits - 1 - last  # the logit at position j predicts token j + 1
    pred = logits[:, pos]
    gold = ids[:, digits]
    loss = torch.nn.functional.cross_entropy(pred.flatten(0, 1), gold.flatten()).item()
    exact = (pred.argmax(-1) == gold).all(-1).float().mean().item()
    return {"answer_loss": round(loss, 4), "exact_match": round(exact, 4)}


def run_variant(name: str, spec: dict, args, tokenizer, train, held_out) -> dict:
    from uio_ds.algo import build_strategy
    from uio_ds.config import LoRAConfig, UIOConfig
    from uio_ds.model.memory_model import UIOMemoryModel

    torch.manual_seed(args.seed)
    config = UIOConfig(segment_length=64, compression_ratio=8,
                       encoder_lora=LoRAConfig(rank=16, alpha=32, target_modules=["q_proj", "v_proj"]),
                       transfer_lora=LoRAConfig(rank=16, alpha=32, target_modules=["k_proj", "v_proj"]),
                       decoder_lora=LoRAConfig(rank=8, alpha=16, target_modules=["q_proj", "v_proj"])
                       if spec["decoder_lora"] else None)
    model = UIOMemoryModel.from_pretrained(args.base, config)
    params = model.trainable_parameters()
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0)
    strategy = build_strategy(*spec["strategy"]) if spec["strategy"][1] else build_strategy(spec["strategy"][0])
    ids, labels = train
    held_ids, held_digits = held_out
    rng = random.Random(args.seed)
    curve, start = [], time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in opt.param_groups:
            group["lr"] = args.lr * min(1.0, step / 20)
        rows = rng.sample(range(len(ids)), args.batch)
        doc = {"input_ids": ids[rows], "labels": labels[rows]} if spec["answer_only"] else ids[rows]
        result = strategy.run(model, [doc])
        for p, g in zip(params, result.grads):
            p.grad = g
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if step % args.eval_every == 0:
            model.eval()
            point = {"step": step, **evaluate(model, held_ids, held_digits)}
            model.train()
            curve.append(point)
            print(f"  {name:30s} step {step:4d}  answer loss {point['answer_loss']:.3f}  exact {point['exact_match']:.2f}",
                  flush=True)
    return {**spec, "strategy": list(spec["strategy"]), "curve": curve, "seconds": round(time.perf_counter() - start, 1)}


def plot(report: dict, out: str, name: str = "recall_signal") -> str:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for variant, r in report["variants"].items():
        steps = [c["step"] for c in r["curve"]]
        axes[0].plot(steps, [c["answer_loss"] for c in r["curve"]], marker="o", label=variant)
        axes[1].plot(steps, [c["exact_match"] for c in r["curve"]], marker="o", label=variant)
    axes[0].axhline(2.302585, color="gray", ls=":", label="chance (ln 10)")
    axes[0].set(xlabel="training step", ylabel="held-out answer-digit loss (nats)", title="answer loss")
    axes[1].set(xlabel="training step", ylabel="exact match (5 digits)", title="pass key from memory", ylim=(-0.03, 1.03))
    axes[0].legend(fontsize=8)
    fig.suptitle(f"tiny memory, pass key in segment 1 asked in segment 4: one run per setting, seed {report.get('seed', 0)}")
    fig.tight_layout()
    png = os.path.join(out, f"{name}.png")
    fig.savefig(png, dpi=110)
    return png


def main(argv=None) -> int:
    from transformers import AutoTokenizer

    from uio_ds.utils.machine import machine

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--base", default="runs/tiny_recipe/base", help="the tiny recipe's pre-trained base")
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    p.add_argument("--out", default="benchmarks/results")
    p.add_argument("--seed", type=int, default=0, help="initial parts (LoRA A) and the order of documents")
    p.add_argument("--name", default="recall_signal", help="writes NAME.json and NAME.png")
    p.add_argument("--replot", action="store_true", help="redraw the figure from the JSON of an earlier run")
    args = p.parse_args(argv)
    if args.replot:
        with open(os.path.join(args.out, f"{args.name}.json")) as f:
            print(f"wrote {plot(json.load(f), args.out, args.name)}")
        return 0
    if not os.path.isfile(os.path.join(args.base, "config.json")):
        print(f"error: {args.base} is not a model directory: run `make tiny-recipe` (stage 1) first", file=sys.stderr)
        return 1
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    train = documents(tokenizer, 4000, seed=3, length=256)
    held_ids, _ = documents(tokenizer, 64, seed=12345, length=256)
    held_out = (held_ids, digit_positions(held_ids))
    report = {"machine": machine(), "base": args.base, "seed": args.seed, "steps": args.steps, "batch": args.batch, "lr": args.lr,
              "documents": "4 segments of 64 tokens, key in segment 1, answer in segment 4", "variants": {}}
    for name in args.variants:
        report["variants"][name] = run_variant(name, VARIANTS[name], args, tokenizer, train, held_out)
    print(f"\n{'variant':30s} " + " ".join(f"{'@' + str(c['step']):>13}" for c in
                                         next(iter(report['variants'].values()))["curve"]) + "   (answer loss / exact)")
    for name, r in report["variants"].items():
        print(f"{name:30s} " + " ".join(f"{c['answer_loss']:>6.2f} / {c['exact_match']:.2f}" for c in r["curve"]))
    os.makedirs(args.out, exist_ok=True)
    path = os.path.join(args.out, f"{args.name}.json")
    with open(path, "w") as f:
        json.dump(report, f, indent=2)
    png = plot(report, args.out, args.name)
    print(f"\nwrote {path}, {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
