"""Everything DeepSpeed, in one module.

One optimizer step under ZeRO-1/2/3:

1. every rank counts its scored tokens; one all-reduce gives the global count N;
2. the TBPTT strategy runs the documents of this rank, with every decoder and encoder
   pass going through the memory model's own methods (never the engine's root
   forward, which DeepSpeed hooks), and returns gradients of
   ``world_size / N * (summed token loss)`` in buffers (``torch.autograd.grad``);
3. ONE engine forward computes a surrogate scalar ``sum_p <p, buffer_p>`` whose gradient
   with respect to each trainable parameter is exactly its buffer, then ONE
   ``engine.backward`` and ``engine.step()``.

DeepSpeed therefore reduces (averages over ranks) exactly once per step, whatever number
of segments or backward passes each rank ran, and the average is the gradient of the
token-weighted mean loss over all ranks' documents. Calling ``engine.backward`` once per
segment instead was measured to give silently wrong parameters.

Under ZeRO-3, where running a module gathers its weights from every rank, step 2 runs the
ranks' passes in lockstep (``uio_ds.algo.lockstep``).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field

import torch
from torch import nn

if not torch.cuda.is_available():
    os.environ.setdefault("DS_ACCELERATOR", "cpu")

import deepspeed  # noqa: E402
import deepspeed.comm as dist  # noqa: E402
from deepspeed.accelerator import get_accelerator  # noqa: E402

from uio_ds.algo import Strategy, as_batches, batch_targets  # noqa: E402
from uio_ds.algo.lockstep import Lockstep  # noqa: E402
from uio_ds.algo.objective import group_by_objective  # noqa: E402
from uio_ds.config import ConfigError  # noqa: E402
from uio_ds.train import dist as process_group  # noqa: E402
from uio_ds.train.ds_config import persistence_problem  # noqa: E402


def init_distributed() -> tuple[int, int]:
    """Join the process group (gloo on CPU, NCCL on GPUs); returns (rank, world_size). Without
    a launcher the process is a group of one."""
    process_group.single_process_env()
    if not dist.is_initialized():
        _skip_shared_memory_op()
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    process_group.set_cpu_threads(dist.get_world_size())
    return dist.get_rank(), dist.get_world_size()


def _skip_shared_memory_op() -> None:
    """Keep DeepSpeed from building its shared-memory all-reduce on CPU.

    On CPU, every ``deepspeed.init_distributed`` JIT-compiles ``deepspeed_shm_comm`` (about a
    minute) into the user-wide ``~/.cache/torch_extensions``, under a lock file that torch only
    removes when the build returns. A rank killed while it holds that lock (an interrupt during
    start-up) leaves the file behind, and every later run on the machine then waits for it forever,
    printing nothing. The op serves only ``inference_all_reduce`` (tensor-parallel inference);
    training reduces through the process group (gloo), so it is not needed here. Marking it
    incompatible is DeepSpeed's own switch: ``build_shm_op`` then returns None (no build, no lock,
    and no 66 MiB buffer per rank left in /dev/shm)."""
    if torch.cuda.is_available():
        return
    import deepspeed.ops

    deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def fp16_refusal() -> str | None:
    """Why fp16 training cannot run here, or None when it can: on a GPU, what DeepSpeed's accelerator
    says; on CPU ranks always, even where DeepSpeed's CPU accelerator accepts fp16 (CPUs with fp16
    kernels): its dynamic loss scaling then skipped every step of a run (the parts were exported
    untrained)."""
    if not torch.cuda.is_available():
        return ("fp16 training on CPU ranks: DeepSpeed's loss scaling skips every step there (nothing is "
                "trained)")
    accelerator = get_accelerator()
    if accelerator.is_fp16_supported():
        return None
    return f"fp16 is not supported by DeepSpeed's {accelerator.device_name()} accelerator"


class SurrogateObjective(nn.Module):
    """The engine's root module: forward(buffers) = sum_p <p, buffer_p>, so that d/dp = buffer_p.

    It owns the memory model, so DeepSpeed sees (and partitions, casts, checkpoints) its
    parameters; the training passes themselves call ``self.model``'s methods directly."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, buffers: list[torch.Tensor], loss_scale: float = 1.0) -> torch.Tensor:
        """``buffers`` hold gradients already multiplied by ``loss_scale`` (fp16); the value is
        divided by it because engine.backward multiplies by it again (a power of two: exact)."""
        params = self.model.trainable_parameters()
        if len(buffers) != len(params):
            raise ValueError(f"{len(buffers)} gradient buffers for {len(params)} trainable parameters")
        return sum((p * g.to(p.dtype)).sum() for p, g in zip(params, buffers)) / loss_scale


@dataclass
class StepOutput:
    """One optimizer step, reduced over all ranks."""

    loss: float
    tokens: int
    grad_norm: float | None
    lr: float
    segment_loss_sums: list[float] = field(default_factory=list)
    segment_tokens: list[float] = field(default_factory=list)
    stats: dict[str, float] = field(default_factory=dict)
    skipped: bool = False
    non_finite: bool = False
    """The loss or a gradient was NaN or infinite on some rank: no update was made."""


class UIOEngine:
    """A DeepSpeed engine over the trainable parts of a memory model, stepped by a TBPTT strategy."""

    def __init__(self, model: nn.Module, ds_config: dict, strategy: Strategy, lr_lambda=None):
        """``lr_lambda(step) -> factor`` of the base learning rate (default: constant)."""
        self.model = model
        self.strategy = strategy
        self.objective = SurrogateObjective(model)
        self.lockstep = None
        zero = ds_config.get("zero_optimization", {})
        if zero.get("stage") == 3:
            # The trainable parts (LoRA, <mem> embeddings: megabytes) stay whole on every rank, as
            # under ZeRO-2: the strategies read them outside any module's forward (the surrogate,
            # the <mem> embeddings). Their gradients and optimizer states are partitioned.
            largest = max(p.numel() for p in model.trainable_parameters())
            threshold = zero.get("stage3_param_persistence_threshold", "auto")
            if threshold == "auto":
                ds_config = copy.deepcopy(ds_config)
                ds_config["zero_optimization"]["stage3_param_persistence_threshold"] = largest
            elif threshold < largest:  # the trainer checks this before loading; here for direct use
                raise ConfigError("DeepSpeed config", [persistence_problem(threshold, largest)])
            self.lockstep = Lockstep(process_group.all_reduce_min)
            if not any(hasattr(p, "ds_id") for p in model.parameters()):
                # Partitioned here, from wherever the model was loaded (the host): DeepSpeed's engine
                # would otherwise move the whole model onto the device before partitioning it.
                deepspeed.zero.Init(module=self.objective, config_dict_or_path=ds_config)
                for module in self.objective.modules():  # the buffers (rotary frequencies) follow
                    for name, buffer in module.named_buffers(recurse=False):
                        module._buffers[name] = buffer.to(process_group.device())
        schedule = lr_lambda or (lambda step: 1.0)
        self.engine, self.optimizer, _, self.scheduler = deepspeed.initialize(
            model=self.objective,
            model_parameters=model.trainable_parameters(),
            config=ds_config,
            lr_scheduler=lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, schedule),
        )
        if self.lockstep is not None:
            # Persistent parameters are gathered the first time their module runs; the <mem>
            # embeddings belong to no module that runs, so every persistent one is gathered now
            # (DeepSpeed gathers them again after each step and each checkpoint event).
            persistent = [p for p in self.objective.parameters() if getattr(p, "ds_persist", False)]
            if persistent:
                persistent[0].all_gather(persistent)
            # While DeepSpeed has no complete trace of the module order (every step, as padding
            # changes it), a module releases even persistent parameters after it runs: the
            # surrogate reads the trainable parameters outside their modules, so the root module
            # gathers them before its forward.
            for p in model.trainable_parameters():
                deepspeed.zero.register_external_parameter(self.objective, p)
        self.world_size = dist.get_world_size()
        self.rank = dist.get_rank()
        self.fp16 = self.engine.fp16_enabled()

    @property
    def global_step(self) -> int:
        return self.engine.global_steps

    def lr(self) -> float:
        return float(self.engine.get_lr()[0])

    def _loss_scale(self) -> float:
        # Under fp16 the strategy's gradients carry the dynamic loss scale (no underflow in the
        # fp16 backward passes); DeepSpeed unscales them in its fp32 master copy as usual.
        if not self.fp16:
            return 1.0
        return float(getattr(self.optimizer, "cur_scale", None) or getattr(self.optimizer, "loss_scale", 1.0))

    def train_step(self, documents: list) -> StepOutput:
        """One optimizer step over this rank's ``documents``: 1-D or (B, T) token tensors, or
        dicts with ``input_ids`` and ``labels`` (``uio_ds.algo.as_batches``)."""
        # documents whose source sets its own objective run as their own group, with that objective
        groups = [(objective, [(ids.to(process_group.device()), labels.to(process_group.device())) for ids, labels in as_batches(docs)])
                  for objective, docs in group_by_objective(documents, self.strategy.objective)]
        local_tokens = sum(batch_targets(batches) for _, batches in groups)
        global_tokens = int(process_group.all_reduce_sum([local_tokens])[0])
        loss_scale = self._loss_scale()
        result = None
        for objective, batches in groups:
            with self.strategy.using(objective):
                part = self.strategy.run_batches(self.model, batches, self.world_size * loss_scale / global_tokens,
                                                 lockstep=self.lockstep)
            result = part if result is None else result.merge(part)
        params = self.model.trainable_parameters()
        # A parameter this rank gave no gradient still takes part in the reduction, with zeros.
        buffers = [torch.zeros_like(p) if g is None else g for p, g in zip(params, result.grads)]
        lr = self.lr()  # the rate this step uses (the scheduler advances inside engine.step)
        # A non-finite loss or gradient on any rank skips the update on every rank (no optimizer or
        # scheduler step). Under fp16 an overflowing gradient is DeepSpeed's loss scaler's to handle.
        finite = math.isfinite(result.loss_sum) and (
            self.fp16 or bool(torch.stack([torch.isfinite(g).all() for g in buffers]).all()))  # one host sync
        non_finite = bool(process_group.all_reduce_max(int(not finite)))
        norm = None
        if not non_finite:
            surrogate = self.engine(buffers, loss_scale)
            self.engine.backward(surrogate)
            self.engine.step()
            norm = self.engine.get_global_grad_norm()
        skipped = non_finite or bool(getattr(self.optimizer, "overflow", False))

        # Reduced statistics for logging: global token-weighted loss and per-segment-position loss.
        positions = process_group.all_reduce_max(len(result.segment_loss_sums))
        pad = positions - len(result.segment_loss_sums)
        sums = process_group.all_reduce_sum(
            [result.loss_sum] + list(result.segment_loss_sums) + [0.0] * pad
            + list(map(float, result.segment_num_tokens)) + [0.0] * pad
        )
        stats = {k: v for k, v in result.stats.items() if not k.startswith("max_")}
        reduced = process_group.all_reduce_sum(list(stats.values())) if stats else []
        return StepOutput(
            loss=sums[0] / global_tokens,
            tokens=global_tokens,
            grad_norm=float(norm) if norm is not None else None,
            lr=lr,
            segment_loss_sums=sums[1 : 1 + positions],
            segment_tokens=sums[1 + positions :],
            stats=dict(zip(stats, reduced)),
            skipped=skipped,
            non_finite=non_finite,
        )

    def apply_optimizer_settings(self, optim) -> None:
        """After ``load``: AdamW's betas, eps, weight decay and the peak learning rate of ``optim``
        (an ``OptimConfig``) replace those the checkpoint restored, and the rate of the next step is
        the schedule's (which reads the config's steps and warm-up) at the restored step."""
        scheduler = self.scheduler
        groups = scheduler.optimizer.param_groups  # the optimizer that steps (ZeRO's inner one)
        for group in groups:
            group.update(betas=tuple(optim.betas), eps=optim.eps, weight_decay=optim.weight_decay,
                         initial_lr=optim.lr)
        scheduler.base_lrs = [optim.lr] * len(groups)
        for group, factor in zip(groups, scheduler.lr_lambdas):
            group["lr"] = optim.lr * factor(scheduler.last_epoch)
        scheduler._last_lr = [group["lr"] for group in groups]

    # ------------------------------------------------------------------ checkpoints

    def save(self, directory: str, tag: str, client_state: dict) -> None:
        """Write ZeRO-partitioned optimizer state and the trainable weights (frozen base excluded)."""
        self.engine.save_checkpoint(
            directory, tag=tag, client_state=client_state, save_latest=False, exclude_frozen_parameters=True
        )

    def load(self, directory: str, tag: str) -> dict:
        """Restore what ``save`` wrote; returns the client state."""
        path, client_state = self.engine.load_checkpoint(
            directory, tag=tag, load_module_strict=False, load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if path is None:
            raise FileNotFoundError(f"DeepSpeed found no checkpoint {tag!r} in {directory}")
        return client_state
