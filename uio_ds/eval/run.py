"""``launch/eval.py``: evaluate a memory model and baselines on local data; table, JSON, plots."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

TASKS = ("perplexity", "passkey", "autoencode", "longbench", "facts", "fluency")
METHODS = ("uio", "no_memory", "streaming", "full", "homer")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="uio-ds eval", description="Evaluate UIO memory against no memory, StreamingLLM and full attention.")
    p.add_argument("--model", required=True, help="base model directory")
    p.add_argument("--uio", default=None, help="trained UIO parts (save_trained / a run's final/)")
    p.add_argument("--segment-length", type=int, default=None, help="without --uio: l of untrained UIO parts")
    p.add_argument("--compression-ratio", type=int, default=None, help="without --uio: ratio of untrained parts")
    p.add_argument("--dtype", default=None, choices=("float32", "bfloat16"), help="override the parts' dtype")
    p.add_argument("--device", default="auto",
                   help="where the model runs: auto (the CUDA device when there is one, else the CPU), cpu, cuda:N")
    p.add_argument("--memory-window", type=int, default=None,
                   help="uio reads only the most recent N memories (default: every memory that fits)")
    p.add_argument("--recent-tokens", type=int, default=None,
                   help="uio's raw recent window in tokens, a multiple of l (default: the parts' own setting)")
    p.add_argument("--sink-tokens", type=int, default=None,
                   help="uio's attention sinks: the text's first N tokens read raw ahead of the memories "
                        "(default: the parts' own setting); --memory-window 0 with a raw window and sinks is "
                        "the sliding-window baseline at uio's layout")
    p.add_argument("--streaming-window", type=int, default=None,
                   help="KV entries StreamingLLM reads, its 4 sinks included (default: l, the decoder's window); "
                        "e.g. (n/l)*l/ratio + l to match what uio reads at n tokens")
    p.add_argument("--tasks", nargs="+", default=["perplexity", "passkey"], choices=TASKS)
    p.add_argument("--methods", nargs="+", default=["uio", "no_memory", "streaming", "full"], choices=METHODS)
    p.add_argument("--data", default="data/kjv", help="documents: a prepared corpus directory or text files")
    p.add_argument("--split", default="eval")
    p.add_argument("--text-field", default="text")
    p.add_argument("--max-documents", type=int, default=None)
    p.add_argument("--max-doc-tokens", type=int, default=None, help="read at most this much of each document")
    p.add_argument("--lengths", type=int, nargs="+", default=[4096, 16384, 32768, 100000],
                   help="context lengths of the perplexity breakdown")
    p.add_argument("--passkey-lengths", type=int, nargs="+", default=[2048, 4096, 8192, 16384, 32768])
    p.add_argument("--passkey-depths", type=float, nargs="+", default=[0.1, 0.5, 0.9])
    p.add_argument("--passkey-trials", type=int, default=3)
    p.add_argument("--ae-segments", type=int, default=16, help="segments to reconstruct (autoencode)")
    p.add_argument("--ae-given", type=int, default=1,
                   help="autoencode: tokens of each segment's start the decoder reads before it rebuilds the rest")
    p.add_argument("--fluency-prompt", type=int, default=2000,
                   help="fluency: tokens of each document read before the continuation")
    p.add_argument("--fluency-tokens", type=int, default=64, help="fluency: tokens each method continues with")
    p.add_argument("--longbench", default=None, help="LongBench jsonl file (THUDM/LongBench records, any datasets)")
    p.add_argument("--facts", default=None,
                   help="fact records (uio-ds make-fact-data; e.g. held-out wording over a held-out haystack)")
    p.add_argument("--facts-lengths", type=int, nargs="+", default=None, metavar="TOKENS",
                   help="evaluate only the fact records of these lengths, each matched as the report's length "
                        "cells are, by the nearest power of two (e.g. 16384 selects 16,381-token records)")
    p.add_argument("--facts-max", type=int, default=None,
                   help="evaluate the first N fact records only (of --facts-lengths' where given)")
    p.add_argument("--longbench-chat", action="store_true",
                   help="wrap LongBench prompts in the tokenizer's chat template (as LongBench does for chat models)")
    p.add_argument("--longbench-max-new-tokens", type=int, default=None,
                   help="override the datasets' own generation lengths (quick runs only)")
    p.add_argument("--out", default="benchmarks/results", help="directory for NAME.json and the plots")
    p.add_argument("--name", default="eval")
    return p


def _texts(args) -> tuple[list[str], list[str]]:
    """(names, texts) of the documents to evaluate on, read as training reads a source (bad records
    skipped and summarised; none usable: refused), before any model is loaded."""
    from uio_ds.config import SourceConfig
    from uio_ds.data.sources import read_texts

    source = SourceConfig(path=args.data, text_field=args.text_field, split=args.split)
    texts, _ = read_texts(source, log=print)
    if os.path.isdir(args.data):
        from datasets import load_from_disk

        names = list(load_from_disk(args.data)[args.split]["doc_id"])
    else:
        names = [f"doc{i}" for i in range(len(texts))]
    return names[: args.max_documents], texts[: args.max_documents]


def _documents(args, tokenizer, texts: list[str]) -> list[torch.Tensor]:
    # documents stay on the host: each method moves what it reads to its model's device
    return [torch.tensor(ids[: args.max_doc_tokens], device="cpu") for ids in tokenizer(texts)["input_ids"]]


def _plots(report: dict, path_prefix: str) -> list[str]:
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        print("plots skipped: matplotlib is not installed (pip install 'uio_ds[plot]')")
        return []
    import matplotlib
    import numpy as np

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    if "perplexity" in report:
        ppl = report["perplexity"]
        fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
        for name, r in ppl.items():
            # segments 2..T: the first segment reads the same for every method
            pts = [(int(n), v.get("later_perplexity")) for n, v in r["by_length"].items()
                   if v.get("later_perplexity") is not None]
            if pts:
                axes[0].plot(*zip(*pts), "o-", label=name)
            seg = [(int(k), v) for k, v in r["by_segment"].items() if v is not None]
            axes[1].plot(*zip(*seg), ".-", label=name)
        axes[0].set_xscale("log", base=2)
        axes[0].set(xlabel="context length (tokens)", ylabel="perplexity of segments 2..T",
                    title="perplexity vs context length (first segment left out)")
        axes[1].set(xlabel="segment position in the document", ylabel="perplexity",
                    title="perplexity by segment position")
        values = [v for r in ppl.values() for v in r["by_segment"].values() if v]
        for ax in axes:
            if values and max(values) > 20 * min(values):  # methods orders of magnitude apart
                ax.set_yscale("log")
            ax.grid(True, alpha=0.3)
            ax.legend()
        fig.tight_layout()
        fig.savefig(path_prefix + "_perplexity.png", dpi=110)
        plt.close(fig)  # pyplot keeps every figure until closed: a process that evaluates often would pile them up
        written.append(path_prefix + "_perplexity.png")
    if "passkey" in report:
        pk = report["passkey"]
        methods = list(pk["methods"])
        fig, axes = plt.subplots(1, len(methods), figsize=(4 * len(methods), 3.8), squeeze=False)
        for ax, name in zip(axes[0], methods):
            grid = [[float("nan") if v is None else v for v in row] for row in pk["methods"][name]["accuracy"]]
            im = ax.imshow(np.array(grid).T, vmin=0, vmax=1, cmap="viridis", aspect="auto", origin="lower")
            ax.set_xticks(range(len(pk["lengths"])), [str(n) for n in pk["lengths"]], rotation=45)
            ax.set_yticks(range(len(pk["depths"])), [f"{d:.0%}" for d in pk["depths"]])
            ax.set(title=f"{name}", xlabel="prompt tokens", ylabel="key depth" if ax is axes[0][0] else None)
            for i, row in enumerate(grid):
                for j, v in enumerate(row):
                    ax.text(i, j, "n/a" if v != v else f"{v:.2f}", ha="center", va="center", fontsize=8,
                            color="k" if v != v or v > 0.5 else "w")
        fig.colorbar(im, ax=axes[0].tolist(), label="exact-match accuracy")
        fig.suptitle("passkey retrieval")
        fig.savefig(path_prefix + "_passkey.png", dpi=110, bbox_inches="tight")
        plt.close(fig)  # pyplot keeps every figure until closed: a process that evaluates often would pile them up
        written.append(path_prefix + "_passkey.png")
    return written


def _argument_problem(args) -> str | None:
    """What is wrong with the arguments, found before anything is loaded."""
    if args.uio and (args.segment_length or args.compression_ratio):
        return "--segment-length/--compression-ratio come from --uio's saved config; drop them"
    if "uio" in args.methods and not args.uio and not (args.segment_length or args.compression_ratio):
        return ("method uio needs trained parts: pass --uio DIR (save_trained output, a run's final/), or "
                "--segment-length/--compression-ratio to measure untrained parts, or leave uio out of --methods")
    if args.streaming_window is not None and args.streaming_window <= 4:
        return (f"--streaming-window {args.streaming_window}: it holds the 4 attention sinks and a recent window, "
                "so pass more than 4")
    if "longbench" in args.tasks and not args.longbench:
        return "the longbench task needs --longbench FILE"
    if "fluency" in args.tasks and min(args.fluency_prompt, args.fluency_tokens) < 1:
        return (f"--fluency-prompt {args.fluency_prompt} / --fluency-tokens {args.fluency_tokens}: "
                "both count tokens, so pass at least 1")
    if "facts" in args.tasks and not args.facts:
        return "the facts task needs --facts FILE (write one with uio-ds make-fact-data)"
    if "autoencode" in args.tasks and args.ae_given < 1:
        return f"--ae-given {args.ae_given}: the decoder needs at least the segment's first token"
    return None


def _records(args) -> dict:
    """The records of the fact and LongBench tasks: a bad record stops the run before the model loads."""
    out = {}
    if "facts" in args.tasks:
        from uio_ds.eval.facts import load_fact_records, records_of_lengths

        records = load_fact_records(args.facts)
        if args.facts_lengths:
            records = records_of_lengths(records, args.facts_lengths, args.facts)
        out["facts"] = records[: args.facts_max]
    if "longbench" in args.tasks:
        from uio_ds.eval.longbench import load_records

        out["longbench"] = load_records(args.longbench)
    return out


def _uio_config(args):
    """The memory's config: the saved one of --uio (or one of --segment-length/--compression-ratio),
    with the runtime options given on the command line."""
    import dataclasses

    from uio_ds.config import UIOConfig

    if args.uio:
        config, _ = UIOConfig.load(args.uio)
    else:
        config = UIOConfig(**{k: v for k, v in (("segment_length", args.segment_length),
                                               ("compression_ratio", args.compression_ratio)) if v})
    overrides = {k: getattr(args, k) for k in ("dtype", "memory_window", "recent_tokens", "sink_tokens")
                 if getattr(args, k) is not None}
    return dataclasses.replace(config, **overrides) if overrides else config


def _lengths_read(args) -> list[int]:
    """The text lengths whose decoder K/V entries the report states: --lengths for the tasks that
    read them, the prompt and its continuation for fluency; none for the tasks whose records bring
    their own lengths (facts, LongBench) or read one segment (autoencode)."""
    lengths = set(args.lengths) if "perplexity" in args.tasks else set()
    if "passkey" in args.tasks:
        lengths.update(args.passkey_lengths)
    if "fluency" in args.tasks:
        lengths.add(args.fluency_prompt + args.fluency_tokens)
    return sorted(lengths)


def _run_task(task: str, args, model, tokenizer, methods, docs, names, records) -> dict:
    """One task's results over every method."""
    if task == "perplexity":
        from uio_ds.eval.perplexity import evaluate_perplexity

        return evaluate_perplexity(methods, docs, args.lengths, model.segment_length, names)
    if task == "passkey":
        from uio_ds.eval.passkey import evaluate_passkey

        return evaluate_passkey(methods, tokenizer, torch.cat(docs), args.passkey_lengths, args.passkey_depths,
                                trials=args.passkey_trials)
    if task == "autoencode":
        from uio_ds.eval.autoencode import evaluate_autoencoding

        l = model.segment_length
        # the documents' segments taken in turn (each document's first, then each one's second, ...)
        # so a small sample spans every held-out document
        per_doc = [[d[i : i + l] for i in range(0, len(d) - l + 1, l)] for d in docs]
        segments = [p[k] for k in range(max(map(len, per_doc), default=0)) for p in per_doc if k < len(p)]
        return evaluate_autoencoding(model, tokenizer, torch.stack(segments[: args.ae_segments]),
                                     given=args.ae_given)
    if task == "fluency":
        from uio_ds.eval.fluency import evaluate_fluency

        with model.adapter(None):  # the judge: the frozen base
            return evaluate_fluency(methods, model.base, tokenizer, docs, args.fluency_prompt, args.fluency_tokens)
    if task == "facts":
        from uio_ds.eval.facts import evaluate_facts

        return evaluate_facts(methods, tokenizer, records["facts"], segment_length=model.segment_length)
    from uio_ds.eval.longbench import evaluate_longbench

    return evaluate_longbench(methods, tokenizer, records["longbench"], chat=args.longbench_chat,
                              max_new_tokens=args.longbench_max_new_tokens)


def main(argv=None) -> int:
    """Evaluate; every problem found (arguments, records, files, a model directory) is one ``error:``
    line and exit status 2, found before the model loads wherever it can be."""
    args = parser().parse_args(argv)
    try:
        return _evaluate(args)
    except (ValueError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


def _evaluate(args) -> int:
    from transformers import AutoTokenizer

    from uio_ds.eval.methods import build_methods
    from uio_ds.model.memory_model import UIOMemoryModel
    from uio_ds.utils.devices import resolve_device
    from uio_ds.utils.machine import machine

    try:
        device = resolve_device(args.device)
    except ValueError as err:
        raise ValueError(f"--device: {err}") from None
    problem = _argument_problem(args)
    if problem:
        raise ValueError(problem)
    records = _records(args)
    config = _uio_config(args)
    if "autoencode" in args.tasks and args.ae_given >= config.segment_length:
        raise ValueError(f"--ae-given {args.ae_given}: leaves nothing of the {config.segment_length}-token "
                         "segments to rebuild; pass fewer tokens")
    names, texts = ([], [])
    if {"perplexity", "passkey", "autoencode", "fluency"} & set(args.tasks):
        names, texts = _texts(args)
    torch.manual_seed(0)
    model = UIOMemoryModel.from_pretrained(args.model, config, device=device)
    if args.uio:
        model.load_trained(args.uio)
    model.eval()
    tokenizer = AutoTokenizer.from_pretrained(args.model)
    methods = build_methods(model, args.methods, streaming_window=args.streaming_window)
    report: dict = {"model": args.model, "uio": args.uio, "config": config.to_dict(), "machine": machine(),
                    "device": str(device),
                    "streaming_window": args.streaming_window or model.segment_length, "timings_s": {}}
    # what each method reads at each length: comparisons are fair at equal decoder K/V entries
    lengths = _lengths_read(args)
    report["kv_entries"] = {m.name: {n: m.kv_entries(n) for n in lengths} for m in methods}
    if lengths:  # none to state when every task's records bring their own lengths
        print("decoder K/V entries per query, at most, by length: " + "; ".join(
            f"{name} " + ", ".join(f"{n}: {v}" for n, v in per.items() if v is not None)
            for name, per in report["kv_entries"].items()))
    docs = _documents(args, tokenizer, texts) if texts else []
    for task in args.tasks:
        start = time.perf_counter()
        report[task] = _run_task(task, args, model, tokenizer, methods, docs, names, records)
        report["timings_s"][task] = round(time.perf_counter() - start, 1)
    print_report(report)
    os.makedirs(args.out, exist_ok=True)
    prefix = os.path.join(args.out, args.name)
    with open(prefix + ".json", "w") as f:
        json.dump(report, f, indent=2, default=str)
    written = _plots(report, prefix)
    print(f"wrote {prefix}.json" + "".join(f", {w}" for w in written))
    return 0


def print_report(report: dict) -> None:
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    if "perplexity" in report:
        ppl = report["perplexity"]
        lengths = list(next(iter(ppl.values()))["by_length"])
        print("\nperplexity   overall  segs 2..T  " + "  ".join(f"@{n:>7}" for n in lengths)
              + "   (@N: segments 2..T of the documents' first N tokens)")
        for name, r in ppl.items():
            print(f"{name:11s} {fmt(r['perplexity']):>8}  {fmt(r.get('later_perplexity')):>9}  "
                  + "  ".join(f"{fmt(r['by_length'][n].get('later_perplexity')):>8}" for n in lengths))
        docs = next(iter(ppl.values()))["by_length"]
        print("documents   " + " " * 20 + "  ".join(f"{docs[n]['documents']:>8}" for n in lengths))
    if "passkey" in report:
        pk = report["passkey"]
        print("\npasskey accuracy (mean over depths) at " + ", ".join(map(str, pk["lengths"])))
        for name, r in pk["methods"].items():
            means = [None if None in row else sum(row) / len(row) for row in r["accuracy"]]
            print(f"{name:11s} " + "  ".join(f"{fmt(m):>6}" for m in means) + f"   mean {fmt(r['mean'])}"
                  + f"   answer loss {fmt(r['mean_answer_loss'])} nats/token")
    if "facts" in report:
        facts = report["facts"]["methods"]
        names = sorted({c for r in facts.values() for c in r["cells"]})
        print(f"\nfacts: accuracy (answer loss) over {report['facts']['records']} records")
        for cell in names:
            print(f"  {cell:40s} " + "  ".join(
                f"{m} {fmt(r['cells'][cell]['accuracy'])} ({fmt(r['cells'][cell]['answer_loss'])}) n={r['cells'][cell]['n']}"
                for m, r in facts.items() if cell in r["cells"]))
    if "autoencode" in report:
        ae = report["autoencode"]
        base = ae["no_memory"]
        given = f", rebuilt after their first {ae['given']}" if ae.get("given", 1) > 1 else ""
        print(f"\nauto-encoding ({ae['segments']} segments of {ae['segment_length']} tokens, {ae['memory_tokens']} memory "
              f"tokens{given}): BLEU-4 {ae['bleu4']:.3f}, ROUGE-L {ae['rouge_l']:.3f}, loss {ae['loss']:.3f}, first choice "
              f"{ae['token_accuracy']:.3f} ({' '.join(f'{v:.2f}' for v in ae.get('token_accuracy_start', []))} at the "
              f"first tokens), right before the first error {ae['correct_prefix']:.1f} tokens; without "
              f"memory BLEU-4 {base['bleu4']:.3f}, ROUGE-L {base['rouge_l']:.3f}, loss {base['loss']:.3f}, first "
              f"choice {base['token_accuracy']:.3f}, {base['correct_prefix']:.1f} tokens")
    if "fluency" in report:
        fl = report["fluency"]
        print(f"\nfluency ({fl['documents']} documents, {fl['new_tokens']} new tokens after {fl['prompt_tokens']}): "
              f"perplexity under the frozen base reading everything (x full's), distinct 3-grams; the documents' "
              f"own text {fmt(fl['reference']['judge_perplexity'])}")
        for name, r in fl["methods"].items():
            sample = repr(r["samples"][0][:70]) if r["samples"] else ""
            print(f"{name:11s} {fmt(r['judge_perplexity']):>8} (x{fmt(r['ratio_to_full'])})  {fmt(r['distinct_3'])}   {sample}")
    if "longbench" in report:
        print("\nLongBench (mean of the datasets' scores x 100): "
              + ", ".join(f"{n} {r['average']:.2f}" for n, r in report["longbench"].items()))
