"""Gradient bias of unbiased incremental TBPTT(S), with and without the compensation factor
(the paper's Table 4), on a tiny Llama reading generated English text.

For every mini-batch (one document of ``--segments`` segments and one reservoir seed) the
gradient of ``unbiased(S)`` is compared with the full-BPTT gradient of the same document:

* r = |g_unbiased| / |g_full| (L2 norms) and cos(g_unbiased, g_full), mean and variance
  of r and mean cosine per (S, factor);
* the estimator averaged over the seeds of each document: |mean g_unbiased| / |g_full|.
  E[g_unbiased] = g_full with the factor, but E|g| >= |E g| (Jensen), so it is this
  quantity, not the mean of r, that should approach 1; printed as measured over the seeds
  and with the finite-sample excess (trace of the covariance / seeds) removed, next to the
  projection <g_unbiased, g_full> / |g_full|^2, whose mean is exactly 1 with the factor.

Every quantity is computed twice: over all trainable parameters ("all") and over the
encoder side only ("encoder": encoder LoRA + <mem> embeddings). The transfer-head LoRA
gradient is exact in every strategy, so it dilutes the all-parameter numbers.
S = "inf" is S >= T-1 (no memory ever evicted, factor 1): r must be 1 to rounding.

    python benchmarks/gradient_bias.py [--documents 8] [--seeds 8] [--segments 14]
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time

import torch
from common import RESULTS_DIR, flat, perturb_trainable, print_table, summary_line, write_results
from transformers import AutoTokenizer

from uio_ds.algo import Full, Unbiased
from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.formats import synthetic_text
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.tiny import build_tiny_model

# Table 4 of the paper: mean r per S, with and without the compensation factor.
PAPER = {True: {"1": 0.994, "4": 0.980, "8": 1.024, "inf": 0.999},
         False: {"1": 0.676, "4": 0.818, "8": 0.935, "inf": 1.000}}
SCOPES = ("all", "encoder")
INF_TOLERANCE = 1e-5


def encoder_mask(model: UIOMemoryModel) -> torch.Tensor:
    parts = []
    for name, p in model.named_trainable_parameters():
        encoder_side = ".encoder." in name or name == "mem_embeddings"
        if encoder_side == (".transfer." in name):
            raise SystemExit(f"trainable parameter {name!r} is neither encoder side nor transfer head")
        parts.append(torch.full((p.numel(),), encoder_side, dtype=torch.bool))
    return torch.cat(parts)


def tokenized_documents(model_dir: str, count: int, length: int) -> list[torch.Tensor]:
    tok = AutoTokenizer.from_pretrained(model_dir)
    sentences = max(64, count * length // 15)
    while True:
        # seed 1: the tokenizer was trained on seed 0's text
        ids = tok(synthetic_text(sentences, seed=1), return_tensors="pt")["input_ids"][0]
        if ids.numel() >= count * length:
            return [ids[i * length:(i + 1) * length].unsqueeze(0) for i in range(count)]
        sentences *= 2


class Accumulator:
    """Per-run ratios, and per-document sums of the estimator for the norm of its mean."""

    def __init__(self, full: list[torch.Tensor], mask: torch.Tensor):
        self.full, self.mask = full, mask
        self.runs = {s: {"r": [], "cos": [], "proj": []} for s in SCOPES}
        self.sums = [None] * len(full)
        self.sq_norms = [{s: 0.0 for s in SCOPES} for _ in full]
        self.counts = [0] * len(full)
        self.max_rel_err = {s: 0.0 for s in SCOPES}

    def view(self, v: torch.Tensor, scope: str) -> torch.Tensor:
        return v if scope == "all" else v[self.mask]

    def add(self, doc: int, g: torch.Tensor) -> None:
        for scope in SCOPES:
            gu, gf = self.view(g, scope), self.view(self.full[doc], scope)
            nf = gf.norm().item()
            self.runs[scope]["r"].append(gu.norm().item() / nf)
            self.runs[scope]["cos"].append((gu @ gf).item() / (gu.norm().item() * nf))
            self.runs[scope]["proj"].append((gu @ gf).item() / nf**2)
            self.max_rel_err[scope] = max(self.max_rel_err[scope], ((gu - gf).norm() / nf).item())
            self.sq_norms[doc][scope] += gu.norm().item() ** 2
        self.sums[doc] = g.clone() if self.sums[doc] is None else self.sums[doc] + g
        self.counts[doc] += 1

    def summary(self) -> dict:
        out = {}
        for scope in SCOPES:
            runs = {k: torch.tensor(v, dtype=torch.float64) for k, v in self.runs[scope].items()}
            n = len(runs["r"])
            measured, debiased = [], []
            for doc, total in enumerate(self.sums):
                k = self.counts[doc]
                mean = self.view(total / k, scope)
                nf = self.view(self.full[doc], scope).norm().item()
                measured.append(mean.norm().item() / nf)
                if k > 1:
                    # |E g|^2 = |mean|^2 - tr(Cov)/k, tr(Cov) estimated with k-1 degrees of freedom
                    trace = (self.sq_norms[doc][scope] - k * mean.norm().item() ** 2) / (k - 1)
                    sq = mean.norm().item() ** 2 - trace / k
                    debiased.append(math.sqrt(sq) / nf if sq > 0 else None)
            out[scope] = {
                "runs": n,
                "r_mean": runs["r"].mean().item(),
                "r_var": runs["r"].var().item() if n > 1 else 0.0,
                "r_std": runs["r"].std().item() if n > 1 else 0.0,
                "cos_mean": runs["cos"].mean().item(),
                "cos_min": runs["cos"].min().item(),
                "mean_estimator_norm_ratio": sum(measured) / len(measured),
                # None where no document had two draws, or the excess exceeded the squared norm
                "mean_estimator_norm_ratio_debiased": (sum(debiased) / len(debiased)
                                                       if debiased and None not in debiased else None),
                "projection_mean": runs["proj"].mean().item(),
                "projection_se": runs["proj"].std().item() / math.sqrt(n) if n > 1 else 0.0,
                "max_rel_err_vs_full": self.max_rel_err[scope],
            }
        return out


def fmt(x, digits=3) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def plot(rows: list[dict], labels: list[str], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 5.6))
    x = list(range(len(labels)))
    styles = {True: ("tab:blue", "with factor"), False: ("tab:orange", "without factor")}
    for ax, scope, heading in ((axes[0], "encoder", "encoder side (encoder LoRA + <mem>)"),
                               (axes[1], "all", "all trainable parameters")):
        for factor, (color, name) in styles.items():
            sel = [r for r in rows if r["factor"] == factor]
            offset = -0.06 if factor else 0.06
            xs = [i + offset for i in x]
            ax.errorbar(xs, [r[scope]["r_mean"] for r in sel], yerr=[r[scope]["r_std"] for r in sel],
                        color=color, marker="o", capsize=4, label=f"r = |g|/|g_full|, {name} (mean ± std)")
            ax.plot(xs, [r[scope]["mean_estimator_norm_ratio_debiased"] or float("nan") for r in sel],
                    color=color, marker="s", linestyle="--", label=f"|mean g|/|g_full| (debiased), {name}")
            ax.plot(x, [PAPER[factor][r["S"]] for r in sel], color=color, marker="*", markersize=14,
                    linestyle="none", markeredgecolor="black", label=f"paper, {name}")
        ax.axhline(1.0, color="gray", linewidth=0.8)
        ax.set_xticks(x, labels)
        ax.set_xlabel("reservoir size S")
        ax.set_ylabel("gradient norm ratio")
        ax.set_title(f"r vs S: {heading}")
        ax.grid(alpha=0.3)
    handles, names = axes[0].get_legend_handles_labels()
    # matplotlib lists error bars after plain lines; put r first, then the mean estimator, then the paper
    order = sorted(range(len(names)), key=lambda i: (not names[i].startswith("r ="), "paper" in names[i], i))
    handles, names = [handles[i] for i in order], [names[i] for i in order]
    ax = axes[2]
    for factor, (color, name) in styles.items():
        sel = [r for r in rows if r["factor"] == factor]
        for scope, ls in (("encoder", "-"), ("all", ":")):
            ax.plot(x, [r[scope]["cos_mean"] for r in sel], color=color, marker="o", linestyle=ls,
                    label=f"{name}, {scope}")
    ax.set_xticks(x, labels)
    ax.set_xlabel("reservoir size S")
    ax.set_ylabel("mean cos(g_unbiased, g_full)")
    ax.set_title("cosine similarity to the full gradient")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=9, frameon=False)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0.13, 1, 1))
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--arch", default="llama", choices=["llama", "mistral", "qwen2"])
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=3)
    p.add_argument("--segment-length", type=int, default=32)
    p.add_argument("--compression-ratio", type=int, default=4)
    p.add_argument("--lora-rank", type=int, default=8)
    p.add_argument("--segments", type=int, default=14, help="segments per document (T)")
    p.add_argument("--documents", type=int, default=8)
    p.add_argument("--seeds", type=int, default=8, help="reservoir seeds per document")
    p.add_argument("--windows", type=int, nargs="+", default=[1, 4, 8])
    p.add_argument("--perturb", type=float, default=0.1, help="std of the perturbation of the trainable parts")
    p.add_argument("--name", default="gradient_bias")
    args = p.parse_args()
    if max(args.windows) >= args.segments - 1:
        raise SystemExit(f"--windows must stay below T-1={args.segments - 1}; S=inf is always added")
    if args.seeds < 2:
        raise SystemExit("--seeds must be >= 2: the norm of the mean estimator needs at least two draws")

    started = time.perf_counter()
    l, T = args.segment_length, args.segments
    with tempfile.TemporaryDirectory() as model_dir:
        build_tiny_model(args.arch, model_dir, seed=0, hidden_size=args.hidden, intermediate_size=2 * args.hidden,
                         num_hidden_layers=args.layers, num_attention_heads=4, num_key_value_heads=2)
        docs = tokenized_documents(model_dir, args.documents, T * l)
        lora = dict(rank=args.lora_rank, alpha=2.0 * args.lora_rank)
        config = UIOConfig(segment_length=l, compression_ratio=args.compression_ratio,
                           encoder_lora=LoRAConfig(**lora, target_modules=("q_proj", "v_proj")),
                           transfer_lora=LoRAConfig(**lora, target_modules=("k_proj", "v_proj")),
                           dtype="float32")
        model = UIOMemoryModel.from_pretrained(model_dir, config).eval()
    perturb_trainable(model, seed=0, scale=args.perturb)
    params = model.trainable_parameters()
    mask = encoder_mask(model)

    full = [flat(Full().run(model, d).grads, params) for d in docs]
    encoder_share = sum((g[mask].norm() / g.norm()).item() for g in full) / len(full)

    inf_window = T - 1  # T-1 memories: a reservoir this large never evicts and its factor is 1
    settings = [(str(S), S, args.seeds) for S in args.windows] + [("inf", inf_window, 1)]
    rows = []
    for label, S, seeds in settings:
        for factor in (True, False):
            acc = Accumulator(full, mask)
            t0 = time.perf_counter()
            print(f"S={label}, {'with' if factor else 'without'} factor: {len(docs) * seeds} runs", file=sys.stderr)
            for d, doc in enumerate(docs):
                for k in range(seeds):
                    # the same seed with and without the factor: the same windows, paired runs
                    res = Unbiased(S, seed=1000 * d + k, compensate=factor).run(model, doc)
                    acc.add(d, flat(res.grads, params))
            rows.append({"S": label, "window": S, "factor": factor, "seeds_per_document": seeds,
                         "seconds": round(time.perf_counter() - t0, 2), **acc.summary()})

    table = []
    for r in rows:
        e, a = r["encoder"], r["all"]
        table.append({
            "S": r["S"], "factor": "with" if r["factor"] else "without", "runs": a["runs"],
            "r_all": fmt(a["r_mean"]), "var_all": fmt(a["r_var"], 4), "cos_all": fmt(a["cos_mean"]),
            "r_enc": fmt(e["r_mean"]), "var_enc": fmt(e["r_var"], 4), "cos_enc": fmt(e["cos_mean"]),
            "|mean g|_enc": fmt(e["mean_estimator_norm_ratio"]),
            "debiased": fmt(e["mean_estimator_norm_ratio_debiased"]),
            "proj_enc": f"{e['projection_mean']:.3f}±{e['projection_se']:.3f}",
            "paper_r": fmt(PAPER[r["factor"]][r["S"]]),
        })
    print(f"unbiased(S) vs full BPTT: {args.documents} documents of T={T} segments x l={l} tokens, "
          f"{args.seeds} reservoir seeds each (S=inf: 1 run per document)")
    print("r = |g|/|g_full| (mean, variance over runs); cos = mean cosine; *_all over all trainable parameters, "
          "*_enc over the encoder side (encoder LoRA + <mem>);")
    print("|mean g|_enc = |seed-mean of g| / |g_full| per document (raw, and debiased = minus the tr(Cov)/seeds "
          "excess); proj_enc = <g, g_full>/|g_full|^2 ± s.e.")
    print_table(table, list(table[0]))
    inf_err = max(r[s]["max_rel_err_vs_full"] for r in rows if r["S"] == "inf" for s in SCOPES)
    inf_ok = inf_err <= INF_TOLERANCE
    print(f"S=inf sanity check: max |g_unbiased - g_full| / |g_full| = {inf_err:.2e} "
          f"({'OK' if inf_ok else 'FAILED'}, tolerance {INF_TOLERANCE:g})")
    print(f"encoder side holds on average {encoder_share:.3f} of |g_full| (the rest is the exact transfer head)")

    elapsed = time.perf_counter() - started
    os.makedirs(RESULTS_DIR, exist_ok=True)
    png = os.path.join(RESULTS_DIR, f"{args.name}.png")
    labels = [r["S"] if r["S"] != "inf" else f"inf (S={inf_window})" for r in rows if r["factor"]]
    plot(rows, labels, png, f"Unbiased incremental TBPTT(S) vs full BPTT: tiny {args.arch} "
         f"(hidden {args.hidden}, {args.layers} layers), T={T} segments of l={l}, "
         f"{args.documents} docs x {args.seeds} seeds; stars: paper's Table 4")
    path = write_results(args.name, {
        "description": "Paper Table 4: r = |g_unbiased| / |g_full| per mini-batch (one document, one reservoir "
                       "seed). Each row has two scopes: 'all' = every trainable parameter (encoder LoRA, "
                       "transfer LoRA, <mem> embeddings); 'encoder' = encoder LoRA + <mem> embeddings only, the "
                       "part the estimator acts on (the transfer-head gradient is exact in every strategy). "
                       "mean_estimator_norm_ratio = mean over documents of |mean over seeds of g| / |g_full|; "
                       "*_debiased subtracts the finite-sample excess tr(Cov)/seeds from the squared norm; "
                       "projection = <g, g_full> / |g_full|^2 (expectation exactly 1 with the factor).",
        "model": {"arch": args.arch, "hidden_size": args.hidden, "intermediate_size": 2 * args.hidden,
                  "num_hidden_layers": args.layers, "num_attention_heads": 4, "num_key_value_heads": 2,
                  "lora_rank": args.lora_rank, "lora_alpha": 2.0 * args.lora_rank, "perturb_std": args.perturb,
                  "trainable_parameters": int(mask.numel()), "encoder_side_parameters": int(mask.sum())},
        "segment_length": l, "compression_ratio": args.compression_ratio, "segments_per_document": T,
        "documents": args.documents, "seeds_per_document": args.seeds,
        "text": "uio_ds.data.generators.synthetic.synthetic_text(seed=1), tokenized with the tiny tokenizer",
        "encoder_share_of_full_gradient_norm": encoder_share,
        "inf_window": inf_window, "inf_max_rel_err": inf_err, "inf_check_passed": inf_ok,
        "paper_r_mean": {"with_factor": PAPER[True], "without_factor": PAPER[False]},
        "rows": rows, "seconds": round(elapsed, 1),
    })
    print(f"wrote {path} and {png} in {elapsed:.0f} s")
    summary_line({f"S={r['S']},{'with' if r['factor'] else 'without'}": {
        "r_all": round(r["all"]["r_mean"], 4), "r_enc": round(r["encoder"]["r_mean"], 4),
        "mean_norm_enc": round(r["encoder"]["mean_estimator_norm_ratio"], 4),
        "paper": PAPER[r["factor"]][r["S"]]} for r in rows} | {"inf_check_passed": inf_ok})
    if not inf_ok:
        raise SystemExit(1)


if __name__ == "__main__":
    torch.manual_seed(0)
    torch.set_num_threads(2)
    main()
