"""What the recipes' summaries share: reading evaluation JSONs, training runs and stage times."""

from __future__ import annotations

import json
import os

from uio_ds.eval.facts import key_match


def load_json(path: str) -> dict | None:
    """The JSON object at ``path``, or None when the file does not exist (a stage not run)."""
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def stage_times(path: str | None, earlier: dict | None = None) -> tuple[dict, int | None]:
    """Stage name -> seconds from a recipe's times.tsv, and their total (None without either).

    ``earlier``: the stage times of the summary written before (a recipe continued on another
    machine keeps the stages it ran there); a stage the file names again takes the file's time."""
    stages = dict(earlier or {})
    if not path or not os.path.isfile(path):
        return stages, sum(stages.values()) if stages else None
    with open(path) as f:
        for line in f:
            name, seconds = line.rstrip("\n").split("\t")
            stages[name] = int(seconds)
    return stages, sum(stages.values())


def run_summary(run: str) -> dict | None:
    """First/last training losses and time per step of one training run."""
    path = os.path.join(run, "metrics.jsonl")
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    # a run resumed by code older than the cut-back of metrics.jsonl may hold a step twice: the
    # later record is the step that counts (its checkpoint went on from there)
    rows = list({r["step"]: r for r in rows if "step" in r}.values()) if all("step" in r for r in rows) else rows
    rows = [r for r in sorted(rows, key=lambda r: r.get("step", 0)) if "loss" in r and not r.get("skipped")]
    k = max(1, min(10, len(rows) // 4))
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return {
        "steps": len(rows),
        "loss_first": round(mean([r["loss"] for r in rows[:k]]), 4),
        "loss_last": round(mean([r["loss"] for r in rows[-k:]]), 4),
        "loss_window": k,
        "seconds_per_step": round(mean([r["seconds"] for r in rows]), 2),
        "tokens_per_step": round(mean([r["tokens"] for r in rows]), 1),
    }


def perplexity_entry(r: dict) -> dict:
    """One method's figures from an evaluation report's perplexity section."""
    return {"overall": r["perplexity"], "segments_2_to_T": r["later_perplexity"],
            "by_length_segments_2_to_T": {n: v["later_perplexity"] for n, v in r["by_length"].items()},
            "documents_by_length": {n: v["documents"] for n, v in r["by_length"].items()},
            "by_segment": r["by_segment"]}


def later_perplexity(report: dict, method: str) -> dict:
    """Length -> perplexity of segments 2..T for one method of an evaluation report."""
    return {n: v["later_perplexity"] for n, v in report["perplexity"][method]["by_length"].items()}


def facts_entry(report: dict, method: str) -> dict | None:
    """One method's fact retrieval over every cell (accuracy, answer loss, records), or None
    where the report has no facts task."""
    if "facts" not in report:
        return None
    m = report["facts"]["methods"][method]
    cells = m["cells"]
    # reports from before the key match was scored have it from their record list (the first
    # SAID_CHARS characters of each answer's first line, where the key stands when it is there)
    match = cells["all"].get("key_match")
    if match is None and m.get("said"):
        match = sum(key_match(s["key"], s["said"]) for s in m["said"]) / len(m["said"])
    # the digest of the records (reports older than it have none): rows compare only on the same records
    return {"accuracy": cells["all"]["accuracy"], "answer_loss": cells["all"]["answer_loss"], "key_match": match,
            "n": cells["all"]["n"], "records_sha1": report["facts"].get("records_sha1")}


def facts_by(report: dict | None, method: str, kind: str) -> dict:
    """One method's fact retrieval per cell of one kind (``length``: "4K", "8K", ...; ``back``:
    segments before the question's, "0", "1", ...), empty where the report is missing, did not run
    the method or has no such cells."""
    m = (report or {}).get("facts", {}).get("methods", {}).get(method)
    if m is None:
        return {}
    return {cell.split(":", 1)[1]: {"accuracy": v["accuracy"], "answer_loss": v["answer_loss"],
                                    "key_match": v.get("key_match"), "n": v["n"]}
            for cell, v in m["cells"].items() if cell.startswith(f"{kind}:")}


def autoencode_entry(report: dict) -> dict:
    """Reconstruction figures of an evaluation report's autoencode task, with the parts' layout and
    ratio: ROUGE-L, BLEU-4 and the teacher-forced loss with memory and without (``no_memory``), and
    where the report has them (evaluations since they were added) the share of first choices
    under teacher forcing and the tokens rebuilt right before the first error."""
    a = report["autoencode"]
    return {"layout": report["config"]["memory_layout"], "ratio": report["config"]["compression_ratio"],
            **{k: a[k] for k in ("memory_tokens", "segment_length", "segments", "bleu4", "rouge_l", "loss",
                                 "no_memory", "example")},
            **{k: a[k] for k in ("token_accuracy", "token_accuracy_start", "correct_prefix", "given") if k in a}}


def fluency_entry(report: dict | None, method: str) -> dict | None:
    """One method's fluency (the judge's perplexity of its continuation, distinct 3-grams), or
    None where the report (a fluency run) is missing or did not run the method."""
    m = (report or {}).get("fluency", {}).get("methods", {}).get(method)
    if m is None:
        return None
    return {k: m[k] for k in ("judge_perplexity", "distinct_3")}


def add_ratio_to_full(fluency: list[dict | None], full: dict | None) -> None:
    """Set each fluency entry's ``ratio_to_full``: the judge's perplexity of its continuation as a
    multiple of its perplexity of full attention's own (``full``; nothing without it)."""
    for f in fluency:
        if f and full:
            f["ratio_to_full"] = f["judge_perplexity"] / full["judge_perplexity"]


def passkey_entry(p: dict) -> dict:
    """An evaluation report's passkey section, per method: accuracy and answer loss by length
    (means over depths; None where the method cannot read that length)."""
    out = {"lengths": p["lengths"], "depths": p["depths"], "trials": p["trials"], "methods": {}}
    for name, r in p["methods"].items():
        by_len = [None if None in row else sum(row) / len(row) for row in r["accuracy"]]
        loss = [None if None in row else sum(row) / len(row) for row in r["answer_loss"]]
        out["methods"][name] = {"accuracy_by_length": by_len, "mean": r["mean"], "answer_loss_by_length": loss,
                                "mean_answer_loss": r["mean_answer_loss"]}
    return out


def summary_main(argv, description: str, default_runs: str, summarize, required: tuple[str, str, str],
                 print_summary, name: str, plot) -> int:
    """The command line both recipe summaries share: read ``--results`` / ``--runs`` / ``--times``,
    refuse when ``required`` = (key of the summary, file it comes from, make target) is missing,
    print the tables, write NAME.json and the figure ``plot(summary, results_dir)`` returns (or None)."""
    import argparse
    import sys

    p = argparse.ArgumentParser(description=description)
    p.add_argument("--results", default="benchmarks/results")
    p.add_argument("--runs", default=default_runs)
    p.add_argument("--times", default=None, help="the recipe's times.tsv (stage name, seconds)")
    args = p.parse_args(argv)
    s = summarize(args.results, args.runs, args.times)
    key, source, target = required
    if not s.get(key):
        print(f"error: {args.results}/{source} is missing: run `make {target}` first", file=sys.stderr)
        return 1
    print_summary(s)
    path = os.path.join(args.results, f"{name}.json")
    with open(path, "w") as f:
        json.dump(s, f, indent=2)
    png = plot(s, args.results)
    print(f"\nwrote {path}" + (f", {png}" if png else ""))
    return 0


def subplots(*args, **kwargs):
    """``plt.subplots`` drawn off-screen (the Agg backend): a summary runs without a display."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt.subplots(*args, **kwargs)


def save_figure(fig, path: str) -> str:
    """Lay out, write (110 dpi) and close ``fig``; returns ``path``."""
    import matplotlib.pyplot as plt

    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
