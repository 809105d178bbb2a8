"""Collect the levers recipe's results into one table, one JSON and one figure.

Reads what ``launch/recipes/smollm2_levers.sh`` wrote (``smollm2_levers_*.json`` under
``--results``, the training runs under ``--runs``, the stage times) and writes
``smollm2_levers.json`` and ``smollm2_levers.png``: per arm, the perplexity of segments 2..T of
the held-out books at each length (next to the decoder without memory, StreamingLLM at the
memory's K/V budget and full attention), the share of the gap from no memory to full attention
the arm closes, fact retrieval in held-out wording over a held-out haystack (accuracy and answer
loss, each also against the decoder without memory on the same records: the held-out records
were regenerated once, see ``over_no_memory``), reconstruction, fluency (a held-out text
continued with memory, judged by the frozen base: perplexity as a multiple of full attention's
own continuation, distinct 3-grams) and the training cost (seconds per step; from the committed
milestone's metrics.jsonl where the run is not on this machine). Arms not run yet are left out;
stage times add to those of the summary written before (a recipe continued on another machine).

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


# an arm trained in two stages: the run of its first stage (its training is the second's)
WARM_STARTS = {"ae_then_lm": "ae_warm"}
# committed arms keep their training log here, so a summary on another machine still shows it
MILESTONES = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                          "release", "milestones", "levers")


def _fluency(results: str, name: str, method: str) -> dict | None:
    return fluency_entry(load_json(os.path.join(results, f"smollm2_levers_{name}_fluency.json")), method)


def _add_gain_over_no_memory(facts: list[dict | None], no_memory: dict[str | None, dict]) -> None:
    """Set each facts entry's ``over_no_memory``: accuracy above, and answer loss below, the decoder
    without memory on the same records (``no_memory``: records digest -> its entry; None where
    the decoder without memory was not evaluated on them). Reports written before the records
    were committed have no digest (None): they share one set of records among themselves."""
    for f in facts:
        if f:
            base = no_memory.get(f["records_sha1"])
            f["over_no_memory"] = None if base is None else {
                "accuracy": f["accuracy"] - base["accuracy"], "answer_loss": base["answer_loss"] - f["answer_loss"]}


def summarize(results: str, runs: str, times: str | None) -> dict:
    out: dict = {"command": "make levers-recipe"}
    earlier = (load_json(os.path.join(results, "smollm2_levers.json")) or {}).get("stages_s")
    out["stages_s"], total = stage_times(times, earlier)
    if total is not None:
        out["total_s"] = total
    base = load_json(os.path.join(results, "smollm2_levers_baselines.json"))
    # the baselines' facts again on the committed held-out records, where the first run used others
    base_facts = load_json(os.path.join(results, "smollm2_levers_baselines_facts.json"))
    if base:
        out["machine"] = base["machine"]
        out["baselines"] = {m: {"perplexity": later_perplexity(base, m), "facts": facts_entry(base, m),
                                "kv_entries": base["kv_entries"][m], "fluency": _fluency(results, "baselines", m)}
                            for m in base["perplexity"]}
        for m, b in out["baselines"].items():
            if base_facts and m in base_facts["facts"]["methods"]:
                b["facts_other_records"], b["facts"] = b["facts"], facts_entry(base_facts, m)
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
        training = {name: run_summary(os.path.join(runs, name)) or run_summary(os.path.join(MILESTONES, name))
                    for name in (arm, WARM_STARTS.get(arm)) if name}
        entry = {"label": label, "perplexity": later_perplexity(r, "uio"), "facts": facts_entry(r, "uio"),
                 "kv_entries": r["kv_entries"]["uio"], "training": training[arm],
                 "fluency": _fluency(results, arm, "uio")}
        if arm in WARM_STARTS:
            entry["warm_start"] = training[WARM_STARTS[arm]]
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
    rows = [*(out.get("baselines") or {}).values(), *out["arms"].values()]
    no_memory = (out.get("baselines") or {}).get("no_memory") or {}
    _add_gain_over_no_memory([r["facts"] for r in rows] + [r.get("facts_other_records") for r in rows],
                             {f["records_sha1"]: f for f in (no_memory.get("facts"), no_memory.get("facts_other_records")) if f})
    full = ((out.get("baselines") or {}).get("full") or {}).get("fluency")
    add_ratio_to_full([e.get("fluency") for e in rows], full)
    return out


def print_summary(s: dict) -> None:
    fmt = lambda v, w=7: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    lengths = list(s["baselines"]["no_memory"]["perplexity"])
    print("perplexity of segments 2..T on the held-out books (K/V entries read at the longest length); facts as\n"
          "accuracy and answer loss, each also against the decoder without memory on the same records\n"
          "(records: the digest of the held-out fact records, 'first' for the set used before they were committed)")
    print(f"  {'':48s} " + " ".join(f"@{n:>6}" for n in lengths)
          + "   K/V  facts  +acc   loss  -loss  records   fluency x full  distinct-3")
    rows = [(f"baseline {m}", b) for m, b in s["baselines"].items()]
    rows += [(f"{arm}: {a['label']}", a) for arm, a in s["arms"].items()]
    for label, r in rows:
        facts, fluency, kv = r["facts"], r.get("fluency"), r["kv_entries"]
        gain = (facts or {}).get("over_no_memory") or {}
        records = "-" if not facts else (facts["records_sha1"] or "first")[:8]
        cells = (fmt(facts and facts["accuracy"], 6), fmt(gain.get("accuracy"), 5),
                 fmt(facts and facts["answer_loss"], 6), fmt(gain.get("answer_loss"), 6), f"{records:>8}")
        flu = fmt(fluency.get("ratio_to_full"), 14) if fluency else fmt(None, 14)
        distinct = fmt(fluency["distinct_3"], 10) if fluency else fmt(None, 10)
        print(f"  {label[:48]:48s} " + " ".join(fmt(r["perplexity"].get(n)) for n in lengths)
              + f" {kv.get(lengths[-1], 0) or 0:>5} " + " ".join(cells) + f"  {flu} {distinct}")
    for arm, a in s["arms"].items():
        t = a.get("training")
        if t:
            w = a.get("warm_start")
            first = f"after {w['steps']} warm-start steps ({w['seconds_per_step']:.1f} s/step), " if w else ""
            print(f"  {arm:14s} {first}{t['steps']} steps, {t['seconds_per_step']:.1f} s/step, loss {t['loss_first']:.3f} -> "
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
    # answer loss below the decoder without memory on the same records: comparable across record sets
    gains = [(a, s["arms"][a]["facts"]["over_no_memory"]) for a in names
             if (s["arms"][a]["facts"] or {}).get("over_no_memory")]
    axes[1].bar([a for a, _ in gains], [g["answer_loss"] for _, g in gains], color="C2")
    for m, style in lines:
        g = (s["baselines"][m]["facts"] or {}).get("over_no_memory")
        if g and m != "no_memory":
            axes[1].axhline(g["answer_loss"], linestyle=style, color="k", linewidth=1, label=m)
    axes[1].axhline(0, color="k", linewidth=0.5)
    axes[1].set_ylabel("answer loss below no memory, nats/token (higher is better)")
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
