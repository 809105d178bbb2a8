"""Collect the memory release's figures and check them against the release's goals.

Reads what ``launch/recipes/smollm2_memory.sh`` wrote, every run in the release's reading (its
sinks, memory window and raw window, so a fixed number of K/V entries at any length):

* ``smollm2_release_reading.json``: the memory and StreamingLLM at the same K/V budget on the
  held-out books at 4K / 8K tokens, and facts in held-out wording over a held-out haystack;
* ``smollm2_release_window.json``: the same reading without memory (memory window 0), so what the
  memory adds to its raw window is a row of its own;
* ``smollm2_release_long.json`` / ``smollm2_release_long_window.json``: the same at 16K / 32K,
  with the decoder without memory;
* ``smollm2_release_reading_fluency.json`` / ``smollm2_release_window_fluency.json``: fluency;
* ``smollm2_release_baselines.json``: facts for the decoder without memory and full attention on
  the same records (``benchmarks/data/facts_held_out_2k.jsonl.gz``);
* ``smollm2_release_long_facts.json`` / ``smollm2_release_long_facts_baselines.json``: facts at 4K,
  8K, 16K and 32K tokens, each beyond the raw window (``benchmarks/data/facts_held_out_long.jsonl.gz``),
  for the memory, and for StreamingLLM, the decoder without memory and full attention (within its
  8,192 positions);

and from the levers recipe the decoder without memory and full attention at 4K / 8K (within
SmolLM2's 8,192 positions), and the released arm's training and reconstruction. Writes
``smollm2_release.json``: per method and length the perplexity of segments 2..T with the K/V
entries read, facts, fluency, reconstruction, and each goal with its target, the figure and
whether it is met (``null`` where it is not measured yet).

    python launch/recipes/memory_summary.py --arm sinks
"""

from __future__ import annotations

import argparse
import os
import sys

from levers_summary import summarize as levers_summary
from summary_common import (
    add_ratio_to_full,
    facts_by,
    facts_entry,
    fluency_entry,
    later_perplexity,
    load_json,
    summary_main,
)

ARM = "sinks"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# evaluation file -> {method in the file: the summary's row}
PERPLEXITY = {
    "smollm2_release_reading": {"uio": "uio", "streaming": "streaming"},
    # the same reading without memory, first run by the levers recipe's split study
    "smollm2_levers_window768": {"uio": "window"},
    "smollm2_release_window": {"uio": "window"},
    "smollm2_release_long": {"uio": "uio", "no_memory": "no_memory", "streaming": "streaming"},
    "smollm2_release_long_window": {"uio": "window"},
    "smollm2_levers_baselines": {"no_memory": "no_memory", "full": "full"},
    # a bf16 rerun of those where the levers baselines ran in float32 (later files override)
    "smollm2_levers_baselines_bf16_perplexity": {"no_memory": "no_memory", "full": "full"},
}
# facts, all on the committed records (benchmarks/data/facts_held_out_2k.jsonl.gz)
FACTS = {
    "smollm2_release_reading": {"uio": "uio", "streaming": "streaming"},
    "smollm2_release_window": {"uio": "window"},
    "smollm2_release_baselines": {"no_memory": "no_memory", "full": "full"},
}
# facts at 4K..32K tokens (benchmarks/data/facts_held_out_long.jsonl.gz), by prompt length
# (two evaluations of about an hour each on 2 CPU cores; a method found in either is taken)
BASELINE_ROWS = {"streaming": "streaming", "no_memory": "no_memory", "full": "full"}
LONG_FACTS = {"smollm2_release_long_facts": {"uio": "uio", **BASELINE_ROWS},
              "smollm2_release_long_facts_baselines": BASELINE_ROWS}
FLUENCY = {
    "smollm2_release_reading_fluency": {"uio": "uio", "streaming": "streaming"},
    "smollm2_release_window_fluency": {"uio": "window"},
    "smollm2_levers_baselines_fluency": {"no_memory": "no_memory", "full": "full"},
}
ROWS = ("uio", "window", "streaming", "no_memory", "full")


def summarize(results: str, runs: str, times: str | None, arm: str = ARM) -> dict:
    levers = levers_summary(results, runs, times)
    a = levers["arms"].get(arm)
    reading = load_json(os.path.join(results, "smollm2_release_reading.json"))
    if not a or not reading:
        return {}
    out: dict = {"command": "make memory-recipe", "arm": arm, "label": a["label"], "machine": reading["machine"],
                 "reading": {k: reading["config"][k] for k in ("memory_window", "recent_tokens", "sink_tokens")},
                 "training": a.get("training"), "reconstruction": a.get("reconstruction"),
                 "perplexity": {m: {} for m in ROWS}, "facts": {m: None for m in ROWS},
                 "fluency": {m: None for m in ROWS}}
    for name, methods in PERPLEXITY.items():
        r = load_json(os.path.join(results, f"{name}.json"))
        for method, row in methods.items():
            if not r or method not in r["perplexity"]:
                continue
            for n, v in later_perplexity(r, method).items():
                out["perplexity"][row][n] = {"perplexity": v, "kv_entries": r["kv_entries"][method].get(n)}
    for name, methods in FACTS.items():
        r = load_json(os.path.join(results, f"{name}.json"))
        for method, row in methods.items():
            if r and method in r.get("facts", {}).get("methods", {}):
                out["facts"][row] = facts_entry(r, method)
    digests = {f["records_sha1"] for f in out["facts"].values() if f and f["records_sha1"]}  # None: not recorded
    out["facts_same_records"] = len(digests) <= 1
    out["facts_by_length"] = {m: {} for m in ROWS}
    digests = set()
    for name, methods in LONG_FACTS.items():
        r = load_json(os.path.join(results, f"{name}.json"))
        for method, row in methods.items():
            out["facts_by_length"][row].update(facts_by(r, method, "length"))
        if r:
            digests.add(r["facts"]["records_sha1"])
    if digests:
        if len(digests) > 1:
            raise SystemExit(f"the facts at 4K..32K were read from different records ({sorted(digests)}): "
                             "evaluate every method on benchmarks/data/facts_held_out_long.jsonl.gz")
        out["facts_by_length_records"] = digests.pop()
    for name, methods in FLUENCY.items():
        r = load_json(os.path.join(results, f"{name}.json"))
        for method, row in methods.items():
            out["fluency"][row] = fluency_entry(r, method)
    add_ratio_to_full(list(out["fluency"].values()), out["fluency"]["full"])
    milestone = os.path.join(REPO, "release", "milestones", "levers", arm)  # wherever the summary runs from
    for parts in (milestone, os.path.join(runs, arm, "final")):
        saved = load_json(os.path.join(parts, "uio_config.json"))
        if saved:
            out["frozen_decoder"] = saved["uio"].get("decoder_lora") is None
            break
    out["goals"] = goals(out)
    return out


def goals(s: dict) -> list[dict]:
    """The release's goals, each with what was measured and whether it is met (None: not measured)."""
    ppl = s["perplexity"]
    at = lambda m, n: (ppl.get(m, {}).get(n) or {}).get("perplexity")  # noqa: E731
    out = []
    for n in ("8192", "16384", "32768"):
        uio, stream = at("uio", n), at("streaming", n)
        out.append({"goal": f"perplexity @{n}: memory below StreamingLLM at equal K/V", "target": stream,
                    "value": uio, "met": None if None in (uio, stream) else uio < stream})
    none, full, uio = at("no_memory", "8192"), at("full", "8192"), at("uio", "8192")
    gap = None if None in (none, full, uio) else (none - uio) / (none - full)
    out.append({"goal": "perplexity @8192: at least 50% of the gap from no memory to full attention closed",
                "target": 0.5, "value": gap, "met": None if gap is None else gap >= 0.5})
    frozen = s.get("frozen_decoder")
    out.append({"goal": "without memory, the frozen base or within 2% of its perplexity", "target": 0.02,
                "value": 0.0 if frozen else None, "met": True if frozen else None,
                "note": "a frozen decoder is the base; a decoder LoRA needs its no-memory perplexity measured"})
    by_length = s.get("facts_by_length") or {}
    long = by_length.get("uio") or {}
    near = [long[n]["accuracy"] for n in ("4K", "8K", "16K") if n in long]
    facts = (s["facts"].get("uio") or {}).get("accuracy")  # at 2K: below 70% there, no longer length is likely
    if len(near) == 3:
        value, met, note = min(near), min(near) >= 0.9, "the lowest of 4K, 8K and 16K"
    else:
        value, met = facts, None if facts is None or facts >= 0.7 else False
        note = "measured at 2K tokens only: a figure below 70% there misses every length"
    out.append({"goal": "facts in held-out wording: 90% exact at 4K, 8K and 16K", "target": 0.9, "value": value,
                "met": met, "note": note})
    far = (long.get("32K") or {}).get("accuracy")
    if far is None:  # from 2K as above
        far, far_met = facts, None if facts is None or facts >= 0.7 else False
    else:
        far_met = far >= 0.7
    out.append({"goal": "facts in held-out wording: 70% exact at 32K", "target": 0.7, "value": far, "met": far_met})
    outside = [v["accuracy"] for m in ("no_memory", "streaming") for v in (by_length.get(m) or {}).values()]
    out.append({"goal": "facts beyond the window: no memory and StreamingLLM at 0", "target": 0.0,
                "value": max(outside) if outside else None, "met": max(outside) == 0 if outside else None,
                "note": "every fact of the 4K..32K records lies in the first half of its prompt, beyond the window"})
    rouge = (s.get("reconstruction") or {}).get("rouge_l")
    out.append({"goal": "auto-encoding: ROUGE-L at least 0.9 at ratio 8", "target": 0.9, "value": rouge,
                "met": None if rouge is None else rouge >= 0.9})
    return out


def print_summary(s: dict) -> None:
    fmt = lambda v, w=8: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    lengths = sorted({n for per in s["perplexity"].values() for n in per}, key=int)
    r = s["reading"]
    print(f"release: the {s['arm']} arm ({s['label']}), read with {r['sink_tokens']} sinks, the last "
          f"{r['memory_window']} memories and {r['recent_tokens']} raw tokens")
    print("perplexity of segments 2..T, held-out books (K/V entries read in brackets)")
    print(f"  {'':12s}" + "".join(f"{'@' + n:>16}" for n in lengths))
    for method, per in s["perplexity"].items():
        cells = [per.get(n) for n in lengths]
        print(f"  {method:12s}" + "".join(
            f"{fmt(c['perplexity'])} ({c['kv_entries'] or '-':>5})" if c else f"{'-':>16}" for c in cells))
    for method, f in s["facts"].items():
        flu = s["fluency"].get(method) or {}
        print(f"  {method:12s} facts {fmt((f or {}).get('accuracy'), 5)} (answer loss {fmt((f or {}).get('answer_loss'), 5)})"
              f"  fluency x full {fmt(flu.get('ratio_to_full'), 5)}, distinct-3 {fmt(flu.get('distinct_3'), 5)}")
    if not s["facts_same_records"]:
        print("  (the facts rows read different records: they do not compare)")
    by_length = {m: per for m, per in (s.get("facts_by_length") or {}).items() if per}
    if by_length:
        lengths = sorted({n for per in by_length.values() for n in per}, key=lambda n: int(n.rstrip("K")))
        print("facts exact by prompt length (each fact beyond the raw window)")
        print(f"  {'':12s}" + "".join(f"{'@' + n:>8}" for n in lengths))
        for method, per in by_length.items():
            print(f"  {method:12s}" + "".join(fmt((per.get(n) or {}).get("accuracy")) for n in lengths))
    print("goals:")
    for g in s["goals"]:
        state = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
        print(f"  [{state:>12}] {g['goal']}: {fmt(g['value'], 5).strip()} (target {fmt(g['target'], 5).strip()})")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--arm", default=ARM, help="the levers arm released (smollm2_memory.sh's RELEASE_ARM)")
    known, rest = p.parse_known_args(sys.argv[1:] if argv is None else argv)
    return summary_main(rest, __doc__.splitlines()[0], "runs/levers",
                        lambda results, runs, times: summarize(results, runs, times, known.arm),
                        ("perplexity", "smollm2_release_reading.json", "memory-recipe"), print_summary,
                        "smollm2_release", lambda *_: None)


if __name__ == "__main__":
    raise SystemExit(main())
