"""The DeepSpeed config of a run, resolved from the training config: its "auto" values filled,
both configs checked against each other, and the place of retained encoder graphs chosen. Plain
dict logic (no DeepSpeed import), so the planner and the checks before any loading can use it."""

from __future__ import annotations

import copy

import torch

from uio_ds.config import ConfigError, TrainConfig

SUPPORTED_ZERO_STAGES = (0, 1, 2, 3)


def persistence_problem(threshold, largest: int) -> str:
    return (f"DeepSpeed zero_optimization.stage3_param_persistence_threshold={threshold} is below the largest "
            f"trainable parameter ({largest} elements): the trainable parts must stay whole on every rank; set it "
            f"to \"auto\" or at least {largest}")


def resolve_ds_config(raw: dict, cfg: TrainConfig, world_size: int, hidden_size: int | None = None,
                      largest_trainable: int | None = None, fp16_refusal: str | None = None) -> tuple[dict, str]:
    """Fill the ``"auto"`` values of a DeepSpeed config from the training config, check that the two
    agree, and choose where retained encoder graphs live. Returns (DeepSpeed config, graph mode).
    ``hidden_size`` (the base model's) sizes ZeRO's communication buckets when they are "auto"
    (hidden_size squared, as Hugging Face's DeepSpeed integration does); ``largest_trainable``
    (elements of the largest trainable tensor) checks an explicit ZeRO-3 persistence threshold.
    ``fp16_refusal``: why this machine's accelerator cannot run fp16 (``engine.fp16_refusal()``),
    None where it can or where the config is planned for another machine.

    Every problem is collected and raised at once, before any model is loaded."""
    ds = copy.deepcopy(raw)
    problems: list[str] = []
    _batch(ds, raw, cfg, world_size, problems)
    _optimizer(ds, cfg, problems)
    _precision(ds, cfg, fp16_refusal, problems)
    stage = _zero(ds, cfg, hidden_size, largest_trainable, problems)
    graph_mode = _graph_mode(ds, cfg, stage, problems)
    ds.pop("activation_checkpointing", None)  # honoured by graph_mode; no DeepSpeed checkpointing API is used
    if problems:
        raise ConfigError("DeepSpeed config", problems)
    return ds, graph_mode


def _fill(problems: list[str], section: dict, key: str, value, where: str, explicit_must_match: bool = True) -> None:
    """``section[key] = value`` where it is "auto" (or absent); an explicit value must equal it."""
    current = section.get(key, "auto")
    if current == "auto":
        section[key] = value
    elif explicit_must_match and current != value:
        problems.append(f"DeepSpeed {where}={current!r} disagrees with the training config ({value!r}): "
                        f"set it to \"auto\" or make the two equal")


def _batch(ds: dict, raw: dict, cfg: TrainConfig, world_size: int, problems: list[str]) -> None:
    """Batch sizes (one step = documents_per_step documents a rank) and gradient clipping."""
    docs = cfg.data.documents_per_step
    _fill(problems, ds, "train_micro_batch_size_per_gpu", docs, "train_micro_batch_size_per_gpu")
    gas = ds.get("gradient_accumulation_steps", "auto")
    if gas not in ("auto", 1):
        problems.append(f"DeepSpeed gradient_accumulation_steps={gas!r}: must be 1 (or \"auto\"); gradients of "
                        "data.documents_per_step documents are accumulated inside one step, set that instead")
    ds["gradient_accumulation_steps"] = 1
    _fill(problems, ds, "train_batch_size", docs * world_size, "train_batch_size")
    if "gradient_clipping" not in raw:
        problems.append("DeepSpeed config has no gradient_clipping: state it (\"auto\" takes optim.grad_clip); "
                        "DeepSpeed's default silently clips at 1.0")
    else:
        _fill(problems, ds, "gradient_clipping", float(cfg.optim.grad_clip), "gradient_clipping")


def _optimizer(ds: dict, cfg: TrainConfig, problems: list[str]) -> None:
    """AdamW from ``optim``; torch's AdamW on CPU ranks; no DeepSpeed scheduler."""
    on_gpu = torch.cuda.is_available()
    opt = ds.setdefault("optimizer", {"type": "AdamW", "params": {}})
    if opt.get("type") not in ("AdamW", "Adam"):
        problems.append(f"DeepSpeed optimizer.type={opt.get('type')!r}: uio_ds configures AdamW (or Adam)")
    params = opt.setdefault("params", {})
    _fill(problems, params, "lr", cfg.optim.lr, "optimizer.params.lr")
    _fill(problems, params, "betas", list(cfg.optim.betas), "optimizer.params.betas")
    _fill(problems, params, "eps", cfg.optim.eps, "optimizer.params.eps")
    _fill(problems, params, "weight_decay", cfg.optim.weight_decay, "optimizer.params.weight_decay")
    # DeepSpeed's fused Adam needs CUDA; on CPU ranks torch's AdamW does the same update.
    _fill(problems, params, "torch_adam", not on_gpu, "optimizer.params.torch_adam", explicit_must_match=False)
    if params["torch_adam"] is False and not on_gpu:
        problems.append("DeepSpeed optimizer.params.torch_adam=false needs CUDA (fused Adam): use \"auto\" on CPU")

    if "scheduler" in ds:
        problems.append("DeepSpeed config has a scheduler section: uio_ds schedules the learning rate itself "
                        "(optim.warmup_steps, optim.min_lr_ratio); remove the section")


def _precision(ds: dict, cfg: TrainConfig, fp16_refusal: str | None, problems: list[str]) -> None:
    """bf16 / fp16 sections from ``uio.dtype``."""
    dtype = cfg.uio.dtype
    for key, wanted in (("bf16", dtype == "bfloat16"), ("fp16", dtype == "float16")):
        section = ds.setdefault(key, {})
        enabled = section.get("enabled", "auto")
        if enabled == "auto":
            section["enabled"] = wanted
        elif bool(enabled) != wanted:
            problems.append(f"DeepSpeed {key}.enabled={enabled} but uio.dtype={dtype!r}: set {key}.enabled to "
                            f"\"auto\" or change uio.dtype")

    if ds["fp16"]["enabled"] and fp16_refusal:
        problems.append(f"{fp16_refusal}: use uio.dtype=\"bfloat16\" (or float32) here; fp16 with loss scaling needs a GPU")


def _zero(ds: dict, cfg: TrainConfig, hidden_size: int | None, largest_trainable: int | None,
          problems: list[str]) -> int:
    """The ZeRO section: its stage (returned), what ZeRO-3 cannot run, buckets and offload devices."""
    zero = ds.setdefault("zero_optimization", {"stage": 2})
    stage = zero.get("stage", 0)
    if stage not in SUPPORTED_ZERO_STAGES:
        problems.append(f"DeepSpeed zero_optimization.stage={stage}: uio_ds supports stages "
                        f"{list(SUPPORTED_ZERO_STAGES)}")
    if stage == 3:
        _zero3(zero, cfg, largest_trainable, problems)
    for key in ("reduce_bucket_size", "allgather_bucket_size"):
        if zero.get(key) == "auto":
            if hidden_size:
                zero[key] = hidden_size * hidden_size
            else:
                problems.append(f"DeepSpeed zero_optimization.{key}=\"auto\" needs the base model's hidden size "
                                "(resolved by the trainer and the planner); give a number here")
    if zero.get("offload_optimizer", {}).get("device") not in (None, "none", "cpu"):
        problems.append("DeepSpeed zero_optimization.offload_optimizer.device: only \"cpu\" is supported")
    return stage


def _zero3(zero: dict, cfg: TrainConfig, largest_trainable: int | None, problems: list[str]) -> None:
    """What ZeRO-3 cannot run yet, and its prefetch and persistence settings. ZeRO-3 gathers each
    module's weights from every rank when the module runs, so the ranks' passes run in lockstep
    (uio_ds.algo.lockstep), which needs self-contained passes."""
    if cfg.algorithm.name not in ("incremental", "unbiased"):
        problems.append(f"DeepSpeed ZeRO-3 with algorithm.name={cfg.algorithm.name!r}: ZeRO-3 runs the "
                        "incremental strategies only; use \"incremental\" or \"unbiased\", or ZeRO-2")
    if cfg.objective.distill > 0:
        problems.append(f"DeepSpeed ZeRO-3 with objective.distill={cfg.objective.distill}: the teacher's passes "
                        "do not run in lockstep yet; use ZeRO-1/2, or objective.distill=0")
    if any(s.objective is not None for s in cfg.data.sources):
        problems.append("DeepSpeed ZeRO-3 with a source's own objective: ranks would run their objectives' "
                        "groups in different numbers, out of lockstep; use ZeRO-1/2, or the run's objective only")
    for name in ("recent_tokens", "sink_tokens"):
        if getattr(cfg.uio, name):
            problems.append(f"DeepSpeed ZeRO-3 with uio.{name}={getattr(cfg.uio, name)}: the passes that fill "
                            f"the raw window and sinks do not run in lockstep yet; use ZeRO-1/2, or uio.{name}=0")
    prefetch = zero.get("stage3_prefetch_bucket_size", "auto")
    if prefetch == "auto":
        zero["stage3_prefetch_bucket_size"] = 0
    elif prefetch != 0:
        problems.append(f"DeepSpeed zero_optimization.stage3_prefetch_bucket_size={prefetch}: prefetching "
                        "follows the module order DeepSpeed recorded, which padding passes change from step "
                        "to step; set it to 0 (or \"auto\")")
    threshold = zero.get("stage3_param_persistence_threshold", "auto")
    if threshold != "auto" and (not isinstance(threshold, (int, float)) or isinstance(threshold, bool)):
        problems.append(f"DeepSpeed zero_optimization.stage3_param_persistence_threshold={threshold!r}: must be "
                        "a number of elements or \"auto\"")
    elif threshold != "auto" and largest_trainable is not None and threshold < largest_trainable:
        problems.append(persistence_problem(threshold, largest_trainable))
    if zero.get("offload_param", {}).get("device") not in (None, "none", "cpu"):
        problems.append("DeepSpeed zero_optimization.offload_param.device: only \"cpu\" is supported")


def _graph_mode(ds: dict, cfg: TrainConfig, stage: int, problems: list[str]) -> str:
    """Where retained encoder graphs live, from ``algorithm.graph_mode`` and the DeepSpeed config."""
    cpu_activations = bool(ds.get("activation_checkpointing", {}).get("cpu_checkpointing", False))
    graph_mode = cfg.algorithm.graph_mode
    if stage == 3:
        # encoder graphs rebuilt at backward (every pass self-contained); CPU activation
        # checkpointing moves the decoder's saved activations to the host
        wanted = "recompute_offload" if cpu_activations else "recompute"
        if graph_mode not in ("auto", wanted):
            problems.append(f"DeepSpeed ZeRO-3{' with activation_checkpointing.cpu_checkpointing' * cpu_activations} "
                            f"and algorithm.graph_mode={graph_mode!r}: ZeRO-3 rebuilds encoder graphs at backward; "
                            f"use \"auto\" or \"{wanted}\"")
        graph_mode = wanted
    elif graph_mode == "auto":
        graph_mode = "offload" if cpu_activations else "keep"
    elif cpu_activations and graph_mode not in ("offload", "recompute_offload"):
        problems.append(f"DeepSpeed activation_checkpointing.cpu_checkpointing=true but algorithm.graph_mode="
                        f"{graph_mode!r}: use graph_mode \"auto\" or \"offload\"")
    return graph_mode
