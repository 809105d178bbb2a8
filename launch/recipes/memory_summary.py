"""Collect the memory release's figures and check them against the release's goals.

Reads what ``launch/recipes/smollm2_memory.sh`` relies on: the levers recipe's evaluation of the
released arm (``smollm2_levers_ARM.json``, ``..._ARM_fluency.json``, the baselines) and the long
perplexity runs (``smollm2_release_long.json``, ``smollm2_release_long_streaming16k.json``), and
writes ``smollm2_release.json``: per length, the perplexity of segments 2..T of the held-out books
for the memory, the decoder without memory, StreamingLLM at the memory's K/V budget at that length
and full attention (within SmolLM2's 8,192 positions), with the K/V entries each reads; facts in
held-out wording, reconstruction and fluency; and each goal with its target, the figure and
whether it is met (``null`` where it is not measured yet).

    python launch/recipes/memory_summary.py --arm lm
"""

from __future__ import annotations

import argparse
import os
import sys

from levers_summary import summarize as levers_summary
from summary_common import load_json, summary_main

ARM = "lm"
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _long(results: str) -> dict:
    """Perplexity (segments 2..T) and K/V entries at 16K / 32K from the long runs, by method;
    StreamingLLM at 16K from its own run, whose window equals the memory's budget there."""
    out: dict = {}
    for name, methods in (("smollm2_release_long", None), ("smollm2_release_long_streaming16k", ("streaming",))):
        r = load_json(os.path.join(results, f"{name}.json"))
        if not r:
            continue
        for method, p in r["perplexity"].items():
            if methods and method not in methods:
                continue
            for n, v in p["by_length"].items():
                if method == "streaming" and methods is None and n != max(p["by_length"], key=int):
                    continue  # the 32K run's window matches the memory's budget at 32K only
                out.setdefault(method, {})[n] = {"perplexity": v["later_perplexity"], "documents": v["documents"],
                                                 "kv_entries": r["kv_entries"][method].get(n)}
    return out


def summarize(results: str, runs: str, times: str | None, arm: str = ARM) -> dict:
    levers = levers_summary(results, runs, times)
    a, base = levers["arms"].get(arm), levers.get("baselines")
    if not a or not base:
        return {}
    out: dict = {"command": "make memory-recipe", "arm": arm, "label": a["label"], "machine": levers.get("machine"),
                 "training": a.get("training"), "perplexity": {}}
    rows = {"uio": a, **base}
    for method, r in rows.items():
        out["perplexity"][method] = {n: {"perplexity": v, "kv_entries": r["kv_entries"].get(n)}
                                     for n, v in r["perplexity"].items()}
    for method, per in _long(results).items():
        out["perplexity"].setdefault(method, {}).update(per)
    out["facts"] = {m: r["facts"] for m, r in rows.items()}
    out["fluency"] = {m: r.get("fluency") for m, r in rows.items()}
    out["reconstruction"] = a.get("reconstruction")
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
    facts = (s["facts"].get("uio") or {}).get("accuracy")
    out.append({"goal": "facts in held-out wording: 90% exact at 4K, 8K and 16K, 70% at 32K", "target": 0.9,
                "value": facts, "met": None if facts is None else False if facts < 0.7 else None,
                "note": "measured at 2K tokens only so far: a figure below 70% there misses every length"})
    rouge = (s.get("reconstruction") or {}).get("rouge_l")
    out.append({"goal": "auto-encoding: ROUGE-L at least 0.9 at ratio 8", "target": 0.9, "value": rouge,
                "met": None if rouge is None else rouge >= 0.9})
    return out


def print_summary(s: dict) -> None:
    fmt = lambda v, w=8: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    lengths = sorted({n for per in s["perplexity"].values() for n in per}, key=int)
    print(f"release: the {s['arm']} arm ({s['label']})")
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
                        ("perplexity", f"smollm2_levers_{known.arm}.json", "memory-recipe"), print_summary,
                        "smollm2_release", lambda *_: None)


if __name__ == "__main__":
    raise SystemExit(main())
