"""What a run records of each step: TensorBoard scalars and ``metrics.jsonl`` (rank 0), from the
engine's step output."""

from __future__ import annotations

import json
import math
import os

import torch

ALGORITHM_STATS = ("evictions", "encoder_backward_passes", "encoder_graph_forwards", "encoder_recomputes")
"""Strategy statistics logged under ``algorithm/`` when a step reports them."""


def finite_or_none(value):
    """A number for strict JSON: NaN and infinities become null."""
    return value if value is None or math.isfinite(value) else None


def rss_mb() -> float:
    """This process's resident memory (Linux; 0 elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def cut_back(output_dir: str, step: int) -> int:
    """Drop the records of ``metrics.jsonl`` after ``step`` (a run resumed there writes them again);
    returns how many were dropped. The file is replaced atomically."""
    path = os.path.join(output_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        lines = f.readlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue  # a line cut short by a kill: dropped with the rest
    if len(kept) != len(lines):
        staging = f"{path}.tmp-{os.getpid()}"
        with open(staging, "w") as f:
            f.writelines(kept)
        os.replace(staging, path)
    return len(lines) - len(kept)


class _NullWriter:
    """Stands in for TensorBoard on ranks other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class StepMetrics:
    """Rank 0 writes TensorBoard events under ``output_dir/tensorboard`` and one JSON line a logged
    step to ``output_dir/metrics.jsonl``; other ranks write nothing. ``distilling``: the run
    distils somewhere, so the next-token loss and the KL are logged apart."""

    def __init__(self, output_dir: str, rank: int, distilling: bool):
        self.output_dir, self.rank, self.distilling = output_dir, rank, distilling
        if rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(os.path.join(output_dir, "tensorboard"))
        else:
            self.writer = _NullWriter()

    def log(self, step: int, out, seconds: float) -> None:
        """Record the engine's ``StepOutput`` of ``step``, which took ``seconds``."""
        w = self.writer
        w.add_scalar("train/loss", out.loss, step)
        # the loss is the objective (with distillation a weighted sum); perplexity is the next-token loss's
        lm_loss = out.stats["lm_loss_sum"] / out.tokens if "lm_loss_sum" in out.stats and out.tokens else out.loss
        w.add_scalar("train/perplexity", float(torch.tensor(lm_loss).exp()), step)
        distill = out.stats["distill_sum"] / out.tokens if self.distilling and out.tokens else None
        if distill is not None:
            w.add_scalar("train/lm_loss", lm_loss, step)
            w.add_scalar("train/distill_kl", distill, step)
        w.add_scalar("train/lr", out.lr, step)
        if out.grad_norm is not None:
            w.add_scalar("train/grad_norm", out.grad_norm, step)
        w.add_scalar("speed/tokens_per_s", out.tokens / seconds, step)
        w.add_scalar("speed/segments_per_s", out.stats.get("segments", 0) / seconds, step)
        for i, (loss_sum, n) in enumerate(zip(out.segment_loss_sums, out.segment_tokens)):
            if n > 0:
                w.add_scalar(f"segment_loss/position_{i:03d}", loss_sum / n, step)
        for key in ALGORITHM_STATS:
            if key in out.stats:
                w.add_scalar(f"algorithm/{key}", out.stats[key], step)
        w.add_scalar("memory/rss_mb", rss_mb(), step)
        if torch.cuda.is_available():
            w.add_scalar("memory/cuda_allocated_mb", torch.cuda.memory_allocated() / 2**20, step)
            w.add_scalar("memory/cuda_peak_mb", torch.cuda.max_memory_allocated() / 2**20, step)
        if out.skipped:
            w.add_scalar("train/skipped_step", 1, step)
        if out.non_finite:
            w.add_scalar("train/non_finite_step", 1, step)
        if self.rank == 0:
            self._append(step, out, seconds, lm_loss, distill)

    def _append(self, step: int, out, seconds: float, lm_loss: float, distill: float | None) -> None:
        record = {"step": step, "loss": finite_or_none(out.loss), "lr": out.lr,
                  "grad_norm": finite_or_none(out.grad_norm), "tokens": out.tokens,
                  "seconds": round(seconds, 4), "skipped": out.skipped, "non_finite": out.non_finite}
        if distill is not None:
            record["lm_loss"] = finite_or_none(lm_loss)
            record["distill_kl"] = finite_or_none(distill)
        with open(os.path.join(self.output_dir, "metrics.jsonl"), "a") as f:
            f.write(json.dumps(record) + "\n")

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()
