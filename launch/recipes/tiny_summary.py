"""Collect the tiny recall recipe's results into one table, one JSON and one figure.

Reads what ``launch/recipes/tiny_recall.sh`` wrote (evaluation JSONs under ``--results``, the
training runs under ``--runs``, the stage times) and writes ``tiny_recipe.json`` and
``tiny_recipe.png`` next to the evaluations: (a) pass-key exact match by the number of segments
the key must cross, (b) perplexity of the held-out books by segment position, (c) auto-encoding.
"""

from __future__ import annotations

import os
import sys

from summary_common import (
    load_json,
    passkey_entry,
    perplexity_entry,
    run_summary,
    save_figure,
    stage_times,
    subplots,
    summary_main,
)

RUNS = {"recall": "memory + decoder LoRA (pass key)", "recall_frozen_decoder": "memory, frozen decoder (pass key)",
        "recall_unbiased2": "memory + decoder LoRA, unbiased(2)",
        "recall_mixed": "memory + decoder LoRA, then 3-6 segments", "books": "memory on the books (every token)", "ae8": "auto-encoding, ratio 8", "ae32": "auto-encoding, ratio 32"}
PASSKEY = {"decoder_lora": "tiny_recipe_passkey", "frozen_decoder": "tiny_recipe_passkey_frozen_decoder",
           "unbiased2": "tiny_recipe_passkey_unbiased2", "mixed": "tiny_recipe_passkey_mixed"}


def summarize(results: str, runs: str, times: str | None) -> dict:
    out: dict = {"command": "make tiny-recipe"}
    out["stages_s"], total = stage_times(times)
    if total is not None:
        out["total_s"] = total
    out["training"] = {name: run_summary(os.path.join(runs, name)) for name in RUNS}
    out["passkey"] = {}
    for variant, name in PASSKEY.items():
        r = load_json(os.path.join(results, f"{name}.json"))
        if r:
            out.setdefault("machine", r["machine"])
            entry = passkey_entry(r["passkey"])
            entry["segment_length"] = r["config"]["segment_length"]
            out["passkey"][variant] = entry
    ppl = load_json(os.path.join(results, "tiny_recipe_perplexity.json"))
    if ppl:
        out.setdefault("machine", ppl["machine"])
        out["perplexity"] = {name: perplexity_entry(r) for name, r in ppl["perplexity"].items()}
        for window in (1, 4):
            r = load_json(os.path.join(results, f"tiny_recipe_perplexity_window{window}.json"))
            if r:
                out["perplexity"][f"uio_window{window}"] = perplexity_entry(r["perplexity"]["uio"])
    out["autoencode"] = {}
    for ratio in (8, 32):
        r = load_json(os.path.join(results, f"tiny_recipe_autoencode_ratio{ratio}.json"))
        if r:
            a = r["autoencode"]
            out["autoencode"][f"ratio{ratio}"] = {"bleu4": a["bleu4"], "rouge_l": a["rouge_l"], "segments": a["segments"],
                                                  "memory_tokens": r["config"]["segment_length"] // ratio}
    return out


def _segments(pk: dict) -> list[int]:
    """Segment of the answer for each prompt length (its last token and the answer share it)."""
    return [length // pk["segment_length"] + 1 for length in pk["lengths"]]


def print_summary(s: dict) -> None:
    fmt = lambda v, w=6: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    print("training runs")
    for name, label in RUNS.items():
        t = s["training"].get(name)
        if t:
            print(f"  {label:38s} {t['steps']:>5} steps  {t['seconds_per_step']:.2f} s/step  loss {t['loss_first']:.3f} "
                  f"(first {t['loss_window']}) -> {t['loss_last']:.3f} (last {t['loss_window']})")
    for variant, pk in s["passkey"].items():
        print(f"\npass key in segment 1, asked in segment ... ({variant.replace('_', ' ')}; {pk['trials']} keys per "
              "length) | exact match | answer loss (nats/token)")
        print(f"{'method':11s} " + " ".join(f"{n:>6}" for n in _segments(pk)) + " | "
              + " ".join(f"{n:>6}" for n in _segments(pk)))
        for name, r in pk["methods"].items():
            print(f"{name:11s} " + " ".join(fmt(v) for v in r["accuracy_by_length"]) + " | "
                  + " ".join(fmt(v) for v in r["answer_loss_by_length"]))
    if "perplexity" in s:
        ppl = s["perplexity"]
        positions = list(next(iter(ppl.values()))["by_segment"])
        print("\nheld-out books, perplexity by segment position (64-token segments)")
        print(f"{'method':11s} {'2..T':>6} " + " ".join(f"{int(p) + 1:>6}" for p in positions))
        for name, r in ppl.items():
            print(f"{name:11s} {fmt(r['segments_2_to_T'])} " + " ".join(fmt(r["by_segment"][p]) for p in positions))
    if s["autoencode"]:
        print("\nauto-encoding (rebuild a 64-token segment from its memory alone)")
        for name, a in s["autoencode"].items():
            print(f"  {name:8s} ({a['memory_tokens']:>2} memory tokens)  BLEU-4 {a['bleu4']:.3f}  ROUGE-L {a['rouge_l']:.3f}"
                  f"  ({a['segments']} segments)")
    if s.get("stages_s"):
        print("\nstage times: " + ", ".join(f"{k}: {v} s" for k, v in s["stages_s"].items())
              + f"; total {s['total_s'] / 60:.1f} min")


def plot(s: dict, path: str) -> str:
    fig, axes = subplots(1, 3, figsize=(15, 5.4))
    ax = axes[0]
    styles = {("mixed", "uio"): ("memory + decoder LoRA, then 3-6 segments", "tab:green", "-"),
              ("mixed", "no_memory"): ("no memory (that decoder)", "tab:green", ":"),
              ("decoder_lora", "uio"): ("memory + decoder LoRA (4 segments)", "tab:blue", "-"),
              ("decoder_lora", "no_memory"): ("no memory (same decoder)", "tab:blue", ":"),
              ("frozen_decoder", "uio"): ("memory, frozen decoder", "tab:orange", "-"),
              ("frozen_decoder", "no_memory"): ("no memory (frozen decoder)", "tab:orange", ":"),
              ("unbiased2", "uio"): ("memory + decoder LoRA, unbiased(2)", "tab:purple", "-."),
              ("decoder_lora", "full"): ("full attention (base)", "tab:gray", "--")}
    for (variant, method), (label, color, ls) in styles.items():
        pk = s["passkey"].get(variant)
        if pk and method in pk["methods"]:
            ax.plot(_segments(pk), pk["methods"][method]["accuracy_by_length"], marker="o", color=color, ls=ls,
                    label=label)
    ax.set(xlabel="segment holding the question (key in segment 1)", ylabel="exact match",
           title="(a) pass-key recall across segments", ylim=(-0.03, 1.03))
    ax.xaxis.get_major_locator().set_params(integer=True)
    if "mixed" in s["passkey"]:
        ax.axvspan(2.8, 6.2, color="tab:green", alpha=0.08, label="lengths the 3-6 run trained on")
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax = axes[1]
    if "perplexity" in s:
        for name, color, ls in (("uio", "tab:blue", "-"), ("uio_window1", "tab:blue", ":"),
                                ("no_memory", "tab:red", "-"), ("streaming", "tab:green", "-"),
                                ("full", "tab:gray", "-")):
            if name in s["perplexity"]:
                seg = s["perplexity"][name]["by_segment"]
                label = f"{name} ({s['perplexity'][name]['segments_2_to_T']:.1f} over segments 2..T)"
                ax.plot([int(k) + 1 for k in seg], list(seg.values()), marker=".", color=color, ls=ls, label=label)
        ax.set(xlabel="segment position in the document", ylabel="perplexity",
               title="(b) held-out books, by segment position")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2)
    ax = axes[2]
    if s["autoencode"]:
        names = list(s["autoencode"])
        x = range(len(names))
        ax.bar([i - 0.2 for i in x], [s["autoencode"][n]["rouge_l"] for n in names], width=0.4, label="ROUGE-L")
        ax.bar([i + 0.2 for i in x], [s["autoencode"][n]["bleu4"] for n in names], width=0.4, label="BLEU-4")
        ax.set_xticks(list(x), [f"{n}\n({s['autoencode'][n]['memory_tokens']} memory tokens)" for n in names])
        ax.set(title="(c) auto-encoding a 64-token segment", ylabel="score")
        ax.legend(fontsize=8)
    fig.suptitle("tiny recall recipe (tiny Llama, hidden 128, 4 layers; l=64)")
    return save_figure(fig, path)


def main(argv=None) -> int:
    return summary_main(argv, __doc__, "runs/tiny_recipe", summarize, ("passkey", "tiny_recipe_passkey.json", "tiny-recipe"),
                        print_summary, "tiny_recipe", lambda s, results: plot(s, os.path.join(results, "tiny_recipe.png")))


if __name__ == "__main__":
    sys.exit(main())
