"""Collect the fidelity recipe's results: how well the memory holds its text, step by step.

Reads what ``launch/recipes/smollm2_fidelity.sh`` wrote: the reconstruction of held-out segments
by the levers ablation's auto-encoding warm start (``smollm2_levers_ae_warm_autoencode.json``),
by the parts trained further (``smollm2_fidelity_ae_long.json``), by a second cycle from
those (``smollm2_fidelity_ae_cycle2.json``) and by the same cycle with the encoder's LoRA on
every linear layer (``smollm2_fidelity_ae_wide.json``), with LoRA rank 32
(``smollm2_fidelity_ae_rank32.json``) and at compression ratio 4
(``smollm2_fidelity_ae_ratio4.json``; the goal counts ratio 8 only), and the training runs'
metrics (the committed milestones', else the recipe's run directory); and the readers of facts
trained from the ratio-8 and the ratio-4 parts (``smollm2_fidelity_reader[_ratio4].json``,
``..._window.json``: facts in held-out wording by depth, and perplexity, with memory and the same
reading without); and facts read from memory alone, by readers trained to (``smollm2_fidelity_near_*``:
one segment back on short held-out records; ``..._mid_*``: 1-3 segments back; ``..._far_*``: the
2K held-out records; ``..._long_*``: the long held-out records at 4K and 8K, or 4K to 32K;
``..._16k_*``: at 16K), against no memory and full attention, and in the goal's reading (sinks and
a raw window beside every memory, ``..._long_window_*``) against StreamingLLM.
Writes ``smollm2_fidelity.json`` (per stage: steps, training loss, ROUGE-L, BLEU-4, the held-out
loss with and without memory; the reader's figures; the goal of ROUGE-L 0.9 at ratio 8) and
``smollm2_fidelity.png`` (training loss by step against the held-out loss without memory;
reconstruction by stage; facts read from memory alone by how far back they lie, per reader).

    python launch/recipes/fidelity_summary.py
"""

from __future__ import annotations

import json
import os

from summary_common import (
    autoencode_entry,
    facts_by,
    facts_entry,
    later_perplexity,
    load_json,
    run_summary,
    save_figure,
    stage_times,
    subplots,
    summary_main,
)

from uio_ds.eval.facts import DEPTH_BUCKETS as DEPTHS
from uio_ds.eval.facts import depth_bucket, length_bucket

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MILESTONES = os.path.join(REPO, "release", "milestones")
FIDELITY = os.path.join(MILESTONES, "fidelity")
# stage -> (its parts' committed milestone, its evaluation file, the stage it continues or None: its
# steps are counted from the first of that lineage); a stage's run under --runs is named for it
STAGES = {
    "ae_warm": (os.path.join(MILESTONES, "levers", "ae_warm"), "smollm2_levers_ae_warm_autoencode", None),
    "ae_long": (os.path.join(FIDELITY, "ae_long"), "smollm2_fidelity_ae_long", "ae_warm"),
    "ae_cycle2": (os.path.join(FIDELITY, "ae_cycle2"), "smollm2_fidelity_ae_cycle2", "ae_long"),
    "ae_wide": (os.path.join(FIDELITY, "ae_wide"), "smollm2_fidelity_ae_wide", "ae_long"),
    "ae_rank32": (os.path.join(FIDELITY, "ae_rank32"), "smollm2_fidelity_ae_rank32", "ae_long"),
    "ae_ratio4": (os.path.join(FIDELITY, "ae_ratio4"), "smollm2_fidelity_ae_ratio4", "ae_long"),
}
GOAL_RATIO = 8
GOAL_ROUGE_L = 0.9
# the readers of facts: reader -> (its milestone, the parts it starts from, how it reads, its
# evaluation files: its reading with memory and the same reading without (memory window 0); the
# memory-alone readers' evaluations are the MEMORY_ALONE tests); a reader's run is named for it
WINDOW, ALONE = "books by distillation, fact answers by both", "fact records alone, read from memory alone"
READERS = {
    "reader": (os.path.join(FIDELITY, "reader"), "ae_long", WINDOW,
               {"memory": "smollm2_fidelity_reader", "window": "smollm2_fidelity_reader_window"}),
    "reader_ratio4": (os.path.join(FIDELITY, "reader_ratio4"), "ae_ratio4", WINDOW,
                      {"memory": "smollm2_fidelity_reader_ratio4", "window": "smollm2_fidelity_reader_ratio4_window"}),
    "reader_near": (os.path.join(FIDELITY, "reader_near"), "ae_ratio4", ALONE, {}),
    "reader_far": (os.path.join(FIDELITY, "reader_far"), "reader_near", ALONE, {}),
    "reader_mid": (os.path.join(FIDELITY, "reader_mid"), "reader_near", ALONE, {}),
    "reader_span": (os.path.join(FIDELITY, "reader_span"), "reader_mid", ALONE, {}),
    "reader_span2": (os.path.join(FIDELITY, "reader_span2"), "reader_span", ALONE, {}),
    "reader_span_exact": (os.path.join(FIDELITY, "reader_span_exact"), "reader_span",
                          ALONE + ", every memory's encoder gradient (a window of 8)", {}),
    "reader_depth": (os.path.join(FIDELITY, "reader_depth"), "reader_span2", ALONE + ", the fact at any depth", {}),
    "reader_goal": (os.path.join(FIDELITY, "reader_goal"), "reader_depth",
                    "fact records alone (2K-4K tokens, 2-4 facts asked), read in the goal's reading", {}),
    "reader_long": (os.path.join(FIDELITY, "reader_long"), "reader_depth",
                    ALONE + ", the fact at any depth of 2K-4K tokens", {}),
}
# facts in held-out wording: test -> (what it reads, how, its rows: row -> (evaluation file, method),
# the lengths compared or None: a row's figures are then those of these lengths alone, and a row
# with none of them is left out: the long records' baselines read 4K to 32K, the memory alone 4K
# and 8K, or 16K)
ALONE_READING = "memory alone (no raw window, no sinks)"
GOAL_READING = "4 sinks, 768 raw tokens and every memory (the goal's reading)"
FACT_TESTS = {
    "near": ("short held-out records (480 tokens), the fact one segment back", ALONE_READING, {
        "no memory": ("smollm2_fidelity_near_ae_ratio4", "no_memory"),
        "ae_ratio4": ("smollm2_fidelity_near_ae_ratio4", "uio"),
        "reader_near": ("smollm2_fidelity_near_reader", "uio"),
        "reader_mid": ("smollm2_fidelity_near_reader_mid", "uio"),
        "reader_span": ("smollm2_fidelity_near_reader_span", "uio"),
        "reader_span2": ("smollm2_fidelity_near_reader_span2", "uio"),
        "reader_span_exact": ("smollm2_fidelity_near_reader_span_exact", "uio"),
        "reader_depth": ("smollm2_fidelity_near_reader_depth", "uio"),
        "full attention": ("smollm2_fidelity_near_ae_ratio4", "full")}, None),
    "mid": ("held-out records of 736 and 992 tokens, the fact 1-3 segments back", ALONE_READING, {
        "no memory": ("smollm2_fidelity_mid_reader_near", "no_memory"),
        "reader_near": ("smollm2_fidelity_mid_reader_near", "uio"),
        "reader_mid": ("smollm2_fidelity_mid_reader", "uio"),
        "reader_span": ("smollm2_fidelity_mid_reader_span", "uio"),
        "reader_span2": ("smollm2_fidelity_mid_reader_span2", "uio"),
        "reader_span_exact": ("smollm2_fidelity_mid_reader_span_exact", "uio"),
        "reader_depth": ("smollm2_fidelity_mid_reader_depth", "uio"),
        "full attention": ("smollm2_fidelity_mid_reader_near", "full")}, None),
    "far": ("the 2K held-out records, every memory", ALONE_READING, {
        "no memory": ("smollm2_release_baselines", "no_memory"),
        "reader_near": ("smollm2_fidelity_far_reader_near", "uio"),
        "reader_mid": ("smollm2_fidelity_far_reader_mid", "uio"),
        "reader_far": ("smollm2_fidelity_far_reader", "uio"),
        "reader_span": ("smollm2_fidelity_far_reader_span", "uio"),
        "reader_span2": ("smollm2_fidelity_far_reader_span2", "uio"),
        "reader_span_exact": ("smollm2_fidelity_far_reader_span_exact", "uio"),
        "reader_depth": ("smollm2_fidelity_far_reader_depth", "uio"),
        "reader_long": ("smollm2_fidelity_far_reader_long", "uio"),
        "full attention": ("smollm2_release_baselines", "full")}, None),
    "long": ("the long held-out records at 4K and 8K (the fact in the first half), every memory; the "
             "baselines read 4 sinks and 768 raw tokens", ALONE_READING, {
        "no memory": ("smollm2_release_long_facts_baselines", "no_memory"),
        "StreamingLLM": ("smollm2_release_long_facts_baselines", "streaming"),
        "reader_span": ("smollm2_fidelity_long_reader_span", "uio"),
        "reader_span2": ("smollm2_fidelity_long_reader_span2", "uio"),
        "reader_span_exact": ("smollm2_fidelity_long_reader_span_exact", "uio"),
        "reader_depth": ("smollm2_fidelity_long_reader_depth", "uio"),
        "reader_long": ("smollm2_fidelity_long_reader_long", "uio"),
        "full attention": ("smollm2_release_long_facts_baselines", "full")}, ("4K", "8K")),
    "16K": ("the long held-out records at 16K, every memory; the baselines read 4 sinks and 768 raw tokens",
            ALONE_READING, {
        "no memory": ("smollm2_release_long_facts_baselines", "no_memory"),
        "StreamingLLM": ("smollm2_release_long_facts_baselines", "streaming"),
        "reader_depth": ("smollm2_fidelity_16k_reader_depth", "uio"),
        "reader_long": ("smollm2_fidelity_long_reader_long", "uio")}, ("16K",)),
    "32K": ("the long held-out records at 32K, every memory; the baselines read 4 sinks and 768 raw tokens",
            ALONE_READING, {
        "no memory": ("smollm2_release_long_facts_baselines", "no_memory"),
        "StreamingLLM": ("smollm2_release_long_facts_baselines", "streaming"),
        "reader_depth": ("smollm2_fidelity_32k_reader_depth", "uio"),
        "reader_long": ("smollm2_fidelity_long_reader_long", "uio")}, ("32K",)),
    "goal": ("the long held-out records at 4K, 8K and 16K", GOAL_READING, {
        "StreamingLLM": ("smollm2_release_long_facts_baselines", "streaming"),
        "reader_depth": ("smollm2_fidelity_long_window_reader_depth", "uio"),
        "reader_goal": ("smollm2_fidelity_long_window_reader_goal", "uio"),
        "full attention": ("smollm2_release_long_facts_baselines", "full")}, ("4K", "8K", "16K")),
}
TEST_LABELS = {"near": "1 back\n(480 tokens)", "mid": "1-3 back\n(736, 992)", "far": "0-7 back\n(2K)",
               "long": "8-31 back\n(4K, 8K)", "16K": "32-63 back\n(16K)",
               "32K": "64-127 back\n(32K)", "goal": "4K-16K with\n4 sinks and\n768 raw tokens"}


def _metrics_dir(milestone: str, run: str) -> str | None:
    """Where a stage's metrics.jsonl is: its committed milestone, else its run directory."""
    for folder in (milestone, run):
        if os.path.isfile(os.path.join(folder, "metrics.jsonl")):
            # named from the repository where it lies there: the summary names no machine's paths
            inside = os.path.abspath(folder).startswith(REPO + os.sep)
            return os.path.relpath(os.path.abspath(folder), REPO) if inside else os.path.abspath(folder)
    return None


def _by_depth(report: dict, method: str) -> dict:
    """A method's exact answers by the depth of the fact (thirds of the prompt) in a facts report."""
    cells = report["facts"]["methods"][method]["cells"]
    return {d: cells[f"depth:{d}"]["accuracy"] for d in DEPTHS if f"depth:{d}" in cells}


def _of_lengths(report: dict, method: str, lengths) -> tuple[dict, dict]:
    """A method's exact answers by depth and its figures by segments back over the records of
    ``lengths`` alone, from the answers its report lists record by record (a report over more
    lengths has these cells over all of them). By depth only where the answers carry the fact's
    depth, and the answer loss only where they carry it (reports since both were listed)."""
    said = [s for s in report["facts"]["methods"][method].get("said", []) if length_bucket(s["tokens"]) in lengths]

    def figures(rows: list) -> dict:
        losses = [s.get("answer_loss") for s in rows]
        return {"accuracy": sum(s["right"] for s in rows) / len(rows),
                "answer_loss": None if None in losses else sum(losses) / len(rows),
                "key_match": sum(s["key_match"] for s in rows) / len(rows), "n": len(rows)}

    def grouped(key) -> dict:
        groups: dict = {}
        for s in said:
            groups.setdefault(key(s), []).append(s)
        return groups

    backs = grouped(lambda s: s.get("back"))
    backs.pop(None, None)  # an answer whose prompt did not hold its key
    depths = grouped(lambda s: depth_bucket(s["depth"])) if all("depth" in s for s in said) else {}
    return ({d: figures(depths[d])["accuracy"] for d in DEPTHS if d in depths},
            {str(b): figures(rows) for b, rows in sorted(backs.items())})


def _pooled(cells) -> dict:
    """The figures of several cells taken together (means weighted by their records)."""
    cells = list(cells)
    n = sum(c["n"] for c in cells)
    pooled = {"n": n}
    for key in ("accuracy", "answer_loss", "key_match"):
        values = [(c.get(key), c["n"]) for c in cells]
        pooled[key] = None if any(v is None for v, _ in values) else sum(v * k for v, k in values) / n
    return pooled


def summarize(results: str, runs: str, times: str | None) -> dict:
    out: dict = {"command": "make fidelity-recipe", "stages": {}}
    out["stages_s"], total = stage_times(times, (load_json(os.path.join(results, "smollm2_fidelity.json")) or {})
                                         .get("stages_s"))
    if total is not None:
        out["total_s"] = total
    for name, (milestone, evaluation, parent) in STAGES.items():
        r = load_json(os.path.join(results, f"{evaluation}.json"))
        metrics = _metrics_dir(milestone, os.path.join(runs, name))
        training = run_summary(metrics) if metrics else None
        if r is None and training is None:
            continue
        if r:
            out.setdefault("machine", r["machine"])
        before = out["stages"].get(parent)
        steps_before = before["steps_before"] + (before["training"] or {}).get("steps", 0) if before else 0
        out["stages"][name] = {"training": training, "metrics": metrics, "steps_before": steps_before,
                               "from": parent, "reconstruction": autoencode_entry(r) if r else None,
                               "cpu": r["machine"]["cpu"] if r else None}
    out["readers"] = {}
    for name, (milestone, parent, reading, evaluations) in READERS.items():
        metrics = _metrics_dir(milestone, os.path.join(runs, name))
        reader = {"from": parent, "reading": reading,
                  "training": {"metrics": metrics, **run_summary(metrics)} if metrics else None}
        for row, evaluation in evaluations.items():
            r = load_json(os.path.join(results, f"{evaluation}.json"))
            if r:
                reader[row] = {"facts": facts_entry(r, "uio"), "perplexity": later_perplexity(r, "uio"),
                               "facts_by_depth": _by_depth(r, "uio"),
                               **{k: r["config"][k] for k in ("memory_window", "sink_tokens", "recent_tokens")},
                               "cpu": r["machine"]["cpu"]}
        if reader["training"] or any(row in reader for row in evaluations):
            out["readers"][name] = reader
    out["fact_tests"] = {}
    for test, (what, reading, rows, lengths) in FACT_TESTS.items():
        found = {}
        for row, (evaluation, method) in rows.items():
            r = load_json(os.path.join(results, f"{evaluation}.json"))
            if not (r and method in r.get("facts", {}).get("methods", {})):
                continue
            entry = {**facts_entry(r, method), "cpu": r["machine"]["cpu"], "by_depth": _by_depth(r, method),
                     "by_segments_back": dict(sorted(facts_by(r, method, "back").items(), key=lambda c: int(c[0])))}
            if lengths:
                by_length = facts_by(r, method, "length")
                entry["by_length"] = {n: by_length[n] for n in lengths if n in by_length}
                if not entry["by_length"]:
                    continue
                if set(by_length) - set(lengths):  # the report's own breakdowns span other lengths too
                    entry["by_depth"], entry["by_segments_back"] = _of_lengths(r, method, lengths)
                pooled = _pooled(entry["by_length"].values())
                if pooled["key_match"] is None and pooled["n"] == entry["n"]:  # an old report's, from its answers
                    pooled["key_match"] = entry["key_match"]
                entry.update(pooled)
            found[row] = entry
        if any(row in found for row in READERS):
            out["fact_tests"][test] = {"reads": what, "reading": reading, "rows": found}
    best = max((s["reconstruction"]["rouge_l"] for s in out["stages"].values()
                if s["reconstruction"] and s["reconstruction"]["ratio"] == GOAL_RATIO), default=None)
    out["goal"] = {"goal": f"auto-encoding: ROUGE-L at least {GOAL_ROUGE_L} at ratio {GOAL_RATIO}", "target": GOAL_ROUGE_L,
                   "value": best, "met": None if best is None else best >= GOAL_ROUGE_L}
    return out


def print_summary(s: dict) -> None:
    print("auto-encoding of 256-token held-out book segments (rebuilt greedily from the memory and the first "
          "token; steps counted from the first of the stage's lineage)")
    print(f"  {'stage':9s} {'ratio':>5} {'steps':>6} {'train loss':>17} | {'ROUGE-L':>7} {'BLEU-4':>6} {'loss':>6} | "
          f"no memory: {'ROUGE-L':>7} {'loss':>6}")
    for name, st in s["stages"].items():
        t, a = st["training"], st["reconstruction"]
        train = f"{t['loss_first']:.2f} -> {t['loss_last']:.2f}" if t else "-"
        steps = f"{st['steps_before'] + t['steps']:>6}" if t else f"{'-':>6}"
        recon = (f"{a['rouge_l']:>7.3f} {a['bleu4']:>6.3f} {a['loss']:>6.3f} | {'':11s}{a['no_memory']['rouge_l']:>7.3f} "
                 f"{a['no_memory']['loss']:>6.3f}") if a else "not evaluated"
        ratio = f"{a['ratio']:>5}" if a else f"{'-':>5}"
        print(f"  {name:9s} {ratio} {steps} {train:>17} | {recon}" + (f"   (from {st['from']})" if st["from"] else ""))
    cpus = sorted({st["cpu"] for st in s["stages"].values() if st["cpu"]})
    if len(cpus) > 1:
        print("  reconstructions measured on " + ", ".join(
            f"{cpu} ({', '.join(n for n, st in s['stages'].items() if st['cpu'] == cpu)})" for cpu in cpus))
    for name, reader in s["readers"].items():
        t = reader["training"]
        if t:
            print(f"{name}: {t['steps']} steps from {reader['from']}, {t['seconds_per_step']:.1f} s a step, loss "
                  f"{t['loss_first']:.3f} -> {t['loss_last']:.3f} ({reader['reading']})")
        for row in READERS[name][3]:  # its evaluations: with memory, and the same reading without
            if row in reader:
                r = reader[row]
                f, ppl = r["facts"], r["perplexity"]
                depth = " / ".join(f"{r['facts_by_depth'].get(d, float('nan')):.2f}" for d in DEPTHS)
                print(f"  {row:6s} ({r['memory_window']} memories, {r['sink_tokens']} sinks, {r['recent_tokens']} raw) "
                      f"facts at 2K {f['accuracy']:.2f} "
                      f"(answer loss {f['answer_loss']:.2f}; by depth of the fact {depth})  "
                      + "  ".join(f"@{n} {v:.2f}" for n, v in ppl.items()))
    for test in s.get("fact_tests", {}).values():
        print(f"facts read from {test['reading']}: {test['reads']}; exact answers, how much of the "
              "key the answer spells (key match), the answer's loss")
        for row, f in test["rows"].items():
            depth = " / ".join(f"{f['by_depth'][d]:.2f}" if d in f["by_depth"] else "-" for d in DEPTHS)
            print(f"  {row:17s} exact {f['accuracy']:.2f}  key match {_match(f['key_match'])}  answer loss "
                  f"{f['answer_loss']:.2f}  by depth {depth}  (n={f['n']}, {f['cpu']})"
                  + "".join(f"  {n}: {v['accuracy']:.2f} / {_match(v['key_match'])} ({v['answer_loss']:.2f}, n={v['n']})"
                            for n, v in f.get("by_length", {}).items()))
            if f["by_segments_back"]:
                print(f"  {'':17s} by segments back: " + "  ".join(
                    f"{n}: {v['accuracy']:.2f} / {_match(v['key_match'])} (n={v['n']})" for n, v in f["by_segments_back"].items()))
    g = s["goal"]
    state = {True: "met", False: "MISSED", None: "not measured"}[g["met"]]
    print(f"goal [{state}] {g['goal']}: {g['value'] if g['value'] is None else round(g['value'], 3)}")


def _match(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def plot(s: dict, results: str) -> str | None:
    if not s["stages"]:
        return None
    fig, axes = subplots(1, 3, figsize=(21, 4.8), gridspec_kw={"width_ratios": [1, 1, 1.4]})
    ax = axes[0]
    for i, (name, st) in enumerate(s["stages"].items()):
        if st["metrics"]:
            with open(os.path.join(REPO, st["metrics"], "metrics.jsonl")) as f:  # REPO: unless absolute
                rows = [json.loads(line) for line in f if line.strip()]
            rows = [r for r in rows if "loss" in r and not r.get("skipped")]
            ax.plot([st["steps_before"] + r["step"] for r in rows], [r["loss"] for r in rows], lw=0.7, color=f"C{i}",
                    alpha=0.8, label=f"{name}: training loss (on the copy)")
        a, t = st["reconstruction"], st["training"]
        if a and t:
            ax.plot([st["steps_before"] + t["steps"]], [a["loss"]], "o", color=f"C{i}",
                    label=f"{name}: held-out loss with memory")
            ax.axhline(a["no_memory"]["loss"], color="k", ls=":", lw=1,
                       label="held-out loss without memory" if i == 0 else None)
    ax.set_xlabel("step (8 documents of [x ; x], 256 tokens each copy)")
    ax.set_ylabel("nats/token of the copy")
    ax.set_title("Auto-encoding: loss of the copy given the memory")
    ax.legend(fontsize=7)
    ax = axes[1]
    names = [n for n, st in s["stages"].items() if st["reconstruction"]]
    x = range(len(names))
    recon = [s["stages"][n]["reconstruction"] for n in names]
    ax.bar([i - 0.2 for i in x], [a["rouge_l"] for a in recon], width=0.4, label="ROUGE-L with memory")
    ax.bar([i + 0.2 for i in x], [a["no_memory"]["rouge_l"] for a in recon], width=0.4, label="ROUGE-L without")
    ax.axhline(GOAL_ROUGE_L, color="k", ls="--", lw=1, label=f"goal (ratio {GOAL_RATIO})")
    ax.set_xticks(list(x), [f"{n}\nratio {a['ratio']}\n{st['steps_before'] + (st['training'] or {}).get('steps', 0)} steps"
                            for n, a, st in zip(names, recon, (s["stages"][n] for n in names))], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("Reconstruction of 32 held-out segments")
    ax.legend(fontsize=7)
    _plot_facts(axes[2], s.get("fact_tests", {}))
    cpus = sorted({st["cpu"] for st in s["stages"].values() if st["cpu"]}) or ["CPU"]
    fig.suptitle(f"SmolLM2-135M fidelity recipe ({' / '.join(cpus)})", fontsize=10)
    return save_figure(fig, os.path.join(results, "smollm2_fidelity.png"))


def _plot_facts(ax, tests: dict) -> None:
    """Facts per test (how far back the fact lies, and how it is read): exact answers, a bar per
    reader with its key match as a dot, full attention's exact answers as a dashed line."""
    readers = [r for r in READERS if any(r in t["rows"] for t in tests.values())]
    if not readers:
        ax.set_axis_off()
        return
    width = 0.8 / len(readers)
    rows = [t["rows"] for t in tests.values()]
    for j, reader in enumerate(readers):
        xs = [i for i, r in enumerate(rows) if reader in r]
        at = [i - 0.4 + width * (j + 0.5) for i in xs]
        ax.bar(at, [rows[i][reader]["accuracy"] for i in xs], width=width, color=f"C{j}", label=reader)
        matched = [(x, rows[i][reader]["key_match"]) for x, i in zip(at, xs) if rows[i][reader]["key_match"] is not None]
        if matched:
            ax.plot(*zip(*matched), "o", ms=4, mfc=f"C{j}", mec="k", ls="none")
    ax.plot([], [], "o", ms=4, mfc="w", mec="k", ls="none", label="key match (how much of the key the answer spells)")
    full = [(i, t["rows"]["full attention"]["accuracy"]) for i, t in enumerate(tests.values()) if "full attention" in t["rows"]]
    for k, (i, accuracy) in enumerate(full):
        ax.hlines(accuracy, i - 0.45, i + 0.45, colors="k", linestyles="--", label="full attention" if k == 0 else None)
    ax.set_xticks(range(len(tests)), [TEST_LABELS.get(name, name) for name in tests], fontsize=8)
    ax.set_ylim(0, 1.3)  # the legend above the dots
    ax.set_yticks([0, 0.2, 0.4, 0.6, 0.8, 1.0])
    ax.set_ylabel("exact answers")
    ax.set_title("Facts in held-out wording, read from memory alone unless named (segments back)")
    ax.legend(fontsize=7, ncol=3, loc="upper center")


def main(argv=None) -> int:
    return summary_main(argv, __doc__.splitlines()[0], "runs/fidelity", summarize,
                        ("stages", "smollm2_levers_ae_warm_autoencode.json", "fidelity-recipe"), print_summary,
                        "smollm2_fidelity", plot)


if __name__ == "__main__":
    raise SystemExit(main())
