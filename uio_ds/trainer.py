"""The training run: set-up, the step loop, logging, checkpoints, export.

``Trainer.train()`` is a short list of calls; ``train_step()`` is one optimizer step and
can be driven alone. All DeepSpeed work goes through ``uio_ds.engine``; this module never
imports deepspeed. Rank 0 alone writes TensorBoard events, the progress bar and exports.
"""

from __future__ import annotations

import json
import math
import os
import random
import time

import torch

from uio_ds import checkpoint as ckpt
from uio_ds.algo import strategy_from_config
from uio_ds.algo.objective import Objective
from uio_ds.config import TrainConfig
from uio_ds.model.attention import resolve_attention
from uio_ds.stopping import StopRequest

STATE_FILE = "trainer_state_rank{rank}.pt"


class TrainingStopped(RuntimeError):
    """The run stopped itself (non-finite steps, nothing trained, non-finite parts): nothing exported."""

    status = 1
    """The process's exit status."""
    local = False
    """True when only this rank stopped (the others did not agree to)."""


class CheckpointWriteError(TrainingStopped):
    """This rank could not write its part of a checkpoint (a full disk, an I/O error)."""

    local = True
    """Raised on one rank only: the others learn of it when the launcher stops them."""


class TrainingInterrupted(TrainingStopped):
    """A signal or the launcher's exit stopped the run at a step boundary, after a checkpoint."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


def _finite_or_none(value):
    """A number for strict JSON: NaN and infinities become null."""
    return value if value is None or math.isfinite(value) else None


def _rss_mb() -> float:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


class _NullWriter:
    """Stands in for TensorBoard on ranks other than 0."""

    def add_scalar(self, *args, **kwargs) -> None:
        return None

    def add_text(self, *args, **kwargs) -> None:
        return None

    def flush(self) -> None:
        return None

    def close(self) -> None:
        return None


class Trainer:
    """Trains the UIO parts of a memory model with a TBPTT strategy under DeepSpeed."""

    def __init__(self, config: TrainConfig, ds_config: dict, resume: str | None = None, log=print,
                 world_size: int | None = None, overwrite: bool = False):
        """Checks the DeepSpeed config against ``config`` (raising every problem at once) without
        touching the model or the data; ``world_size`` defaults to the launcher's WORLD_SIZE.
        ``overwrite``: remove an earlier run's outputs from ``output_dir`` before starting."""
        from uio_ds import engine
        from uio_ds.run_dir import RunLock

        self.config = config
        self.overwrite = overwrite
        self.lock = RunLock(config.output_dir)
        self.world_size = int(os.environ.get("WORLD_SIZE", "1")) if world_size is None else world_size
        self.checkpoint_dir = os.path.join(config.output_dir, "checkpoints")
        self.skipped_checkpoints: list[str] = []
        """Checkpoints passed over for an unreadable file (logged when the run resumes)."""
        self.resume_from = ckpt.resume_target(resume, self.checkpoint_dir, self.skipped_checkpoints) if resume else None
        """(root, tag) of the checkpoint this run resumes, resolved once; None for a fresh start."""
        base_config = self._check_model(config, resuming=self.resume_from is not None)
        self.max_positions = base_config.max_position_embeddings
        zero = ds_config.get("zero_optimization", {})
        largest = None
        if zero.get("stage") == 3 and zero.get("stage3_param_persistence_threshold", "auto") != "auto":
            from uio_ds.model.memory_model import largest_trainable_numel

            largest = largest_trainable_numel(base_config, config.uio)
        self.ds_config, self.graph_mode = engine.resolve_ds_config(ds_config, config, self.world_size,
                                                                   hidden_size=base_config.hidden_size,
                                                                   largest_trainable=largest)
        self.resume = resume
        self.config_changes: list[str] = []
        """Differences from the config of the checkpoint resumed (set by the entry point's check)."""
        self._print = log
        self.step = 0
        self.stop = StopRequest()

    # ------------------------------------------------------------------ set-up

    @staticmethod
    def _check_model(cfg: TrainConfig, resuming: bool):
        """The base model directory, the ``init_from`` parts (unless a checkpoint is resumed) and the
        longest document ``data.max_tokens`` lets through, checked from files alone; returns the
        base model's transformers config."""
        from uio_ds.model.memory_model import check_model_dir, check_trained_parts, length_problem

        base_config = check_model_dir(cfg.model_path, cfg.uio)
        if cfg.init_from and not resuming:
            try:
                check_trained_parts(cfg.init_from, cfg.uio, base_config, new_adapters=("decoder",))
            except (ValueError, FileNotFoundError) as err:
                raise ValueError(f"init_from={cfg.init_from!r} does not fit the config's 'uio': {err}") from None
        longest = 2 * cfg.data.autoencode_tokens if cfg.data.autoencode_tokens else cfg.data.max_tokens
        problem = longest and length_problem(cfg.uio, longest, base_config.max_position_embeddings)
        if problem:
            raise ValueError(f"data.max_tokens={cfg.data.max_tokens} lets documents through that the model cannot "
                             f"read: {problem}; or lower data.max_tokens")
        return base_config

    def log(self, message: str) -> None:
        if self.rank == 0:
            self._print(message)

    def setup(self) -> "Trainer":
        from transformers import AutoTokenizer

        from uio_ds import engine
        from uio_ds.data.pipeline import build_stream
        from uio_ds.model.memory_model import TORCH_DTYPES, UIOMemoryModel, length_problem

        cfg = self.config
        self.rank, world_size = engine.init_distributed()
        if world_size != self.world_size:
            raise RuntimeError(f"{world_size} ranks joined but the DeepSpeed config was resolved for "
                               f"{self.world_size}: set WORLD_SIZE as the launcher does, or pass world_size")
        ds_config, graph_mode = self.ds_config, self.graph_mode
        self._own_output_dir()
        # the attention kernel is settled before any data work: asking for flash-attn where it
        # cannot run fails here, with the fix in the message
        attention = resolve_attention(cfg.uio.attention, TORCH_DTYPES[cfg.uio.dtype])
        torch.manual_seed(cfg.seed + self.rank)
        random.seed(cfg.seed + self.rank)

        tokenizer = AutoTokenizer.from_pretrained(cfg.model_path)
        # the first rank to take a source's lock tokenises it into the cache; the others wait on the
        # file system, not in a collective that a large corpus would outlast
        started = time.perf_counter()
        self.stream, self.data_info = build_stream(cfg.data, tokenizer, self.world_size, self.rank, log=self.log)
        self.log(f"data ready in {time.perf_counter() - started:.1f} s: "
                 + ("streaming" if cfg.data.streaming else f"{sum(self.data_info['pieces']):,} pieces")
                 + f" from {len(cfg.data.sources)} source(s)")
        longest = self.stream.longest
        if not cfg.data.autoencode_tokens and longest <= cfg.uio.segment_length:
            raise ValueError(f"every training document is at most {longest} tokens, within one segment "
                             f"(uio.segment_length={cfg.uio.segment_length}): no memory would ever be built or "
                             "trained; use longer documents (data.max_tokens) or a shorter uio.segment_length")

        problem = length_problem(cfg.uio, longest, self.max_positions)
        if problem:
            raise ValueError(f"the longest training document has {longest} tokens: {problem}; or cut documents "
                             "with data.max_tokens")

        # straight onto this rank's device: no rank holds a second copy of the weights on the host;
        # under ZeRO-3 on the host, where the engine partitions it, so that no device holds it whole
        zero3 = ds_config["zero_optimization"].get("stage") == 3
        model = UIOMemoryModel.from_pretrained(cfg.model_path, cfg.uio, device=None if zero3 else engine.device())
        if cfg.init_from:
            # the saved config must equal 'uio' but for runtime options and a decoder LoRA added now
            try:
                model.load_trained(cfg.init_from, new_adapters=("decoder",))
            except ValueError as err:
                raise ValueError(f"init_from={cfg.init_from!r} does not fit the config's 'uio': {err}") from None
        self.model = model
        objective = Objective(lm=cfg.objective.lm, distill=cfg.objective.distill, regularize=cfg.objective.regularize)
        # a run that distils anywhere (its objective or a source's) logs the two terms apart
        self.distilling = objective.uses_teacher or any((s.objective or {}).get("distill", 0) > 0
                                                        for s in cfg.data.sources)
        self.strategy = strategy_from_config(cfg.algorithm, objective, graph_mode=graph_mode, rank=self.rank)
        self.engine = engine.UIOEngine(
            model, ds_config, self.strategy, lr_lambda=lambda step: cfg.optim.lr_multiplier(step, cfg.steps)
        )

        if self.rank == 0:
            from torch.utils.tensorboard import SummaryWriter

            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(os.path.join(cfg.output_dir, "run_config.json"), "w") as f:
                json.dump({"train": cfg.to_dict(), "deepspeed": ds_config, "world_size": self.world_size,
                           "graph_mode": graph_mode, "data": self.data_info}, f, indent=2, default=str)
            self.writer = SummaryWriter(os.path.join(cfg.output_dir, "tensorboard"))
        else:
            self.writer = _NullWriter()
        summary = model.trainable_summary()
        self.log(f"{self.world_size} rank(s), ZeRO stage {ds_config['zero_optimization'].get('stage', 0)}, "
                 f"{self.strategy}, graph_mode={graph_mode}, attention {attention} (asked: {cfg.uio.attention}); trainable {summary['trainable']:,} of "
                 f"{summary['total']:,} parameters ({100 * summary['share']:.2f}%)")
        if self.resume:
            self._resume()
        return self

    def _own_output_dir(self) -> None:
        """Rank 0 takes the output directory's lock (and clears an earlier run under ``overwrite``);
        every rank stops if it could not."""
        from uio_ds import engine
        from uio_ds.run_dir import clear_run

        problem = None
        if self.rank == 0:
            try:
                self.lock.acquire()
            except (RuntimeError, OSError) as err:
                problem = str(err)
            else:
                if self.lock.note:
                    self.log(f"{self.config.output_dir}: {self.lock.note}")
                if self.overwrite:
                    removed = clear_run(self.config.output_dir)
                    if removed:
                        self.log(f"--overwrite: removed the earlier run's {', '.join(removed)} from "
                                 f"{self.config.output_dir}")
        if engine.all_reduce_max(int(problem is not None)):
            raise RuntimeError(problem or "rank 0 could not take the output directory's lock")

    # ------------------------------------------------------------------ state

    def state_dict(self) -> dict:
        """This rank's trainer state: step, data position, every random generator."""
        return {
            "step": self.step,
            "world_size": self.world_size,
            "stream": self.stream.state_dict(),
            "strategy": self.strategy.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
            "python_rng": random.getstate(),
        }

    def load_state_dict(self, state: dict) -> None:
        self.step = state["step"]
        self.stream.load_state_dict(state["stream"])
        self.strategy.load_state_dict(state["strategy"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("cuda_rng") is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        random.setstate(state["python_rng"])

    def save_checkpoint(self) -> str:
        from uio_ds import engine

        tag = ckpt.step_tag(self.step)
        try:
            os.makedirs(os.path.join(self.checkpoint_dir, tag), exist_ok=True)
            torch.save(self.state_dict(), os.path.join(self.checkpoint_dir, tag, STATE_FILE.format(rank=self.rank)))
            self.engine.save(self.checkpoint_dir, tag, {"step": self.step})  # ends with a barrier
            if self.rank == 0:
                with open(os.path.join(self.checkpoint_dir, tag, ckpt.CONFIG), "w") as f:
                    json.dump(self.config.to_dict(), f, indent=2)
                ckpt.mark_complete(self.checkpoint_dir, tag, {"step": self.step, "world_size": self.world_size})
        except (OSError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError
            raise CheckpointWriteError(ckpt.write_failure(err, self.checkpoint_dir,
                                                          f"checkpoint {os.path.join(self.checkpoint_dir, tag)}")) from None
        if self.rank == 0:
            removed = ckpt.prune(self.checkpoint_dir, self.config.keep_last)
            self.log(f"checkpoint {os.path.join(self.checkpoint_dir, tag)}"
                     + (f" (removed {', '.join(removed)})" if removed else ""))
        engine.barrier()
        return tag

    def _resume(self) -> None:
        target = self.resume_from
        for note in self.skipped_checkpoints:
            self.log(f"{note}: resuming from the previous complete checkpoint")
        if target is None:
            self.log(f"no complete checkpoint in {self.checkpoint_dir}: starting from step 0")
            return
        root, tag = target
        ckpt.check_world_size(root, tag, self.world_size)
        self.engine.load(root, tag)
        # the optimizer's settings and the schedule come from this config, not from the checkpoint
        self.engine.apply_optimizer_settings(self.config.optim)
        state = torch.load(os.path.join(root, tag, STATE_FILE.format(rank=self.rank)), weights_only=False)
        self.load_state_dict(state)
        self.log(f"resumed from {os.path.join(root, tag)} at step {self.step}")
        if self.config_changes:
            self.log(f"config changes since that checkpoint, applied from step {self.step + 1}: "
                     + "; ".join(self.config_changes))

    # ------------------------------------------------------------------ training

    def train_step(self):
        """One optimizer step on the next documents of this rank; returns the engine's StepOutput."""
        documents = self.stream.next_documents()
        out = self.engine.train_step(documents)
        self.step += 1
        self._last_documents = documents
        return out

    def _log_step(self, out, seconds: float) -> None:
        w, s = self.writer, self.step
        w.add_scalar("train/loss", out.loss, s)
        # the loss is the objective (with distillation a weighted sum); perplexity is the next-token loss's
        lm_loss = out.stats["lm_loss_sum"] / out.tokens if "lm_loss_sum" in out.stats and out.tokens else out.loss
        w.add_scalar("train/perplexity", float(torch.tensor(lm_loss).exp()), s)
        if self.distilling and out.tokens:
            w.add_scalar("train/lm_loss", lm_loss, s)
            w.add_scalar("train/distill_kl", out.stats["distill_sum"] / out.tokens, s)
        w.add_scalar("train/lr", out.lr, s)
        if out.grad_norm is not None:
            w.add_scalar("train/grad_norm", out.grad_norm, s)
        w.add_scalar("speed/tokens_per_s", out.tokens / seconds, s)
        w.add_scalar("speed/segments_per_s", out.stats.get("segments", 0) / seconds, s)
        for i, (loss_sum, n) in enumerate(zip(out.segment_loss_sums, out.segment_tokens)):
            if n > 0:
                w.add_scalar(f"segment_loss/position_{i:03d}", loss_sum / n, s)
        for key in ("evictions", "encoder_backward_passes", "encoder_graph_forwards", "encoder_recomputes"):
            if key in out.stats:
                w.add_scalar(f"algorithm/{key}", out.stats[key], s)
        w.add_scalar("memory/rss_mb", _rss_mb(), s)
        if torch.cuda.is_available():
            w.add_scalar("memory/cuda_allocated_mb", torch.cuda.memory_allocated() / 2**20, s)
            w.add_scalar("memory/cuda_peak_mb", torch.cuda.max_memory_allocated() / 2**20, s)
        if out.skipped:
            w.add_scalar("train/skipped_step", 1, s)
        if out.non_finite:
            w.add_scalar("train/non_finite_step", 1, s)
        if self.rank == 0:
            record = {"step": s, "loss": _finite_or_none(out.loss), "lr": out.lr,
                      "grad_norm": _finite_or_none(out.grad_norm), "tokens": out.tokens,
                      "seconds": round(seconds, 4), "skipped": out.skipped, "non_finite": out.non_finite}
            if self.distilling and out.tokens:
                record["lm_loss"] = _finite_or_none(lm_loss)
                record["distill_kl"] = _finite_or_none(out.stats["distill_sum"] / out.tokens)
            with open(os.path.join(self.config.output_dir, "metrics.jsonl"), "a") as f:
                f.write(json.dumps(record) + "\n")

    def train(self) -> list[float]:
        """Run to ``config.steps``; returns the loss of every step run here. SIGTERM, SIGINT or the
        launcher's exit stop every rank at the next step boundary, after a checkpoint
        (``TrainingInterrupted``)."""
        from tqdm import tqdm

        from uio_ds import engine

        cfg = self.config
        losses = []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        bad, zero, first = 0, 0, self.step
        self.stop.install()
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                out = self.train_step()
                seconds = time.perf_counter() - start
                losses.append(out.loss)
                bad = bad + 1 if out.non_finite else 0
                zero = zero + 1 if out.grad_norm == 0 else 0
                if out.non_finite:
                    self.log(f"step {self.step}: non-finite loss or gradient, step skipped ({bad} in a row)")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self._log_step(out, seconds)
                bar.update(1)
                bar.set_postfix(loss=f"{out.loss:.3f}", lr=f"{out.lr:.2e}", tok_s=f"{out.tokens / seconds:.0f}")
                if bad >= cfg.max_bad_steps:
                    raise TrainingStopped(
                        f"{bad} steps in a row (up to step {self.step}) had a non-finite loss or gradient: stopped "
                        f"without exporting; {self._last_good()}. Lower optim.lr, or check the data and the base "
                        "model's weights")
                if zero >= cfg.max_bad_steps and self.step - first == zero:
                    raise TrainingStopped(
                        f"the first {zero} steps of this run had a zero gradient: nothing is being trained (no "
                        "scored token reads a memory, or the trainable parts are disconnected); stopped without "
                        "exporting")
                saved = (cfg.save_every and self.step % cfg.save_every == 0) or self.step == cfg.steps
                if saved:
                    self.save_checkpoint()
                # every rank learns whether any rank was asked to stop (one small all-reduce a step)
                code = engine.all_reduce_max(self.stop.code) if self.step < cfg.steps else 0
                if code:
                    bar.close()
                    tag = ckpt.latest_tag(self.checkpoint_dir) if saved else self.save_checkpoint()
                    raise TrainingInterrupted(
                        f"stopped by {StopRequest.describe(code)} after step {self.step} of {cfg.steps}: checkpoint "
                        f"{os.path.join(self.checkpoint_dir, tag)} saved; continue with --resume auto",
                        StopRequest.exit_status(code))
        finally:
            self.stop.uninstall()
        bar.close()
        self.writer.flush()
        broken = [n for n, p in self.model.named_trainable_parameters() if not bool(torch.isfinite(p).all())]
        if broken:
            raise TrainingStopped(f"trained parts hold NaN or infinite values ({', '.join(broken[:3])}"
                                  f"{', ...' if len(broken) > 3 else ''}): not exported; {self._last_good()}")
        if self.rank == 0:
            final = os.path.join(cfg.output_dir, "final")
            try:
                self.model.save_trained(final)
            except (OSError, RuntimeError) as err:
                raise CheckpointWriteError(ckpt.write_failure(err, self.checkpoint_dir, f"the trained parts to {final}")) from None
            self.log(f"trained UIO parts exported to {final}; TensorBoard events in "
                     f"{os.path.join(cfg.output_dir, 'tensorboard')}")
        return losses

    def _last_good(self) -> str:
        tag = ckpt.latest_tag(self.checkpoint_dir)
        return f"the last checkpoint is {os.path.join(self.checkpoint_dir, tag)}" if tag else "no checkpoint was saved"

    def release(self) -> None:
        """Let go of the output directory (also after a failure)."""
        self.lock.release()

    def close(self) -> None:
        from uio_ds import engine

        self.writer.close()
        self.release()
        engine.shutdown()
