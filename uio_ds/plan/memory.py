"""Peak accelerator memory of one uio_ds training step, per rank, without the accelerator.

Two parts, added:

* **What the step allocates** (activations, retained encoder graphs, memories, memory K/V,
  gradient buffers, backward temporaries) is not computed from a formula: uio_ds's own
  training-step code (the TBPTT strategy over the memory model) runs on *fake tensors*
  (``torch._subclasses.fake_tensor.FakeTensorMode``: shapes, dtypes and storages, no data),
  and ``TensorMemoryTracker`` records the live bytes at the high-water mark, attributed to
  the part of the model that allocated them. The plan follows the code as it changes.
  Fake tensors live on the CPU device, which stands for the accelerator: on this PyTorch
  build autograd refuses fake CUDA tensors (it asks the CUDA runtime for a stream). Tensors
  offloaded by activation offload go to the meta device here, so they are not counted.
* **What persists between steps** comes from the parameter counts and DeepSpeed's
  documented ZeRO partitioning (ZeRO paper, Rajbhandari et al. 2020, section 5; DeepSpeed's
  ``stage_1_and_2.py``): frozen weights stay whole on every rank (uio_ds never hands them to
  DeepSpeed); trainable weights in the training dtype; with bf16/fp16, fp32 master weights;
  Adam's two fp32 moments; fp32 gradient partition (ZeRO-2) or full gradients (ZeRO-0/1);
  the contiguous-gradient reduce bucket (``reduce_bucket_size`` elements, twice with
  ``overlap_comm``). ZeRO-1/2 divide optimizer state (and ZeRO-2 gradients) by the number
  of ranks; optimizer offload moves them to the host.

Not counted: the CUDA context and kernels' workspace (about 0.3-0.5 GB on current GPUs),
allocator fragmentation, and NCCL buffers; keep a margin of 1-2 GB on the card for them.

``plan(...)`` in fake mode is the estimate; ``measure(...)`` runs the same step on real CPU
tensors and measures it with the same tracker, which is how the estimator is validated.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import asdict, dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from uio_ds.algo import strategy_from_config
from uio_ds.algo.objective import Objective
from uio_ds.config import ALGORITHMS, AlgorithmConfig, LoRAConfig, UIOConfig
from uio_ds.utils.memory_tracker import TensorMemoryTracker

GIB = 2**30

# Published configurations (config.json of each model); random weights are honest for memory.
SHAPES: dict[str, dict] = {
    "llama2-7b": dict(model_type="llama", hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=32, vocab_size=32000,
                      max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5),
    "llama3-8b": dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                      max_position_embeddings=8192, rope_theta=500000.0, rms_norm_eps=1e-5),
    "mistral-7b": dict(model_type="mistral", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                       num_attention_heads=32, num_key_value_heads=8, vocab_size=32000,
                       max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-5,
                       sliding_window=None),
    "llama2-13b": dict(model_type="llama", hidden_size=5120, intermediate_size=13824, num_hidden_layers=40,
                       num_attention_heads=40, num_key_value_heads=40, vocab_size=32000,
                       max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5),
    "llama2-70b": dict(model_type="llama", hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                       num_attention_heads=64, num_key_value_heads=8, vocab_size=32000,
                       max_position_embeddings=4096, rope_theta=10000.0, rms_norm_eps=1e-5),
    "smollm2-135m": dict(model_type="llama", hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, vocab_size=49152,
                         max_position_embeddings=8192, rope_theta=100000.0, rms_norm_eps=1e-5,
                         tie_word_embeddings=True),
    "llama3.2-1b": dict(model_type="llama", hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                        num_attention_heads=32, num_key_value_heads=8, vocab_size=128256,
                        max_position_embeddings=131072, rope_theta=500000.0, rms_norm_eps=1e-5,
                        tie_word_embeddings=True),
    "qwen2-7b": dict(model_type="qwen2", hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
                     num_attention_heads=28, num_key_value_heads=4, vocab_size=152064,
                     max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                     tie_word_embeddings=False),
}

STEP_PARTS = ("encoder graphs", "memories", "memory K/V", "decoder activations", "teacher",
              "gradients and backward temporaries")
from uio_ds.model.memory_model import TORCH_DTYPES as _DTYPES  # noqa: E402


@dataclass
class PlanSettings:
    """One training step's settings (per rank)."""

    segment_length: int = 1024
    compression_ratio: int = 32
    algorithm: str = "unbiased"
    window: int | None = 2
    document_tokens: int = 100_000
    micro_batch: int = 1
    """Documents of equal length processed together as one (micro_batch, tokens) batch."""
    dtype: str = "bfloat16"
    zero_stage: int = 2
    ranks: int = 8
    activation_offload: bool = True
    """Retained encoder graphs offloaded to the host (graph_mode 'offload'); False keeps them."""
    recompute: bool = False
    """Encoder graphs rebuilt at backward time (graph_mode 'recompute'; with ``activation_offload``
    'recompute_offload': the decoder's saved activations still go to the host)."""
    optimizer_offload: bool = False
    param_offload: bool = False
    """ZeRO-3's ``offload_param``: the frozen weights' partitions live in host memory."""
    lora_rank: int = 16
    reduce_bucket_size: int = 200_000_000
    overlap_comm: bool = False
    contiguous_gradients: bool = True
    distill: float = 0.0
    """objective.distill: with a weight > 0 the step also runs the teacher (the frozen base reading
    the document with full attention, no gradient): its KV cache grows to the document's length
    (within the position range), one segment's log-probabilities at a time."""
    position_overflow: str = "auto"
    """'auto': 'drop_oldest' when the document passes the model's position range, else 'error'."""
    uio: UIOConfig | None = None
    """A training config's memory model (adapters, layout, decoder LoRA); its segment_length,
    compression_ratio and dtype must equal the fields above. None: LoRA of ``lora_rank`` on the
    encoder's q/v and the transfer head's k/v."""

    def validate(self) -> None:
        problems = []
        if self.algorithm not in ALGORITHMS:
            problems.append(f"algorithm={self.algorithm!r}: choose one of {list(ALGORITHMS)}")
        if self.dtype not in _DTYPES:
            problems.append(f"dtype={self.dtype!r}: choose one of {list(_DTYPES)}")
        if self.zero_stage not in (0, 1, 2, 3):
            problems.append(f"zero_stage={self.zero_stage}: choose 0, 1, 2 or 3")
        for name in ("segment_length", "compression_ratio", "document_tokens", "micro_batch", "ranks", "lora_rank"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)}: must be >= 1")
        if self.document_tokens < 2:
            problems.append("document_tokens must be >= 2")
        if self.uio is not None:
            for name in ("segment_length", "compression_ratio", "dtype"):
                if getattr(self.uio, name) != getattr(self, name):
                    problems.append(f"uio.{name}={getattr(self.uio, name)!r} differs from {name}={getattr(self, name)!r}")
        if problems:
            raise ValueError("invalid memory-plan settings:\n  " + "\n  ".join(problems))

    @property
    def graph_mode(self) -> str:
        if self.recompute:
            return "recompute_offload" if self.activation_offload else "recompute"
        return "offload" if self.activation_offload else "keep"


@dataclass
class MemoryPlan:
    """Peak bytes per rank: persistent parts + what the step allocates at its high-water mark."""

    model: str
    settings: dict
    mode: str
    """'fake' (estimate) or 'real' (measured on CPU tensors)."""
    persistent: dict[str, int]
    step: dict[str, int]
    step_peak: int
    seconds: float
    trainable_parameters: int
    frozen_parameters: int
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return sum(self.persistent.values()) + self.step_peak

    def as_dict(self) -> dict:
        out = asdict(self)
        out["peak"] = self.peak
        out["peak_gib"] = round(self.peak / GIB, 3)
        return out

    def table_rows(self) -> list[tuple[str, str, float]]:
        rows = [("persistent", k, v / GIB) for k, v in self.persistent.items()]
        rows += [("step peak", k, self.step.get(k, 0) / GIB) for k in STEP_PARTS]
        rows.append(("total", "peak per rank", self.peak / GIB))
        return rows


# ------------------------------------------------------------------ models


def zero_settings(zero: dict) -> dict:
    """The PlanSettings fields that come from a DeepSpeed config's ``zero_optimization`` section."""
    return dict(reduce_bucket_size=int(zero.get("reduce_bucket_size", 200_000_000)),
                overlap_comm=bool(zero.get("overlap_comm", False)),
                contiguous_gradients=bool(zero.get("contiguous_gradients", True)),
                param_offload=zero.get("offload_param", {}).get("device") == "cpu")


def base_config(source: str):
    """A transformers config from a named shape (``SHAPES``) or a local model directory."""
    from transformers import AutoConfig

    if source in SHAPES:
        spec = dict(SHAPES[source])
        return AutoConfig.for_model(spec.pop("model_type"), **spec)
    import os

    if not os.path.isdir(source):
        raise FileNotFoundError(
            f"model {source!r} is neither a named shape ({', '.join(SHAPES)}) nor a local model directory"
        )
    return AutoConfig.from_pretrained(source)


def uio_config(settings: PlanSettings) -> UIOConfig:
    overflow = "error" if settings.position_overflow == "auto" else settings.position_overflow
    if settings.uio is not None:
        return dataclasses.replace(settings.uio, attention="sdpa", position_overflow=overflow)
    lora = dict(rank=settings.lora_rank, alpha=2.0 * settings.lora_rank)
    return UIOConfig(segment_length=settings.segment_length, compression_ratio=settings.compression_ratio,
                     encoder_lora=LoRAConfig(target_modules=("q_proj", "v_proj"), **lora),
                     transfer_lora=LoRAConfig(target_modules=("k_proj", "v_proj"), **lora),
                     dtype=settings.dtype, attention="sdpa", position_overflow=overflow)


def build_model(source: str, settings: PlanSettings, fake_mode=None):
    """The memory model over ``source``: random weights of the right shapes, built on fake
    tensors inside ``fake_mode`` when given, on real CPU tensors otherwise (a directory's
    real weights are loaded in that case, so that a measurement uses the real model)."""
    from transformers import AutoModelForCausalLM

    from uio_ds.model.memory_model import UIOMemoryModel

    cfg = base_config(source)
    config = uio_config(settings)
    if fake_mode is None and source not in SHAPES:
        model = UIOMemoryModel.from_pretrained(source, config)
    else:
        # Built on the meta device (shapes only, instant), then given fake storage on the CPU.
        with torch.device("meta"):
            base = AutoModelForCausalLM.from_config(cfg, dtype=_DTYPES[settings.dtype], attn_implementation="sdpa")
            model = UIOMemoryModel(base, config)
        with fake_mode:
            model.to_empty(device="cpu")
        model.base.tie_weights()  # to_empty gives each module its own tensor, untying shared ones
    if settings.position_overflow == "auto" and model.peak_positions(settings.document_tokens) > model.max_positions:
        model.config.position_overflow = "drop_oldest"
    return model


# ------------------------------------------------------------------ the step


@contextlib.contextmanager
def _attributed(model, tracker: TensorMemoryTracker):
    """Label what the memory model's parts allocate (instance attributes shadow the methods)."""

    def wrap(fn, label, output_label=None):
        def inner(*args, **kwargs):
            with tracker.label(label):
                out = fn(*args, **kwargs)
            if output_label is not None:
                tracker.relabel(out, output_label)
            return out

        return inner

    originals = {"encode": ("encoder graphs", "memories"), "memory_kv": ("memory K/V", None),
                 "build_cache": ("memory K/V", None), "decode": ("decoder activations", None),
                 "teacher_logprobs": ("teacher", None)}
    for name, (label, output_label) in originals.items():
        setattr(model, name, wrap(getattr(model, name), label, output_label))
    try:
        yield
    finally:
        for name in originals:
            delattr(model, name)


def run_step(model, settings: PlanSettings, offload_to_meta: bool) -> tuple[int, dict[str, int], float]:
    """One strategy step over a random document on ``model``'s tensors (fake or real, CPU);
    returns (peak bytes, bytes per part at the peak, seconds). ``offload_to_meta`` sends
    offloaded activations to the meta device (fake mode), where they are not counted."""
    # offloaded copies go to the meta device, where the tracker does not count them
    strategy = step_strategy(settings, offload_device="meta" if offload_to_meta else "cpu")
    doc = step_document(model, settings)
    tracker = TensorMemoryTracker(device_type="cpu", default_label="gradients and backward temporaries")
    start = time.perf_counter()
    with _attributed(model, tracker), tracker:
        strategy.run(model, doc)
    return tracker.peak, dict(tracker.peak_by_label), time.perf_counter() - start


def step_strategy(settings: PlanSettings, offload_device: str = "cpu"):
    """The gradient strategy of the planned step (the same one a measurement on a GPU runs)."""
    algorithm = AlgorithmConfig(name=settings.algorithm, window=settings.window, graph_mode=settings.graph_mode)
    objective = Objective(distill=settings.distill) if settings.distill else None
    return strategy_from_config(algorithm, objective, offload_device=offload_device)


def step_document(model, settings: PlanSettings) -> torch.Tensor:
    """The planned step's random document(s), made on the host (a step on a GPU moves them there)."""
    gen = torch.Generator().manual_seed(0)
    return torch.randint(0, model.base.config.vocab_size, (settings.micro_batch, settings.document_tokens),
                         generator=gen)


def zero3_layout(model) -> tuple[int, int]:
    """ZeRO-3's view of a memory model, as uio_ds's engine configures it: (frozen elements kept
    whole on every rank, elements of the largest module's partitioned weights). Every tensor up
    to the largest trainable one persists whole (``stage3_param_persistence_threshold`` "auto");
    the others are partitioned and a module's own are gathered whole while it runs."""
    threshold = max(p.numel() for p in model.trainable_parameters())
    trainable = {id(p) for p in model.trainable_parameters()}
    whole = sum(p.numel() for p in model.parameters() if id(p) not in trainable and p.numel() <= threshold)
    gathered = max((sum(p.numel() for p in m.parameters(recurse=False) if p.numel() > threshold)
                    for m in model.modules()), default=0)
    return whole, gathered


def persistent_bytes(trainable: int, frozen: int, settings: PlanSettings,
                     zero3: tuple[int, int] = (0, 0)) -> tuple[dict[str, int], list[str]]:
    """Per-rank bytes that live across steps, from DeepSpeed's ZeRO partitioning. ``zero3``:
    ``zero3_layout``'s (frozen elements kept whole, largest gathered module's elements)."""
    b = torch.tensor([], dtype=_DTYPES[settings.dtype]).element_size()
    mixed = settings.dtype != "float32"
    n, stage = settings.ranks, settings.zero_stage
    shard = (lambda x: x / n) if stage >= 1 else (lambda x: x)
    on_device = not settings.optimizer_offload
    notes = []
    if stage == 3:
        whole, gathered = zero3
        frozen_bytes = whole * b + (0 if settings.param_offload else (frozen - whole) * b / n)
    else:
        frozen_bytes, gathered = frozen * b, 0
    parts = {
        "frozen weights": frozen_bytes,
        **({"gathered weights (ZeRO-3)": gathered * b} if stage == 3 else {}),
        # uio_ds keeps the trainable parts whole on every rank under ZeRO-3 too
        "trainable weights": trainable * b,
        "fp32 master weights": shard(4 * trainable) if mixed and on_device else 0,
        "Adam moments (fp32)": shard(8 * trainable) if on_device else 0,
    }
    if stage >= 2:
        grads = 4 * trainable / n if on_device else 0  # fp32 partition owned by this rank
    else:
        grads = 4 * trainable if mixed or stage == 1 else b * trainable  # whole fp32 accumulator
    parts["gradients (ZeRO)"] = grads
    if stage >= 1 and settings.contiguous_gradients:
        # ZeRO-2/3 stage low-precision gradients, ZeRO-1 stages the fp32 accumulator
        staging = 4 if stage == 1 else b
        parts["reduce bucket"] = settings.reduce_bucket_size * staging * (2 if settings.overlap_comm else 1)
    if stage == 3:
        notes.append("ZeRO-3: frozen weights partitioned over the ranks"
                     + (" and held in host memory (offload_param)" if settings.param_offload else "")
                     + ", one module's weights gathered whole at a time (prefetch off); padding passes run one "
                     "segment while this rank waits and are not counted")
        notes.append("ZeRO-3 loading: each rank loads the base into host memory and partitions it from there, so "
                     "the host holds the base once per rank at start-up and no card ever holds it whole")
    if settings.optimizer_offload:
        notes.append("optimizer offload: master weights, Adam moments and the fp32 gradient partition live in host memory")
    return {k: int(v) for k, v in parts.items()}, notes


def _plan(model, source: str, settings: PlanSettings, mode: str) -> MemoryPlan:
    trainable = sum(p.numel() for p in model.trainable_parameters())
    frozen = sum(p.numel() for p in model.parameters()) - trainable
    peak, parts, seconds = run_step(model, settings, offload_to_meta=mode == "fake")
    persistent, notes = persistent_bytes(trainable, frozen, settings,
                                         zero3_layout(model) if settings.zero_stage == 3 else (0, 0))
    if model.config.position_overflow == "drop_oldest":
        notes.append(f"the document passes the model's {model.max_positions} positions: decoders read the most "
                     "recent memories that fit (position_overflow='drop_oldest')")
    s = asdict(settings)
    s["graph_mode"] = settings.graph_mode
    return MemoryPlan(model=source, settings=s, mode=mode, persistent=persistent,
                      step={k: int(v) for k, v in parts.items() if v}, step_peak=int(peak), seconds=round(seconds, 2),
                      trainable_parameters=trainable, frozen_parameters=frozen, notes=notes)


class ScalarStandIns(TorchDispatchMode):
    """Answers ``.item()`` of a fake tensor, which has no data, with 1 (True for a bool): the
    training step reads a few scalars (token counts, loss sums, "is anything scored") that
    scale numbers but never shapes, so a stand-in leaves the memory it plans unchanged."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else 1
        return func(*args, **(kwargs or {}))


def plan(source: str, settings: PlanSettings) -> MemoryPlan:
    """The estimate: the training step on fake tensors (no memory used, no accelerator needed)."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    settings.validate()
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    model = build_model(source, settings, fake_mode=mode)
    with mode, ScalarStandIns():
        return _plan(model, source, settings, "fake")


def measure(source: str, settings: PlanSettings, model=None) -> MemoryPlan:
    """The same step on real CPU tensors, measured by the same tracker (validation)."""
    settings.validate()
    model = model if model is not None else build_model(source, settings)
    return _plan(model, source, settings, "real")


__all__ = ["SHAPES", "STEP_PARTS", "PlanSettings", "MemoryPlan", "plan", "measure", "persistent_bytes", "base_config",
           "zero_settings", "zero3_layout", "step_strategy", "step_document", "uio_config", "ScalarStandIns"]
