"""Collect the SmolLM2 pass-key specialist recipe's results into one table, one JSON and one figure.

Reads what ``launch/recipes/smollm2_passkey_specialist.sh`` wrote (evaluation JSONs under ``--results``, the
training runs under ``--runs``, the stage times) and writes ``smollm2_memory.json`` and
``smollm2_memory.png`` next to the evaluations: (a) auto-encoding by layout and ratio against the
decoder without memory, (b) the auto-encoding training losses, (c) pass-key exact match by length.
"""

from __future__ import annotations

import json
import os

from summary_common import (
    autoencode_entry,
    load_json,
    passkey_entry,
    run_summary,
    save_figure,
    stage_times,
    subplots,
    summary_main,
)

AUTOENCODERS = {"ae_stepwise_ratio8": "stepwise, ratio 8", "ae_appended_ratio8": "appended, ratio 8",
                "ae_stepwise_ratio32": "stepwise, ratio 32", "ae_long": "best of the above, trained further"}
PASSKEY = {"passkey_short": "memory + decoder LoRA, 256..1,010-token documents"}


def summarize(results: str, runs: str, times: str | None) -> dict:
    out: dict = {"command": "make passkey-specialist-recipe"}
    out["stages_s"], total = stage_times(times)
    if total is not None:
        out["total_s"] = total
    out["training"] = {name: run_summary(os.path.join(runs, name)) for name in [*AUTOENCODERS, *PASSKEY]}
    out["autoencode"] = {}
    for run in AUTOENCODERS:
        r = load_json(os.path.join(results, f"smollm2_memory_{run}.json"))
        if r:
            out.setdefault("machine", r["machine"])
            out["autoencode"][run] = autoencode_entry(r)
    out["passkey"] = {}
    for run in PASSKEY:
        r = load_json(os.path.join(results, f"smollm2_memory_{run}.json"))
        if r:
            out.setdefault("machine", r["machine"])
            out["passkey"][run] = passkey_entry(r["passkey"])
    return out


def print_summary(s: dict) -> None:
    fmt = lambda v, w=6: f"{'-':>{w}}" if v is None else f"{v:>{w}.2f}"  # noqa: E731
    print("training runs")
    for name, label in {**AUTOENCODERS, **PASSKEY}.items():
        t = s["training"].get(name)
        if t:
            print(f"  {label:36s} {t['steps']:>5} steps  {t['seconds_per_step']:.2f} s/step  loss {t['loss_first']:.3f} "
                  f"(first {t['loss_window']}) -> {t['loss_last']:.3f} (last {t['loss_window']})")
    if s["autoencode"]:
        print("\nauto-encoding of held-out book segments (rebuilt from memory and the first token; greedy)")
        print(f"  {'variant':36s} {'BLEU-4':>7} {'ROUGE-L':>8} {'loss':>6} | no memory: {'BLEU-4':>7} {'ROUGE-L':>8} {'loss':>6}")
        for run, a in s["autoencode"].items():
            b = a["no_memory"]
            print(f"  {AUTOENCODERS[run]:36s} {a['bleu4']:>7.3f} {a['rouge_l']:>8.3f} {a['loss']:>6.3f} | "
                  f"{'':11s}{b['bleu4']:>7.3f} {b['rouge_l']:>8.3f} {b['loss']:>6.3f}")
    for run, pk in s["passkey"].items():
        print(f"\npass key ({PASSKEY[run]}; held-out books as haystack, depths {pk['depths']}, {pk['trials']} keys each)"
              " | exact match | answer loss (nats/token)")
        print(f"{'method':11s} " + " ".join(f"{n:>6}" for n in pk["lengths"]) + " | "
              + " ".join(f"{n:>6}" for n in pk["lengths"]))
        for name, r in pk["methods"].items():
            print(f"{name:11s} " + " ".join(fmt(v) for v in r["accuracy_by_length"]) + " | "
                  + " ".join(fmt(v) for v in r["answer_loss_by_length"]))


def plot(s: dict, results: str) -> str:
    fig, axes = subplots(1, 3, figsize=(16, 4.5))
    ax = axes[0]
    runs = list(s["autoencode"])
    x = range(len(runs))
    ax.bar([i - 0.3 for i in x], [s["autoencode"][r]["rouge_l"] for r in runs], width=0.2, label="ROUGE-L")
    ax.bar([i - 0.1 for i in x], [s["autoencode"][r]["bleu4"] for r in runs], width=0.2, label="BLEU-4")
    ax.bar([i + 0.1 for i in x], [s["autoencode"][r]["no_memory"]["rouge_l"] for r in runs], width=0.2,
           label="ROUGE-L, no memory")
    ax.bar([i + 0.3 for i in x], [s["autoencode"][r]["no_memory"]["bleu4"] for r in runs], width=0.2,
           label="BLEU-4, no memory")
    ax.set_xticks(list(x), [AUTOENCODERS[r].replace(", ", "\n", 1) for r in runs], fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_title("(a) auto-encoding, held-out segments")
    ax.legend(fontsize=7)
    ax = axes[1]
    for run in AUTOENCODERS:
        path = os.path.join(s.get("runs_dir", ""), run, "metrics.jsonl")
        if os.path.isfile(path):
            with open(path) as f:
                rows = [json.loads(line) for line in f if line.strip()]
            ax.plot([r["step"] for r in rows], [r["loss"] for r in rows], label=AUTOENCODERS[run], lw=0.8)
    ax.set_xlabel("step")
    ax.set_ylabel("reconstruction loss (nats/token, training)")
    ax.set_title("(b) auto-encoding training")
    if ax.lines:
        ax.legend(fontsize=7)
    ax = axes[2]
    for run, pk in s["passkey"].items():
        for name, r in pk["methods"].items():
            ax.plot(pk["lengths"], [v if v is not None else float("nan") for v in r["accuracy_by_length"]], "o-",
                    label=f"{name} ({PASSKEY[run]})" if name == "uio" else name)
    ax.set_xscale("log")
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("prompt tokens")
    ax.set_ylabel("exact match")
    ax.set_title("(c) pass key through memory")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.suptitle(f"SmolLM2-135M pass-key specialist recipe ({s.get('machine', {}).get('cpu', 'CPU')})", fontsize=10)
    return save_figure(fig, os.path.join(results, "smollm2_memory.png"))


def main(argv=None) -> int:
    def with_runs(results, runs, times):
        out = summarize(results, runs, times)
        out["runs_dir"] = runs
        return out

    return summary_main(argv, __doc__.splitlines()[0], "runs/passkey_specialist", with_runs,
                        ("autoencode", "smollm2_memory_ae_appended_ratio8.json", "passkey-specialist-recipe"), print_summary,
                        "smollm2_memory", plot)


if __name__ == "__main__":
    raise SystemExit(main())
