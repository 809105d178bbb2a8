"""Collect the SmolLM2 Table 2 recipe's results into one table, one JSON and an ablation plot.

Reads what ``launch/recipes/smollm2_table2.sh`` wrote (the evaluation JSONs under
``--results``, each run's metrics.jsonl under ``--runs``, the stage times) and
writes ``smollm2_recipe.json`` and ``smollm2_recipe_ablations.png`` next to the evaluations.
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

ABLATIONS = ("reference", "no_transfer_lora", "tbptt", "ratio32", "decoder_lora")
ABLATION_LABELS = {"reference": "reference: unbiased(2), ratio 8, transfer LoRA",
                   "no_transfer_lora": "without the transfer head's LoRA",
                   "tbptt": "tbptt(2) instead of unbiased(2)", "ratio32": "ratio 32 instead of 8",
                   "decoder_lora": "with a decoder LoRA (rank 8, q and v)"}


def summarize(results: str, runs: str, times: str | None) -> dict:
    out: dict = {"command": "make real-recipe"}
    out["stages_s"], total = stage_times(times)
    if total is not None:
        out["total_s"] = total
    out["main_run"] = run_summary(os.path.join(runs, "main"))
    ppl = load_json(os.path.join(results, "smollm2_recipe_perplexity.json"))
    if ppl:
        out["machine"] = ppl["machine"]
        out["config"] = ppl["config"]
        out["perplexity"] = {name: perplexity_entry(r) for name, r in ppl["perplexity"].items()}
    window = load_json(os.path.join(results, "smollm2_recipe_perplexity_window.json"))
    if ppl and window:
        name = f"uio_window{window['config']['memory_window']}"
        out["perplexity"][name] = perplexity_entry(window["perplexity"]["uio"])
    pk = load_json(os.path.join(results, "smollm2_recipe_passkey.json"))
    if pk:
        out["passkey"] = passkey_entry(pk["passkey"])
    ablations = {}
    for name in ABLATIONS:
        r = load_json(os.path.join(results, f"smollm2_recipe_ablation_{name}.json"))
        if r is None:
            continue
        entry = {"label": ABLATION_LABELS[name], "training": run_summary(os.path.join(runs, f"ablation_{name}"))}
        for method, m in r["perplexity"].items():
            entry[method] = perplexity_entry(m)
        ablations[name] = entry
    if ablations:
        out["ablations"] = ablations
    return out


def print_summary(s: dict) -> None:
    fmt = lambda v, w=7: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    if s.get("main_run"):
        m = s["main_run"]
        print(f"main run: {m['steps']} steps, {m['seconds_per_step']} s/step, loss {m['loss_first']} "
              f"(first {m['loss_window']}) -> {m['loss_last']} (last {m['loss_window']})")
    if "perplexity" in s:
        ppl = s["perplexity"]
        lengths = list(next(iter(ppl.values()))["by_length_segments_2_to_T"])
        docs = next(iter(ppl.values()))["documents_by_length"]
        print("\nheld-out perplexity, segments 2..T (the first segment reads alike for every method)")
        print(f"{'method':13s} {'all':>7} " + " ".join(f"{'@' + str(n):>7}" for n in lengths))
        for name, r in ppl.items():
            print(f"{name:13s} {fmt(r['segments_2_to_T'])} "
                  + " ".join(fmt(r["by_length_segments_2_to_T"][n]) for n in lengths))
        print(f"{'documents':13s} {'':>7} " + " ".join(f"{docs[n]:>7}" for n in lengths))
    if "passkey" in s:
        pk = s["passkey"]
        print(f"\npasskey exact match (mean over depths {pk['depths']}, {pk['trials']} trial(s) each) "
              "| answer loss (nats/token)")
        print(f"{'method':11s} " + " ".join(f"{n:>6}" for n in pk["lengths"]) + " | "
              + " ".join(f"{n:>6}" for n in pk["lengths"]))
        for name, r in pk["methods"].items():
            print(f"{name:11s} " + " ".join(fmt(v, 6) for v in r["accuracy_by_length"]) + " | "
                  + " ".join(fmt(v, 6) for v in r["answer_loss_by_length"]))
    if "ablations" in s:
        print("\nablations (same budget each; held-out books, first 2,048 tokens; perplexity of segments 2..T)")
        for name, a in s["ablations"].items():
            t = a.get("training") or {}
            print(f"{a['label']:48s} uio {fmt(a['uio']['segments_2_to_T'])}"
                  + (f"  no memory {fmt(a['no_memory']['segments_2_to_T'])}" if "no_memory" in a else "")
                  + (f"  train loss {t['loss_first']} -> {t['loss_last']}" if t else ""))
    if s.get("stages_s"):
        print("\nstage times: " + ", ".join(f"{k}: {v} s" for k, v in s["stages_s"].items())
              + f"; total {s['total_s'] / 60:.1f} min")


def plot_ablations(s: dict, path: str) -> str | None:
    if "ablations" not in s:
        return None
    names = list(s["ablations"])
    values = [s["ablations"][n]["uio"]["segments_2_to_T"] for n in names]
    fig, ax = subplots(figsize=(9, 3.8))
    labels = [s["ablations"][n]["label"] + (f"\n(its own no memory: {s['ablations'][n]['no_memory']['segments_2_to_T']:.2f})"
                                            if n != "reference" and "no_memory" in s["ablations"][n] else "")
              for n in names]
    ref = s["ablations"].get("reference", {}).get("no_memory")
    own = [s["ablations"][n].get("no_memory", {}).get("segments_2_to_T") for n in names]
    low = min(values + [v for v in own if v is not None]) - 1.5
    bars = ax.barh(labels, [v - low for v in values], left=low, color="tab:blue")
    if ref:
        ax.axvline(ref["segments_2_to_T"], color="tab:red", ls="--",
                   label=f"no memory {ref['segments_2_to_T']:.2f}")
        ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for bar, v in zip(bars, values):
        ax.text(v, bar.get_y() + bar.get_height() / 2, f" {v:.2f}", va="center")
    ax.invert_yaxis()
    steps = (s["ablations"].get("reference", {}).get("training") or {}).get("steps")
    ax.set(xlabel="held-out perplexity of segments 2..T (lower is better)", xlim=(low, max(values) + 1.5),
           title="SmolLM2 UIO ablations, equal training budget" + (f" ({steps} steps each)" if steps else ""))
    return save_figure(fig, path)


def main(argv=None) -> int:
    return summary_main(argv, __doc__, "runs/real_recipe", summarize,
                        ("perplexity", "smollm2_recipe_perplexity.json", "real-recipe"), print_summary,
                        "smollm2_recipe",
                        lambda s, results: plot_ablations(s, os.path.join(results, "smollm2_recipe_ablations.png")))


if __name__ == "__main__":
    sys.exit(main())
