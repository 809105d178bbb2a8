"""The training run: it builds the parts (data, model, strategy, engine) and runs the step loop.

``Trainer.train()`` is a short list of calls; ``train_step()`` is one optimizer step and
can be driven alone. All DeepSpeed work goes through ``uio_ds.train.engine``; this module never
imports deepspeed. Checkpoints are ``uio_ds.train.checkpoint``'s, the step records
``uio_ds.train.metrics``'s. Rank 0 alone writes TensorBoard events, the progress bar and exports.
"""

from __future__ import annotations

import json
import os
import random
import time

import torch

from uio_ds.algo import strategy_from_config
from uio_ds.algo.objective import Objective
from uio_ds.config import TrainConfig
from uio_ds.model.attention import resolve_attention
from uio_ds.train import checkpoint as ckpt
from uio_ds.train import dist as process_group
from uio_ds.train.ds_config import resolve_ds_config
from uio_ds.train.metrics import StepMetrics, cut_back
from uio_ds.train.stopping import StopRequest, TrainingInterrupted, TrainingStopped


class DataReadError(TrainingStopped):
    """A data file that this rank streams could not be read; the others stop when the launcher stops them."""

    status = 2
    local = True


class Trainer:
    """Trains the UIO parts of a memory model with a TBPTT strategy under DeepSpeed."""

    def __init__(self, config: TrainConfig, ds_config: dict, resume: str | None = None, log=print,
                 world_size: int | None = None, overwrite: bool = False):
        """Checks the DeepSpeed config against ``config`` (raising every problem at once) without
        touching the model or the data; ``world_size`` defaults to the launcher's WORLD_SIZE.
        ``overwrite``: remove an earlier run's outputs from ``output_dir`` before starting."""
        from uio_ds.train import engine

        self.config = config
        self.overwrite = overwrite
        self.lock = ckpt.RunLock(config.output_dir)
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
        self.ds_config, self.graph_mode = resolve_ds_config(ds_config, config, self.world_size,
                                                            hidden_size=base_config.hidden_size,
                                                            largest_trainable=largest,
                                                            fp16_refusal=engine.fp16_refusal())
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
        from uio_ds.model.parts import check_model_dir, check_trained_parts
        from uio_ds.model.positions import length_problem

        base_config = check_model_dir(cfg.model_path, cfg.uio)
        if cfg.init_from and not resuming:
            try:
                check_trained_parts(cfg.init_from, cfg.uio, base_config, new_adapters=("decoder",), grow=True)
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

        from uio_ds.data.cache import data_digests
        from uio_ds.data.streams import build_stream
        from uio_ds.model.memory_model import TORCH_DTYPES, UIOMemoryModel
        from uio_ds.model.positions import length_problem
        from uio_ds.train import engine

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
        # what a checkpoint's data position means: rank 0 records it in each checkpoint's marker
        self.data_digests = (data_digests(cfg.data.sources, cfg.data.cache_dir, cfg.data.streaming)
                             if self.rank == 0 else {})
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
        model = UIOMemoryModel.from_pretrained(cfg.model_path, cfg.uio, device=None if zero3 else process_group.device())
        if cfg.init_from:
            # the saved config must equal 'uio' but for runtime options, a decoder LoRA added now,
            # adapters grown by target modules or rank (each starts as a no-op: training continues the
            # parts) and a compression ratio lowered to a divisor of the saved one (<mem> rows repeated)
            try:
                model.load_trained(cfg.init_from, new_adapters=("decoder",), grow=True)
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
            os.makedirs(cfg.output_dir, exist_ok=True)
            with open(os.path.join(cfg.output_dir, "run_config.json"), "w") as f:
                json.dump({"train": cfg.to_dict(), "deepspeed": ds_config, "world_size": self.world_size,
                           "graph_mode": graph_mode, "data": self.data_info}, f, indent=2, default=str)
        self.metrics = StepMetrics(cfg.output_dir, self.rank, self.distilling)
        self.initial_scale = self._largest_part_value()
        self.checkpoints = ckpt.Checkpoints(self.checkpoint_dir, self.rank, self.world_size, cfg.keep_last)
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
                    removed = ckpt.clear_run(self.config.output_dir)
                    if removed:
                        self.log(f"--overwrite: removed the earlier run's {', '.join(removed)} from "
                                 f"{self.config.output_dir}")
        if process_group.all_reduce_max(int(problem is not None)):
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
        record = {"zero_stage": self.ds_config["zero_optimization"].get("stage", 0), "data": self.data_digests}
        tag, removed = self.checkpoints.save(self.step, self.state_dict(), self.engine, self.config.to_dict(), record)
        self.log(f"checkpoint {os.path.join(self.checkpoint_dir, tag)}"
                 + (f" (removed {', '.join(removed)})" if removed else ""))
        process_group.barrier()
        return tag

    def _resume(self) -> None:
        target = self.resume_from
        for note in self.skipped_checkpoints:
            self.log(f"{note}: resuming from the previous complete checkpoint")
        if target is None:
            dropped = cut_back(self.config.output_dir, 0) if self.rank == 0 else 0
            self.log(f"no complete checkpoint in {self.checkpoint_dir}: starting from step 0"
                     + (f" (the {dropped} records of metrics.jsonl of the run that left none are removed)"
                        if dropped else ""))
            return
        root, tag = target
        state = self.checkpoints.restore(root, tag, self.engine)
        # the optimizer's settings and the schedule come from this config, not from the checkpoint
        self.engine.apply_optimizer_settings(self.config.optim)
        self.load_state_dict(state)
        if self.rank == 0:
            cut_back(self.config.output_dir, self.step)  # the steps after it run again
        self.log(f"resumed from {os.path.join(root, tag)} at step {self.step}")
        if self.config_changes:
            self.log(f"config changes since that checkpoint, applied from step {self.step + 1}: "
                     + "; ".join(self.config_changes))

    # ------------------------------------------------------------------ training

    def train_step(self):
        """One optimizer step on the next documents of this rank; returns the engine's StepOutput."""
        from uio_ds.data.files import SourceReadError

        try:
            documents = self.stream.next_documents()
        except SourceReadError as err:  # a streamed file that cannot be read: this rank stops, naming it
            raise DataReadError(f"{err}; the last checkpoint is kept ({self.checkpoints.last_good()})") from None
        out = self.engine.train_step(documents)
        self.step += 1
        self._last_documents = documents
        return out

    def train(self) -> list[float]:
        """Run to ``config.steps``; returns the loss of every step run here. SIGTERM, SIGINT or the
        launcher's exit stop every rank at the next step boundary, after a checkpoint
        (``TrainingInterrupted``)."""
        from tqdm import tqdm

        cfg = self.config
        losses = []
        bar = tqdm(total=cfg.steps, initial=self.step, disable=self.rank != 0, desc="train", dynamic_ncols=True)
        bad, zero, skipped, first = 0, 0, 0, self.step
        self.stop.install()
        try:
            while self.step < cfg.steps:
                start = time.perf_counter()
                out = self.train_step()
                seconds = time.perf_counter() - start
                losses.append(out.loss)
                bad = bad + 1 if out.non_finite else 0
                skipped += int(out.skipped)
                zero = zero + 1 if out.grad_norm == 0 else 0
                if out.non_finite:
                    self.log(f"step {self.step}: non-finite loss or gradient, step skipped ({bad} in a row)")
                if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                    self.metrics.log(self.step, out, seconds)
                bar.update(1)
                bar.set_postfix(loss=f"{out.loss:.3f}", lr=f"{out.lr:.2e}", tok_s=f"{out.tokens / seconds:.0f}")
                if bad >= cfg.max_bad_steps:
                    raise TrainingStopped(
                        f"{bad} steps in a row (up to step {self.step}) had a non-finite loss or gradient: stopped "
                        f"without exporting; {self.checkpoints.last_good()}. Lower optim.lr, or check the data and the base "
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
                code = process_group.all_reduce_max(self.stop.code) if self.step < cfg.steps else 0
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
        self.metrics.flush()
        self._check_parts(self.step - first, skipped)
        if self.rank == 0:
            final = os.path.join(cfg.output_dir, "final")
            try:
                self.model.save_trained(final)
            except (OSError, RuntimeError) as err:
                raise ckpt.CheckpointWriteError(ckpt.write_failure(err, self.checkpoint_dir, f"the trained parts to {final}")) from None
            self.log(f"trained UIO parts exported to {final}; TensorBoard events in "
                     f"{os.path.join(cfg.output_dir, 'tensorboard')}")
        return losses

    def _largest_part_value(self) -> float:
        return max(float(p.detach().abs().max()) for p in self.model.trainable_parameters())

    def _check_parts(self, steps: int, skipped: int) -> None:
        """Trained parts worth exporting: some step of the run updated them, and they are finite and
        within ``max_part_growth`` of their scale at the start (else the run diverged)."""
        where = self.checkpoints.last_good()
        if steps and skipped == steps:
            raise TrainingStopped(f"every one of the {steps} steps of this run was skipped (non-finite loss or "
                                  f"gradient, or an fp16 loss-scale overflow): nothing was trained; not exported; "
                                  f"{where}")
        broken = [n for n, p in self.model.named_trainable_parameters() if not bool(torch.isfinite(p).all())]
        if broken:
            raise TrainingStopped(f"trained parts hold NaN or infinite values ({', '.join(broken[:3])}"
                                  f"{', ...' if len(broken) > 3 else ''}): not exported; {where}")
        limit, start, now = self.config.max_part_growth, self.initial_scale, self._largest_part_value()
        if limit is not None and now > limit * max(start, 1e-6):
            raise TrainingStopped(f"the run diverged: the largest value of the trained parts grew from {start:.3g} to "
                                  f"{now:.3g}, over max_part_growth={limit:g} times; not exported; {where}. Lower "
                                  "optim.lr, or set max_part_growth=null to export them anyway")

    def release(self) -> None:
        """Let go of the output directory (also after a failure)."""
        self.lock.release()

    def close(self) -> None:
        self.metrics.close()
        self.release()
        process_group.shutdown()
