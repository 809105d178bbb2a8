"""Collect the levers recipe's results into one table, one JSON and one figure.

Reads what ``launch/recipes/smollm2_levers.sh`` wrote (``smollm2_levers_*.json`` under
``--results``, the training runs under ``--runs``, the stage times) and writes
``smollm2_levers.json`` and ``smollm2_levers.png``: per arm, the perplexity of segments 2..T of
the held-out books at each length (next to the decoder without memory, StreamingLLM at the
memory's K/V budget and full attention), the share of the gap from no memory to full attention
the arm closes, fact retrieval in held-out wording over a held-out haystack (accuracy and answer
loss), reconstruction, fluency (a held-out text continued with memory, judged by the frozen base:
perplexity as a multiple of full attention's own continuation, distinct 3-grams) and the training cost (seconds per step). Arms not run yet are left out.

    python launch/recipes/levers_summary.py --results benchmarks/results --runs runs/levers
"""

from __future__ import annotations

import os

from summary_common import (
    add_ratio_to_full,
    facts_entry,
    fluency_entry,
    later_perplexity,
    load_json,
    run_summary,
    save_figure,
    stage_times,
    subplots,
    summary_main,
)

ARMS = {
    "lm": "next-token loss (reference)",
    "distill": "distillation from the base reading everything",
    "ae_then_lm": "auto-encoding warm start, then next-token loss",
    "distill_facts": "next-token + distillation, 30% varied facts",
    "recent": "distillation + one raw recent segment",
    "sinks": "distillation + 4 sinks + two raw recent segments",
    "facts_narrow": "next-token, 30% one-template pass keys",
    "facts_varied": "next-token, 30% varied facts",
    "decoder_lora": "next-token + varied facts, decoder LoRA regularised to the base",
}


def _fluency(results: str, name: str, method: str) -> dict | None:
    return fluency_entry(load_json(os.path.join(results, f"smollm2_levers_{name}_fluency.json")), method)


def summarize(results: str, runs: str, times: str | None) -> dict:
    out: dict = {"command": "make levers-recipe"}
    out["stages_s"], total = stage_times(times)
    if total is not None:
        out["total_s"] = total
    base = load_json(os.path.join(results, "smollm2_levers_baselines.json"))
    if base:
        out["machine"] = base["machine"]
        out["baselines"] = {m: {"perplexity": later_perplexity(base, m), "facts": facts_entry(base, m),
                                "kv_entries": base["kv_entries"][m], "fluency": _fluency(results, "baselines", m)}
                            for m in base["perplexity"]}
        # the sinks arm's raw reading without memory (4 sinks + 512 raw tokens): what memory adds to it
        window = load_json(os.path.join(results, "smollm2_levers_window.json"))
        if window:
            out["baselines"]["window"] = {"perplexity": later_perplexity(window, "uio"), "facts": facts_entry(window, "uio"),
                                          "kv_entries": window["kv_entries"]["uio"],
                                          "fluency": _fluency(results, "window", "uio")}
    out["arms"] = {}
    for arm, label in ARMS.items():
        r = load_json(os.path.join(results, f"smollm2_levers_{arm}.json"))
        if not r:
            continue
        entry = {"label": label, "perplexity": later_perplexity(r, "uio"), "facts": facts_entry(r, "uio"),
                 "kv_entries": r["kv_entries"]["uio"], "training": run_summary(os.path.join(runs, arm)),
                 "fluency": _fluency(results, arm, "uio")}
        if "autoencode" in r:
            entry["reconstruction"] = {k: r["autoencode"][k] for k in ("bleu4", "rouge_l", "loss")}
            entry["reconstruction"]["no_memory_loss"] = r["autoencode"]["no_memory"]["loss"]
        if base:
            gaps = {}
            for n, value in entry["perplexity"].items():
                none, full = out["baselines"]["no_memory"]["perplexity"][n], out["baselines"]["full"]["perplexity"][n]
                gaps[n] = (none - value) / (none - full) if value is not None and none != full else None
            entry["gap_closed"] = gaps
        out["arms"][arm] = entry
    full = ((out.get("baselines") or {}).get("full") or {}).get("fluency")
    add_ratio_to_full([e.get("fluency") for e in [*(out.get("baselines") or {}).values(), *out["arms"].values()]], full)
    return out


def print_summary(s: dict) -> None:
    fmt = lambda v, w=7: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    lengths = list(s["baselines"]["no_memory"]["perplexity"])
    print("perplexity of segments 2..T on the held-out books (K/V entries read at the longest length)")
    print(f"  {'':48s} " + " ".join(f"@{n:>6}" for n in lengths)
          + "   K/V   facts acc  answer loss  fluency x full  distinct-3")
    rows = [(f"baseline {m}", b) for m, b in s["baselines"].items()]
    rows += [(f"{arm}: {a['label']}", a) for arm, a in s["arms"].items()]
    for label, r in rows:
        facts, fluency, kv = r["facts"], r.get("fluency"), r["kv_entries"]
        acc = fmt(facts["accuracy"], 9) if facts else fmt(None, 9)
        loss = fmt(facts["answer_loss"], 11) if facts else fmt(None, 11)
        flu = fmt(fluency.get("ratio_to_full"), 14) if fluency else fmt(None, 14)
        distinct = fmt(fluency["distinct_3"], 10) if fluency else fmt(None, 10)
        print(f"  {label[:48]:48s} " + " ".join(fmt(r["perplexity"].get(n)) for n in lengths)
              + f" {kv.get(lengths[-1], 0) or 0:>5} {acc} {loss} {flu} {distinct}")
    for arm, a in s["arms"].items():
        t = a.get("training")
        if t:
            print(f"  {arm:14s} {t['steps']} steps, {t['seconds_per_step']:.1f} s/step, loss {t['loss_first']:.3f} -> "
                  f"{t['loss_last']:.3f}; gap closed " + ", ".join(
                      f"@{n}: {fmt(g, 4)}" for n, g in (a.get("gap_closed") or {}).items()))


def plot(s: dict, results: str) -> str | None:
    if not s["arms"]:
        return None
    lengths = list(s["baselines"]["no_memory"]["perplexity"])
    fig, axes = subplots(1, 2, figsize=(13, 4.5))
    names = list(s["arms"])
    lines = [(m, style) for m, style in (("no_memory", ":"), ("streaming", "--"), ("window", "-."), ("full", "-"))
             if m in s["baselines"]]
    for i, n in enumerate(lengths):
        axes[0].bar([j + i * 0.4 for j in range(len(names))], [s["arms"][a]["perplexity"][n] for a in names],
                    width=0.4, label=f"{n} tokens")
        for m, style in lines:
            axes[0].axhline(s["baselines"][m]["perplexity"][n], linestyle=style, linewidth=1,
                            color=f"C{i}", label=f"{m} @{n}")
    lowest = min(v for b in [*s["baselines"].values(), *s["arms"].values()] for v in b["perplexity"].values() if v)
    axes[0].set_ylim(bottom=0.8 * lowest)  # the differences, not the distance from zero
    axes[0].set_xticks([j + 0.2 for j in range(len(names))], names, rotation=30, ha="right")
    axes[0].set_ylabel("perplexity, segments 2..T (held-out books)")
    axes[0].set_title("Perplexity by arm against the baselines")
    axes[0].legend(fontsize=7, ncol=2)
    facts = [(a, s["arms"][a]["facts"]) for a in names if s["arms"][a]["facts"]]
    axes[1].bar([a for a, _ in facts], [f["answer_loss"] for _, f in facts], color="C2")
    for m, style in lines:
        f = s["baselines"][m]["facts"]
        if f:
            axes[1].axhline(f["answer_loss"], linestyle=style, color="k", linewidth=1, label=m)
    axes[1].set_ylabel("answer loss, nats/token (lower is better)")
    axes[1].set_title("Facts in held-out wording over held-out text")
    axes[1].tick_params(axis="x", rotation=30)
    axes[1].legend(fontsize=8)
    return save_figure(fig, os.path.join(results, "smollm2_levers.png"))


def main(argv=None) -> int:
    return summary_main(argv, __doc__.splitlines()[0], "runs/levers", summarize,
                        ("baselines", "smollm2_levers_baselines.json", "levers-recipe"), print_summary,
                        "smollm2_levers", plot)


if __name__ == "__main__":
    raise SystemExit(main())
