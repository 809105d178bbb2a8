"""The UIO memory model over any Hugging Face Llama-family causal LM.

Three roles share one set of frozen base weights:

* encoder: base + encoder LoRA reads ``[segment ; <mem> x m]``; the memory of
  the segment is, at every layer, the attention input (after that layer's
  input norm) at the ``<mem>`` positions: a ``(L, m, H)`` stack;
* transfer head: per layer ``K = k_proj(h_mem)``, ``V = v_proj(h_mem)`` with a
  second LoRA on k_proj / v_proj, giving memory K/V with the model's own
  number of KV heads;
* decoder: the frozen base (adapters off) reads a segment with the memory K/V
  of earlier segments as a prefix cache; RoPE positions start at 0 over
  ``[memories ; segment]``.

Training code calls ``encode``, ``memory_kv`` and ``decode`` directly, never
the root ``forward`` (which a DeepSpeed engine hooks); ``forward`` is the
plain full-BPTT document loss, the reference the algorithms are checked against.
"""

from __future__ import annotations

import contextlib
import os
import warnings
from dataclasses import dataclass
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from uio_ds.config import LoRAConfig, UIOConfig
from uio_ds.formats import IGNORE_INDEX
from uio_ds.model.attention import resolve_attention
from uio_ds.model.base import load_causal_lm
from uio_ds.model.kv import MemoryKV, RecentKV, capture_kv, forward_after_cache, prefix_cache

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
ADAPTERS = ("encoder", "transfer", "decoder")
MEM_EMBEDDINGS_FILE = "mem_embeddings.safetensors"
# Options that choose how a trained model runs, not what was trained: they may differ on load.
# Reading a prompt, the encoder's working memory is kept within 1/ENCODE_BUDGET_SHARE of the KV
# cache full attention would hold for the same tokens (UIOMemoryModel.encode_batch_for).
ENCODE_BUDGET_SHARE = 8
RUNTIME_OPTIONS = ("dtype", "attention", "position_overflow", "memory_window", "recent_tokens", "decoder_recompute")
TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Shape facts a saved set of trained parts must share with the base model it is loaded onto.
_FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


class _EncoderDone(Exception):
    """Raised by the encoder's capture hook once the last layer's memory is taken."""


class PositionRangeError(ValueError):
    """[memories ; segment] would pass the base model's position range."""


@dataclass
class DecoderOutput:
    """What ``decode`` returns: logits, and the summed loss over ``num_tokens`` targets.

    ``loss_sum`` is the training objective: the next-token loss, or with a teacher
    ``lm_weight * lm_loss_sum + distill_weight * distill_sum``."""

    logits: torch.Tensor
    loss_sum: torch.Tensor | None = None
    num_tokens: int = 0
    memory_tokens: int = 0
    lm_loss_sum: torch.Tensor | None = None
    """Summed next-token cross-entropy over the targets (equal to ``loss_sum`` without a teacher)."""
    distill_sum: torch.Tensor | None = None
    """Summed KL(teacher || decoder) over the targets' positions (with a teacher)."""
    regularize_sum: torch.Tensor | None = None
    """Summed KL(base || decoder LoRA) without memory over the targets' positions (when regularised)."""

    @property
    def loss(self) -> torch.Tensor | None:
        """Mean next-token loss over the scored targets."""
        if self.loss_sum is None:
            return None
        return self.loss_sum / max(self.num_tokens, 1)


@dataclass
class DocumentOutput:
    """What ``forward`` returns for a batch of documents: token-weighted loss and per-segment sums."""

    loss_sum: torch.Tensor
    num_tokens: int
    segment_loss_sums: list[torch.Tensor]
    segment_num_tokens: list[int]
    lm_loss_sum: float = 0.0
    """The next-token loss alone (``loss_sum`` is the objective)."""
    distill_sum: float = 0.0
    """The summed KL to the teacher (0 without one)."""

    @property
    def loss(self) -> torch.Tensor:
        return self.loss_sum / max(self.num_tokens, 1)


def default_device() -> torch.device:
    """Where a model runs when no device is named: this process's CUDA device when there is one
    (``LOCAL_RANK``'s under a launcher), the CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> :func:`default_device`; any other name as ``torch.device`` reads it, checked
    here so a device this machine lacks fails before the weights are read."""
    if device == "auto":
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name ({err}): use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA device (torch "
                             f"{torch.__version__} sees none); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def split_segments(length: int, segment_length: int) -> list[tuple[int, int]]:
    """(start, stop) of each segment of a ``length``-token text: full segments, then a residual of 1..l tokens."""
    if length < 1:
        raise ValueError("cannot segment an empty text: it has no tokens")
    return [(s, min(s + segment_length, length)) for s in range(0, length, segment_length)]


def segment_targets(input_ids: torch.Tensor, start: int, stop: int) -> torch.Tensor:
    """Next-token targets of positions [start, stop): target i is token i+1, across the segment border
    (pass the labels instead of the ids to leave tokens marked ``IGNORE_INDEX`` unscored).

    The document's last token has no successor and is marked ``IGNORE_INDEX``, so every
    token after the first is scored exactly once over a document.
    """
    targets = input_ids[:, start + 1 : stop + 1]
    if targets.shape[1] < stop - start:
        pad = input_ids.new_full((input_ids.shape[0], stop - start - targets.shape[1]), IGNORE_INDEX)
        targets = torch.cat([targets, pad], dim=1)
    return targets


def stepwise_layout(n: int, m: int, device: torch.device | str | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Positions and visibility of the 'stepwise' encoder layout over ``[segment (n) ; <mem> x m]``.

    ``<mem>`` token i reads the segment's first e_i = ceil((i+1) * n / m) tokens and itself, and
    sits at RoPE position e_i, right after the last token it reads; segment tokens are causal
    among themselves and never see a ``<mem>`` token. For a full segment (n = l) e_i = (i+1) * l/m,
    the layout of the official UIO-LLMs code. Returns ``positions`` (n+m,) and ``visible``
    (n+m, n+m), True where a query (row) may attend to a key (column).
    """
    ends = ((torch.arange(m, device=device) + 1) * n + m - 1) // m
    positions = torch.cat([torch.arange(n, device=device), ends])
    keys = torch.arange(n + m, device=device)
    visible = keys.unsqueeze(0) <= torch.arange(n + m, device=device).unsqueeze(1)  # causal
    visible[n:, :n] = keys[:n].unsqueeze(0) < ends.unsqueeze(1)
    visible[n:, n:] = torch.eye(m, dtype=torch.bool, device=device)
    return positions, visible


def _base_fingerprint(base_config) -> dict:
    return {k: getattr(base_config, k, None) for k in _FINGERPRINT_KEYS}


def spread_indices(n: int, count: int) -> torch.Tensor:
    """``count`` indices spread evenly over 0..n-1, both ends included, in integer arithmetic (a
    float32 linspace rounds n-1 up past the end once n exceeds 2**24, as a real model's
    embedding matrix does)."""
    return torch.arange(count, dtype=torch.long) * (n - 1) // max(count - 1, 1)


def weights_probe(base: nn.Module, count: int = 16) -> list[float]:
    """A few of the base model's weights, spread over its input embeddings, first and last
    layers and final norm: parts trained on one set of weights are refused on another set of
    the same shape. Compared with a tolerance (``_check_weights``), so loading the same weights
    in another dtype still passes."""
    inner = base.model
    tensors = [base.get_input_embeddings().weight, inner.layers[0].self_attn.q_proj.weight,
               inner.layers[-1].mlp.down_proj.weight, inner.norm.weight]
    values = []
    with torch.no_grad():
        for t in tensors:
            flat = t.detach().reshape(-1)
            index = spread_indices(flat.numel(), count).to(flat.device)
            values += [float(f"{v:.4g}") for v in flat[index].float().cpu().tolist()]
    return values


def _check_weights(saved: list[float] | None, base: nn.Module, trained_path: str) -> None:
    if not saved:
        return  # parts saved before the probe existed
    have = torch.tensor(weights_probe(base, len(saved) // 4))
    want = torch.tensor(saved)
    if have.shape != want.shape or not torch.allclose(have, want, rtol=2e-2, atol=1e-3):
        raise ValueError(
            f"the UIO parts in {trained_path} were trained on other base weights of the same shape (a probe of "
            f"{len(saved)} weights differs): load them onto the base model they were trained with, or pass "
            "allow_other_weights=True if you mean to"
        )


class UIOMemoryModel(nn.Module):
    """Encoder, transfer head and decoder of UIO-LLMs over one frozen base causal LM."""

    def __init__(self, base: nn.Module, config: UIOConfig):
        super().__init__()
        problems = base_model_problems(base.config, config)
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.base = base
        self.base.requires_grad_(False)
        # taken now: under ZeRO-3 the frozen weights are later held in slices across ranks
        # (a base on the meta device, as the memory planner builds it, has no values to probe)
        self._weights_probe = None if base.get_input_embeddings().weight.is_meta else weights_probe(base)
        self._inject_adapters()
        hidden = base.config.hidden_size
        self.mem_embeddings = nn.Parameter(self._initial_mem_embeddings(config.num_mem_tokens, hidden))
        # every part on the base's device (peft leaves an adapter behind where it finds another
        # adapter of the same layer on the meta device)
        self.to(device=base.get_input_embeddings().weight.device, dtype=TORCH_DTYPES[config.dtype])
        self._trainable_names = [n for n, _ in self.named_parameters() if self._is_trainable_name(n)]
        self._refresh_trainable()
        self._active_adapter: str | None = None
        self._set_adapter(None, force=True)

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_pretrained(
        cls,
        base_path: str,
        config: UIOConfig | None = None,
        trained_path: str | None = None,
        device: str | torch.device | None = None,
        allow_other_weights: bool = False,
    ) -> "UIOMemoryModel":
        """Load a base model from a local directory and add UIO parts.

        With ``trained_path`` the UIO config and trained weights come from that directory
        (written by ``save_trained``); ``config`` must then be omitted. With ``device`` the
        weights are loaded straight onto it (``device_map``: no full copy in host memory first)
        and the UIO parts are made there; ``"auto"`` is :func:`default_device`.
        """
        from transformers import AutoConfig

        if not os.path.isdir(base_path):
            raise FileNotFoundError(
                f"base model directory {base_path!r} does not exist: pass a local directory holding "
                "config.json and weights (no hub downloads are made)"
            )
        meta = None
        if trained_path is not None:
            if config is not None:
                raise ValueError("pass either config or trained_path, not both: a trained model carries its config")
            config, meta = UIOConfig.load(trained_path)
        config = config or UIOConfig()
        base_config = AutoConfig.from_pretrained(base_path)
        if meta:
            _check_fingerprint(meta, base_config, trained_path, base_path)
        dtype = TORCH_DTYPES[config.dtype]
        placement = {} if device is None else {"device_map": {"": resolve_device(device)}}
        base = load_causal_lm(
            base_path, dtype=dtype, attn_implementation=resolve_attention(config.attention, dtype), **placement
        )
        model = cls(base, config)
        if trained_path is not None:
            model.load_trained(trained_path, allow_other_weights=allow_other_weights)
        return model

    def _inject_adapters(self) -> None:
        from peft import inject_adapter_in_model

        for name in self.adapter_names:
            lora = self._lora_config(name)
            missing = [t for t in lora.target_modules if not hasattr(self.layers[0].self_attn, t)
                       and not hasattr(getattr(self.layers[0], "mlp", None), t)]
            if missing:
                raise ValueError(f"{name}_lora.target_modules: {missing} not found in the base model's layers")
            peft_config = self._peft_config(name)
            with warnings.catch_warnings():
                # peft warns that a second adapter is added to the same model: that is the design.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                with torch.random.fork_rng(devices=[]):
                    torch.manual_seed(self.config.seed + ADAPTERS.index(name))
                    inject_adapter_in_model(peft_config, self.base, adapter_name=name)
        from peft.tuners.tuners_utils import BaseTunerLayer

        self._lora_layers = [m for m in self.base.modules() if isinstance(m, BaseTunerLayer)]

    def _peft_config(self, adapter: str):
        from peft import LoraConfig

        lora = self._lora_config(adapter)
        # A regex over the decoder layers only, so no other module that happens to share a
        # name (a vision tower, a value head) is adapted. The memory is the *input* of every
        # layer's attention, so the last layer's weights never reach it: an encoder adapter
        # there would be a parameter without gradient, and is not created.
        last = self.num_layers - 1 if adapter == "encoder" else self.num_layers
        layer_ids = "|".join(str(i) for i in range(last))
        pattern = rf".*layers\.({layer_ids})\.(self_attn|mlp)\.(" + "|".join(lora.target_modules) + r")$"
        return LoraConfig(
            r=lora.rank,
            lora_alpha=lora.alpha,
            lora_dropout=lora.dropout,
            target_modules=pattern,
            bias="none",
            task_type="CAUSAL_LM",
            base_model_name_or_path=getattr(self.base.config, "_name_or_path", None),
        )

    def _lora_config(self, adapter: str) -> LoRAConfig:
        return {"encoder": self.config.encoder_lora, "transfer": self.config.transfer_lora,
                "decoder": self.config.decoder_lora}[adapter]

    @property
    def adapter_names(self) -> tuple[str, ...]:
        """The adapters this model has: encoder and transfer, plus decoder when configured."""
        return ADAPTERS if self.config.decoder_lora is not None else ADAPTERS[:2]

    @property
    def decoder_adapter(self) -> str | None:
        """The adapter every decoder pass runs with: None (the frozen base) unless decoder_lora is set."""
        return "decoder" if self.config.decoder_lora is not None else None

    def _initial_mem_embeddings(self, m: int, hidden: int) -> torch.Tensor:
        table = self.base.get_input_embeddings().weight.detach().float()
        if self.config.mem_init == "vocab_mean":
            return table.mean(0, keepdim=True).expand(m, hidden).clone()
        # drawn on the host, so the values do not depend on the device the model is on
        gen = torch.Generator().manual_seed(self.config.seed)
        return torch.randn(m, hidden, generator=gen, device="cpu").to(table.device) * table.std()

    def _is_trainable_name(self, name: str) -> bool:
        if name == "mem_embeddings":
            return True
        is_lora = ".lora_A." in name or ".lora_B." in name
        return is_lora and (self.config.train_transfer or ".transfer." not in name)

    # ------------------------------------------------------------------ shapes

    @property
    def layers(self) -> nn.ModuleList:
        return self.base.model.layers

    @property
    def num_layers(self) -> int:
        return self.base.config.num_hidden_layers

    @property
    def num_kv_heads(self) -> int:
        return self.base.config.num_key_value_heads

    @property
    def head_dim(self) -> int:
        cfg = self.base.config
        return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads

    @property
    def num_mem_tokens(self) -> int:
        return self.config.num_mem_tokens

    @property
    def segment_length(self) -> int:
        return self.config.segment_length

    @property
    def recent_segments(self) -> int:
        """k: segments the decoder reads raw before its own (``recent_tokens / segment_length``)."""
        return self.config.recent_tokens // self.segment_length

    def recent_kv(self) -> RecentKV | None:
        """A fresh raw recent window for one batch of texts, or None without one."""
        return RecentKV(self.config.recent_tokens) if self.config.recent_tokens else None

    def read_memories(self, t: int) -> tuple[int, int]:
        """(first, stop): the memories that segment t's decoder reads, ``first..stop-1``: those of
        the segments before its raw window, of which the most recent ``readable_memories``."""
        stop = max(0, t - self.recent_segments)
        return stop - self.readable_memories(stop), stop

    @property
    def max_positions(self) -> int:
        return self.base.config.max_position_embeddings

    @property
    def device(self) -> torch.device:
        return self.mem_embeddings.device

    # ------------------------------------------------------------------ trainable parts

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Encoder LoRA, transfer-head LoRA and <mem> embeddings, in a fixed order."""
        return list(self._trainable)

    def _refresh_trainable(self) -> None:
        params = dict(self.named_parameters())
        self._trainable = [params[n] for n in self._trainable_names]

    def _apply(self, fn, recurse=True):
        # A conversion may replace parameter tensors (to_empty, swap-on-conversion): the cached
        # list must follow, or gradients would be taken with respect to dead tensors.
        out = super()._apply(fn, recurse)
        if hasattr(self, "_trainable_names"):
            self._refresh_trainable()
        return out

    def named_trainable_parameters(self) -> Iterator[tuple[str, nn.Parameter]]:
        for name, p in self.named_parameters():
            if self._is_trainable_name(name):
                yield name, p

    def trainable_summary(self) -> dict:
        """Counts of trainable and total parameters and the trainable share."""
        trainable = sum(p.numel() for p in self.trainable_parameters())
        total = sum(p.numel() for p in self.parameters())
        return {"trainable": trainable, "total": total, "share": trainable / total}

    def _restore_trainable(self) -> None:
        # peft's adapter switching flips requires_grad of the adapters it turns off, and autograd
        # then drops their gradients even for graphs built before the switch: every switch is
        # followed by turning all trainable parts back on.
        for p in self.trainable_parameters():
            p.requires_grad_(True)

    def _set_adapter(self, name: str | None, force: bool = False) -> None:
        # Switching walks every adapted layer; a decode loop asks for the same state on
        # every token, so an unchanged state is not switched again.
        if not force and name == self._active_adapter:
            return
        self._active_adapter = name
        for layer in self._lora_layers:
            if name is None:
                layer.enable_adapters(False)
            else:
                layer.enable_adapters(True)
                layer.set_adapter(name)
        self._restore_trainable()

    @contextlib.contextmanager
    def adapter(self, name: str | None) -> Iterator[None]:
        """Run the base model with one adapter active ('encoder', 'transfer', 'decoder' when
        configured) or none (None)."""
        if name is not None and name not in self.adapter_names:
            raise ValueError(f"unknown adapter {name!r}: choose one of {list(self.adapter_names)} or None")
        self._set_adapter(name)
        try:
            yield
        finally:
            self._set_adapter(None)

    # ------------------------------------------------------------------ encoder

    def encode(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Compress segments (N, n) with 1 <= n <= l, all in one batched call.

        Returns the memory, shape ``(N, num_layers, m, hidden)``: per layer, the attention
        input at the <mem> positions. Segments are independent, so N may mix documents.
        """
        if input_ids.ndim != 2 or input_ids.shape[1] < 1:
            raise ValueError(f"encode expects token ids of shape (segments, length), got {tuple(input_ids.shape)}")
        n = input_ids.shape[1]
        if n > self.segment_length:
            raise ValueError(
                f"segment of {n} tokens is longer than segment_length={self.segment_length}: split it first "
                "(uio_ds.model.memory_model.split_segments)"
            )
        embeds = self.base.get_input_embeddings()(input_ids)
        mem = self.mem_embeddings.to(embeds.dtype).unsqueeze(0).expand(input_ids.shape[0], -1, -1)
        layout = self._encoder_layout(input_ids.shape[0], n, embeds.dtype, embeds.device)
        captured: list[torch.Tensor] = []
        # Under ZeRO-3 a module left by an exception would leave its gathered weights and
        # DeepSpeed's bookkeeping behind: the call then runs to its end.
        stop_early = not hasattr(self.base.get_input_embeddings().weight, "ds_id")

        def keep_mem_positions(_module, _inputs, output):
            # a copy of the <mem> positions: a view would keep the layer's whole input alive
            # (every layer's (N, n + m, hidden) until the call ends, 8x full attention's at 8K)
            captured.append(output[:, n:].clone())
            if len(captured) == self.num_layers and stop_early:
                # Nothing after the last layer's input norm reaches the memory: stop the
                # forward here instead of running that layer's attention and MLP for nothing.
                raise _EncoderDone

        hooks = [layer.input_layernorm.register_forward_hook(keep_mem_positions) for layer in self.layers]
        try:
            with self.adapter("encoder"), self._masked_attention(bool(layout)):
                self.base.model(inputs_embeds=torch.cat([embeds, mem], dim=1), use_cache=False, **layout)
        except _EncoderDone:
            pass
        finally:
            for h in hooks:
                h.remove()
        if len(captured) != self.num_layers:
            raise RuntimeError(f"encoder captured {len(captured)} of {self.num_layers} layers' memory")
        return torch.stack(captured, dim=1)

    def _encoder_layout(self, batch: int, n: int, dtype: torch.dtype, device: torch.device) -> dict:
        """Extra arguments of the encoder's base-model call for ``memory_layout``: none for
        'appended' (plain causal attention over positions 0..n+m-1), explicit positions and an
        additive 4D mask for 'stepwise' (see ``stepwise_layout``)."""
        if self.config.memory_layout == "appended":
            return {}
        positions, visible = stepwise_layout(n, self.num_mem_tokens, device)
        # Additive, not boolean: eager attention adds the mask to the scores as it is.
        mask = torch.zeros(visible.shape, dtype=dtype, device=device).masked_fill(~visible, torch.finfo(dtype).min)
        size = n + self.num_mem_tokens
        return {"position_ids": positions.unsqueeze(0).expand(batch, -1),
                "attention_mask": mask.view(1, 1, size, size).expand(batch, 1, size, size)}

    @contextlib.contextmanager
    def _masked_attention(self, masked: bool) -> Iterator[None]:
        # flash-attn takes no arbitrary mask: a stepwise encoder call runs through torch SDPA
        # (the encoder reads l + m tokens, so its attention is a small part of its cost);
        # the decoder keeps the configured kernel.
        config = self.base.config
        switch = masked and config._attn_implementation == "flash_attention_2"
        if switch:
            config._attn_implementation = "sdpa"
        try:
            yield
        finally:
            if switch:
                config._attn_implementation = "flash_attention_2"

    # ------------------------------------------------------------------ transfer head

    def memory_kv(self, memory: torch.Tensor) -> MemoryKV:
        """Transfer head: memory (N, L, m, H) -> un-rotated K/V (L, N, kv_heads, m, head_dim)."""
        if memory.ndim != 4 or memory.shape[1] != self.num_layers:
            raise ValueError(
                f"memory must have shape (segments, {self.num_layers}, m, hidden), got {tuple(memory.shape)}"
            )
        n_seg, _, m, _ = memory.shape
        keys, values = [], []
        # Without a trained transfer head the frozen base projections make the K/V.
        with self.adapter("transfer" if self.config.train_transfer else None):
            for i, layer in enumerate(self.layers):
                h = memory[:, i]
                keys.append(layer.self_attn.k_proj(h).view(n_seg, m, self.num_kv_heads, self.head_dim).transpose(1, 2))
                values.append(layer.self_attn.v_proj(h).view(n_seg, m, self.num_kv_heads, self.head_dim).transpose(1, 2))
        return MemoryKV(torch.stack(keys), torch.stack(values))

    def compress(self, input_ids: torch.Tensor, batch_size: int | str | None = "auto") -> MemoryKV:
        """Memory K/V of texts (B, c*l) made of whole segments: one row per text, its c memories
        in order. Encoder and transfer head run on ``batch_size`` segments at a time, which bounds
        the working memory of a long prompt read without a graph: ``"auto"`` (default) takes as
        many as :meth:`encode_batch_for` allows, ``None`` all at once. The K/V are written into
        their final place batch by batch (no list of parts, no concatenated copy)."""
        batch, length = input_ids.shape
        if length == 0 or length % self.segment_length:
            raise ValueError(f"compress takes whole segments: {length} tokens is not a multiple of "
                             f"segment_length={self.segment_length}")
        count = length // self.segment_length
        flat = input_ids.reshape(batch * count, self.segment_length)
        if batch_size == "auto":
            batch_size = self.encode_batch_for(input_ids.numel())
        elif batch_size is not None and (not isinstance(batch_size, int) or batch_size < 1):
            raise ValueError(f"batch_size={batch_size!r}: must be an integer >= 1, 'auto' or None")
        step, m = batch_size or flat.shape[0], self.num_mem_tokens
        keys = values = None
        for i in range(0, flat.shape[0], step):
            part = self.memory_kv(self.encode(flat[i : i + step]))
            if keys is None:
                shape = (self.num_layers, batch, self.num_kv_heads, count * m, self.head_dim)
                keys, values = part.keys.new_empty(shape), part.values.new_empty(shape)
            for j in range(part.batch_size):  # flat row i + j is segment (i + j) % count of text (i + j) // count
                text, seg = divmod(i + j, count)
                keys[:, text, :, seg * m : (seg + 1) * m] = part.keys[:, j]
                values[:, text, :, seg * m : (seg + 1) * m] = part.values[:, j]
        return MemoryKV(keys, values)

    def kv_bytes_per_token(self) -> int:
        """Bytes of K/V one token takes in every layer's cache (the base model's, in its dtype)."""
        return 2 * self.num_layers * self.num_kv_heads * self.head_dim * self.mem_embeddings.element_size()

    def encode_batch_for(self, tokens: int) -> int:
        """Segments per encoder call when ``tokens`` tokens are compressed without a graph: as
        many as keep the call's working memory within 1/8 of the KV cache that full attention
        would hold for those tokens (so that reading a prompt costs UIO less memory than it costs
        full attention, at every length), and at least one. One segment's working memory is
        measured once per device and dtype (``torch.cuda.max_memory_allocated`` on CUDA, tensor
        storage on the CPU) by compressing a segment."""
        budget = tokens * self.kv_bytes_per_token() // ENCODE_BUDGET_SHARE
        return max(1, budget // max(self._segment_encode_bytes(), 1))

    def _segment_encode_bytes(self) -> int:
        key = (str(self.device), self.mem_embeddings.dtype)
        cached = getattr(self, "_encode_bytes", {})
        if key not in cached:
            from uio_ds.utils.memory_tracker import TensorMemoryTracker

            ids = torch.full((1, self.segment_length), 3, dtype=torch.long, device=self.device)
            with torch.no_grad():
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                    torch.cuda.reset_peak_memory_stats(self.device)
                    before = torch.cuda.memory_allocated(self.device)
                    self.memory_kv(self.encode(ids))
                    used = torch.cuda.max_memory_allocated(self.device) - before
                else:
                    with TensorMemoryTracker(device_type=self.device.type) as tracker:
                        self.memory_kv(self.encode(ids))
                    used = tracker.peak
            cached[key] = int(used)
            self._encode_bytes = cached
        return cached[key]

    # ------------------------------------------------------------------ decoder

    def fit_positions(self, memory: MemoryKV | None, query_length: int, raw_tokens: int = 0) -> MemoryKV | None:
        """Apply ``position_overflow`` when [memory ; raw window ; query] exceeds the base model's
        positions (``raw_tokens``: what the raw recent window holds now).

        'error' raises; 'drop_oldest' keeps the most recent floor((max_positions - l - recent) / m)
        memories, a fixed window that leaves room for a full segment and a full raw window, so
        training and streaming generation see the same memories whatever the query length.
        """
        if query_length > self.segment_length:
            raise ValueError(
                f"decoder input of {query_length} tokens is longer than segment_length={self.segment_length}"
            )
        window = self.config.memory_window
        if memory is not None and window is not None and memory.num_tokens > window * self.num_mem_tokens:
            memory = memory.token_slice(memory.num_tokens - window * self.num_mem_tokens, memory.num_tokens)
        num_memory = memory.num_tokens if memory is not None else 0
        if self.config.position_overflow == "drop_oldest":
            keep = self._droppable_room() // self.num_mem_tokens * self.num_mem_tokens
            if num_memory <= keep:
                return memory
            return memory.token_slice(num_memory - keep, num_memory) if keep > 0 else None
        used = num_memory + raw_tokens + query_length
        if used > self.max_positions:
            raw = f" + {raw_tokens} raw recent tokens" if raw_tokens else ""
            raise PositionRangeError(
                f"{num_memory} memory tokens{raw} + {query_length} segment tokens need {used} positions, "
                f"but the base model has max_position_embeddings={self.max_positions} "
                f"(about {self.max_tokens_supported()} tokens of text at segment_length={self.segment_length}, "
                f"compression_ratio={self.config.compression_ratio}); use a larger compression_ratio, a "
                "shorter input, or position_overflow='drop_oldest'"
            )
        return memory

    def readable_memories(self, num_memories: int) -> int:
        """How many of the ``num_memories`` most recent segment memories a decoder call reads:
        all of them, except under 'drop_oldest', which keeps what ``fit_positions`` keeps. Training
        runs the transfer head on those only: the dropped ones serve no loss."""
        if self.config.memory_window is not None:
            num_memories = min(num_memories, self.config.memory_window)
        if self.config.position_overflow != "drop_oldest":
            return num_memories
        return min(num_memories, self._droppable_room() // self.num_mem_tokens)

    def _droppable_room(self) -> int:
        """Positions left for memories under 'drop_oldest': a full segment and a full raw window first."""
        return max(0, self.max_positions - self.segment_length - self.config.recent_tokens)

    def max_tokens_supported(self) -> int | None:
        """Longest text whose every decoder call fits in the position range (policy 'error');
        None when a ``memory_window`` keeps every decoder call in range whatever the length."""
        return max_tokens_supported(self.config, self.max_positions)

    def peak_positions(self, total_tokens: int) -> int:
        """Largest number of positions any decoder call uses while reading ``total_tokens`` tokens."""
        return peak_positions(self.config, total_tokens)

    def check_length(self, total_tokens: int) -> None:
        """Refuse, before any work, a text that would pass the position range under policy 'error'."""
        problem = length_problem(self.config, total_tokens, self.max_positions)
        if problem:
            raise PositionRangeError(problem)

    def build_cache(self, memory: MemoryKV | None, read_only: bool = False):
        """A transformers DynamicCache holding the memory K/V rotated at positions 0..M-1
        (``read_only``: a pass reads it but does not extend it)."""
        return prefix_cache(self.base, memory, read_only)

    def decoder_forward(self, input_ids: torch.Tensor, cache=None, logits_to_keep: int = 0) -> torch.Tensor:
        """The decoder (the frozen base, plus the decoder LoRA when configured) over ``input_ids``
        after whatever ``cache`` holds; returns logits.

        ``cache`` (from ``build_cache``, possibly extended by earlier calls) is updated in place,
        unless it is read-only (``build_cache(..., read_only=True)``).
        """
        with self.adapter(self.decoder_adapter), self._recomputed_layers():
            return forward_after_cache(self.base, input_ids, cache, logits_to_keep)

    @contextlib.contextmanager
    def _recomputed_layers(self) -> Iterator[None]:
        """With ``decoder_recompute`` under autograd: every decoder layer runs inside a
        non-reentrant ``torch.utils.checkpoint``, which keeps the layer's inputs and runs it again
        at backward time. transformers' own gradient checkpointing drops the KV cache, which here
        holds the memory, hence this: the cache must be read-only (a rerun must not extend it),
        and the rerun, which happens after this pass has left its adapter, sets that adapter
        again for its duration."""
        if not (self.config.decoder_recompute and torch.is_grad_enabled()):
            yield
            return
        from torch.utils.checkpoint import checkpoint

        adapter = self._active_adapter

        def recomputed(forward):
            def run(*args, **kwargs):
                previous = self._active_adapter
                self._set_adapter(adapter)
                try:
                    return forward(*args, **kwargs)
                finally:
                    self._set_adapter(previous)

            return lambda *args, **kwargs: checkpoint(run, *args, use_reentrant=False, **kwargs)

        for layer in self.layers:  # an instance attribute shadows the class's forward
            layer.forward = recomputed(layer.forward)
        try:
            yield
        finally:
            for layer in self.layers:
                del layer.forward

    def decode(
        self,
        input_ids: torch.Tensor,
        memory: MemoryKV | None = None,
        targets: torch.Tensor | None = None,
        teacher_logprobs: torch.Tensor | None = None,
        lm_weight: float = 1.0,
        distill_weight: float = 1.0,
        recent: RecentKV | None = None,
        regularize_weight: float = 0.0,
    ) -> DecoderOutput:
        """Decoder pass of one segment (B, n) after the memories in ``memory`` (B rows, M tokens).

        ``targets`` are aligned with the inputs: ``targets[b, i]`` is the token position i
        should predict (``IGNORE_INDEX`` to skip). The loss is summed; see ``DecoderOutput.loss``.

        The loss is ``lm_weight`` x the next-token loss; with ``teacher_logprobs`` (B, n, vocab),
        from ``teacher_logprobs`` of the base reading the whole text, ``distill_weight`` x KL(teacher
        || decoder) is added, both summed over the positions ``targets`` scores (distillation from
        the base reading everything: the loss sits where the far context changes the prediction).

        ``recent`` (from ``recent_kv``, with ``recent_tokens`` > 0): the raw window, read after the
        memories, and extended by this pass's own K/V for the next segment's pass.

        ``regularize_weight`` > 0 with a decoder LoRA adds that weight x KL(base || decoder) on the
        segment read without memory (``regularize_sum``): the LoRA is kept close to the base where
        memory plays no part, so it cannot unlearn language while it learns to read memory.
        """
        if memory is not None and memory.batch_size != input_ids.shape[0]:
            raise ValueError(f"memory has batch {memory.batch_size} but the segment batch is {input_ids.shape[0]}")
        raw = recent.kv if recent is not None else None
        memory = self.fit_positions(memory, input_ids.shape[1], raw.num_tokens if raw is not None else 0)
        parts = [p for p in (memory, raw) if p is not None]
        prefix = MemoryKV.cat(parts) if parts else None
        # the pass's cache is dropped after it: read-only, so a recomputed layer sees the same K/V
        cache = self.build_cache(prefix, read_only=self.config.decoder_recompute) if prefix is not None else None
        if recent is None:
            logits = self.decoder_forward(input_ids, cache)
        else:
            with capture_kv(self.base) as found:
                logits = self.decoder_forward(input_ids, cache)
            recent.add(found[0])
        out = DecoderOutput(logits=logits, memory_tokens=memory.num_tokens if memory is not None else 0)
        if targets is not None:
            if targets.shape != input_ids.shape:
                raise ValueError(f"targets shape {tuple(targets.shape)} differs from input shape {tuple(input_ids.shape)}")
            wide = logits.to(torch.promote_types(logits.dtype, torch.float32))
            out.lm_loss_sum = F.cross_entropy(wide.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_INDEX,
                                              reduction="sum")
            out.num_tokens = int((targets != IGNORE_INDEX).sum().item())
            out.loss_sum = out.lm_loss_sum if lm_weight == 1.0 else lm_weight * out.lm_loss_sum
            if teacher_logprobs is not None:
                if teacher_logprobs.shape[:2] != input_ids.shape:
                    raise ValueError(f"teacher_logprobs of shape {tuple(teacher_logprobs.shape)} do not cover the "
                                     f"segment's {tuple(input_ids.shape)} positions")
                out.distill_sum = distillation_sum(wide, teacher_logprobs, targets != IGNORE_INDEX)
                out.loss_sum = out.loss_sum + distill_weight * out.distill_sum
            if regularize_weight and self.decoder_adapter is not None:
                out.regularize_sum = self._regularization_sum(input_ids, targets != IGNORE_INDEX)
                out.loss_sum = out.loss_sum + regularize_weight * out.regularize_sum
        return out

    def _regularization_sum(self, input_ids: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
        """KL(base || decoder with its LoRA), both reading ``input_ids`` alone, summed at ``scored``."""
        base = self.teacher_logprobs(input_ids, self.build_cache(None))
        logits = self.decoder_forward(input_ids, None)
        return distillation_sum(logits.to(torch.promote_types(logits.dtype, torch.float32)), base, scored)

    @torch.no_grad()
    def teacher_logprobs(self, input_ids: torch.Tensor, cache) -> torch.Tensor:
        """Log-probabilities (float32) of the frozen base (no adapter) over ``input_ids`` after
        ``cache``, the raw K/V of what it has read before (``build_cache(None)`` at the start of a
        text, extended in place): full attention, the distillation teacher."""
        with self.adapter(None):
            logits = forward_after_cache(self.base, input_ids, cache)
        return F.log_softmax(logits.float(), dim=-1)

    # ------------------------------------------------------------------ whole documents

    def forward(self, input_ids: torch.Tensor, labels: torch.Tensor | None = None, teacher=None,
                lm_weight: float = 1.0, distill_weight: float = 1.0, regularize_weight: float = 0.0) -> DocumentOutput:
        """Full-BPTT loss of documents (B, T): all segments compressed in parallel, each
        segment decoded after the memories of every earlier segment, gradients through all.
        ``labels`` (default: ``input_ids``) are the tokens to predict, ``IGNORE_INDEX`` where a
        token is read but not scored (Hugging Face's convention; the shift is done here).
        ``teacher`` (a fresh ``FullAttentionTeacher``): the loss is distilled from it, weighted
        as in ``decode``."""
        labels = input_ids if labels is None else labels
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} differs from input_ids shape {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        bounds = split_segments(length, self.segment_length)
        self.check_length(length)
        memory = None
        if len(bounds) > 1:
            # The last segment's memory would serve no loss: never build it.
            memory = self.compress(input_ids[:, : bounds[-1][0]], batch_size=None)
        sums, counts, lm_sum, distill_sum = [], [], 0.0, 0.0
        recent = self.recent_kv()
        m = self.num_mem_tokens
        for t, (start, stop) in enumerate(bounds):
            first, last = self.read_memories(t)
            previous = memory.token_slice(first * m, last * m) if last > first else None
            taught = teacher.next_segment(input_ids[:, start:stop]) if teacher is not None else None
            out = self.decode(input_ids[:, start:stop], previous, segment_targets(labels, start, stop), taught,
                              lm_weight, distill_weight, recent, regularize_weight)
            sums.append(out.loss_sum)
            counts.append(out.num_tokens)
            lm_sum += out.lm_loss_sum.item()
            distill_sum += out.distill_sum.item() if out.distill_sum is not None else 0.0
        return DocumentOutput(torch.stack(sums).sum(), sum(counts), sums, counts, lm_sum, distill_sum)

    # ------------------------------------------------------------------ save / load

    def save_trained(self, directory: str) -> str:
        """Write the trained parts: peft-format ``encoder/`` and ``transfer/`` adapters,
        ``mem_embeddings.safetensors`` and ``uio_config.json`` (with the base model's shape)."""
        from peft import get_peft_model_state_dict
        from safetensors.torch import save_file

        os.makedirs(directory, exist_ok=True)
        for name in self.adapter_names:
            sub = os.path.join(directory, name)
            self._peft_config(name).save_pretrained(sub)
            state = get_peft_model_state_dict(self.base, adapter_name=name)
            # The key prefix a PeftModel writes, so peft's own loader reads these files too.
            state = {f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()}
            save_file(state, os.path.join(sub, "adapter_model.safetensors"))
        save_file(
            {"mem_embeddings": self.mem_embeddings.detach().contiguous().cpu()},
            os.path.join(directory, MEM_EMBEDDINGS_FILE),
        )
        self.config.save(directory, extra={**_base_fingerprint(self.base.config),
                                           "weights_probe": self._weights_probe or weights_probe(self.base)})
        return directory

    def load_trained(self, directory: str, new_adapters: tuple[str, ...] = (), allow_other_weights: bool = False) -> None:
        """Load what ``save_trained`` wrote; every tensor must match by name and shape, and the
        saved config must equal this model's except for the runtime options (dtype, attention,
        position_overflow, memory_window).

        ``new_adapters`` (e.g. ``("decoder",)``) are adapters this model adds to parts saved without
        them: they keep their initial values (a decoder LoRA on top of a trained memory).
        ``allow_other_weights``: load onto base weights other than those the parts were trained on
        (same shape), which is refused by default."""
        from peft import get_peft_model_state_dict, set_peft_model_state_dict
        from safetensors.torch import load_file

        check_trained_parts(directory, self.config, self.base.config, new_adapters)
        config, meta = UIOConfig.load(directory)
        added = [name for name in new_adapters if name in self.adapter_names and config.to_dict().get(f"{name}_lora") is None]
        if not allow_other_weights:
            _check_weights(meta.get("weights_probe"), self.base, directory)
        for name in self.adapter_names:
            if name in added:
                continue
            path = os.path.join(directory, name, "adapter_model.safetensors")
            if not os.path.isfile(path):
                raise FileNotFoundError(f"{path} is missing: {directory} is not a complete save_trained output")
            state = {k.removeprefix("base_model.model."): v for k, v in load_file(path).items()}
            expected = get_peft_model_state_dict(self.base, adapter_name=name)
            if set(state) != set(expected):
                raise ValueError(
                    f"{path}: adapter tensors do not match the model (missing {sorted(set(expected) - set(state))[:3]}, "
                    f"unexpected {sorted(set(state) - set(expected))[:3]})"
                )
            bad = [k for k in state if state[k].shape != expected[k].shape]
            if bad:
                raise ValueError(f"{path}: shape mismatch for {bad[:3]}")
            set_peft_model_state_dict(self.base, state, adapter_name=name)
        mem = load_file(os.path.join(directory, MEM_EMBEDDINGS_FILE))["mem_embeddings"]
        if mem.shape != self.mem_embeddings.shape:
            raise ValueError(f"saved <mem> embeddings have shape {tuple(mem.shape)}, expected {tuple(self.mem_embeddings.shape)}")
        with torch.no_grad():
            self.mem_embeddings.copy_(mem)
        self._set_adapter(None, force=True)


def distillation_sum(logits: torch.Tensor, teacher_logprobs: torch.Tensor, scored: torch.Tensor) -> torch.Tensor:
    """Summed KL(teacher || student) = sum_v p_T(v) (log p_T(v) - log p_S(v)) over the ``scored``
    positions; ``logits`` (B, n, V) are the student's, ``teacher_logprobs`` (B, n, V) log p_T."""
    student = F.log_softmax(logits, dim=-1)
    teacher = teacher_logprobs.to(student.dtype)
    per_position = (teacher.exp() * (teacher - student)).sum(-1)
    return torch.where(scored, per_position, 0.0).sum()  # no boolean indexing: the planner runs this on fake tensors


def peak_positions(config: UIOConfig, total_tokens: int) -> int:
    """Largest number of positions any decoder call uses while reading ``total_tokens`` tokens."""
    l, m, w = config.segment_length, config.num_mem_tokens, config.memory_window
    k = config.recent_tokens // l
    c = (total_tokens - 1) // l

    def used(t: int, n: int) -> int:  # segment t of n tokens: its memories, its raw window, itself
        memories = max(0, t - k)
        return (min(memories, w) if w is not None else memories) * m + min(k, t) * l + n

    last = used(c, total_tokens - c * l)
    return max(last, used(c - 1, l)) if c >= 1 else last


def max_tokens_supported(config: UIOConfig, limit: int) -> int | None:
    """Longest text whose every decoder call fits in ``limit`` positions (policy 'error'); None
    when a ``memory_window`` keeps every decoder call in range whatever the length."""
    l, m = config.segment_length, config.num_mem_tokens
    if config.memory_window is not None and config.memory_window * m + config.recent_tokens + l <= limit:
        return None
    if config.recent_tokens:
        # the largest text whose peak fits: peak_positions grows with the length
        low, high = 0, (limit // m + 2) * l
        while low < high:
            mid = (low + high + 1) // 2
            low, high = (mid, high) if peak_positions(config, mid) <= limit else (low, mid - 1)
        return low
    # A full segment still fits after c memories while c*m + l <= limit; after one more
    # memory, a final residual can use whatever positions are left.
    c = (limit - l) // m
    return (c + 1) * l + max(0, limit - (c + 1) * m)


def length_problem(config: UIOConfig, total_tokens: int, limit: int) -> str | None:
    """Why a text of ``total_tokens`` tokens would pass ``limit`` positions under policy 'error'
    (None when it fits, or under another policy)."""
    if config.position_overflow != "error" or peak_positions(config, total_tokens) <= limit:
        return None
    return (f"{total_tokens} tokens need {peak_positions(config, total_tokens)} positions but the base model has "
            f"max_position_embeddings={limit}; the longest supported text is "
            f"{max_tokens_supported(config, limit)} tokens at segment_length={config.segment_length}, "
            f"compression_ratio={config.compression_ratio}; use a larger compression_ratio, "
            "a shorter input, or position_overflow='drop_oldest'")


def base_model_problems(base_config, config: UIOConfig) -> list[str]:
    """What makes a base model (its transformers config) unfit for UIO parts of ``config``."""
    problems = []
    model_type = getattr(base_config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        problems.append(f"unsupported architecture {model_type!r}: uio_ds needs a Llama-family decoder with RoPE "
                        f"and k_proj/v_proj attention; supported model_type values are {list(SUPPORTED_MODEL_TYPES)}")
    if getattr(base_config, "num_hidden_layers", 0) < 2:
        problems.append(f"the base model has {getattr(base_config, 'num_hidden_layers', 0)} layer(s); UIO needs at "
                        "least 2 (the encoder adapter lives in every layer but the last)")
    positions_needed = config.segment_length + config.num_mem_tokens
    if positions_needed > base_config.max_position_embeddings:
        problems.append(f"segment_length={config.segment_length} plus {config.num_mem_tokens} <mem> tokens needs "
                        f"{positions_needed} positions for the encoder, but the base model has "
                        f"max_position_embeddings={base_config.max_position_embeddings}; use a shorter segment_length")
    return problems


_WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


def largest_trainable_numel(base_config, config: UIOConfig) -> int:
    """Elements of the largest trainable tensor of the memory model over a base of ``base_config``,
    from a model built on the meta device (shapes only, no weights read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_config)
        return max(p.numel() for p in UIOMemoryModel(base, config).trainable_parameters())


def check_model_dir(base_path: str, config: UIOConfig):
    """Everything about a base model directory that its files tell without loading weights:
    config.json readable, a supported architecture that fits ``config``, weight files and
    tokenizer files present. Returns the transformers config; raises ValueError (or
    FileNotFoundError) naming every problem."""
    import glob

    from transformers import AutoConfig

    if not os.path.isfile(os.path.join(base_path, "config.json")):
        raise FileNotFoundError(f"model_path {base_path!r} has no config.json: give a local model directory "
                                "(make prepare writes models/smollm2; uio-ds make-tiny writes a tiny one)")
    try:
        base_config = AutoConfig.from_pretrained(base_path)
    except (ValueError, OSError, KeyError) as err:
        raise ValueError(f"{os.path.join(base_path, 'config.json')} cannot be read as a model config: "
                         f"{str(err).splitlines()[0]}") from None
    problems = base_model_problems(base_config, config)
    if not any(glob.glob(os.path.join(base_path, pattern)) for pattern in _WEIGHT_FILES):
        problems.append(f"{base_path} holds no weights ({' or '.join(_WEIGHT_FILES)}): copy the checkpoint's weight "
                        "files there, or prepare it with uio-ds prepare-model")
    if not any(os.path.isfile(os.path.join(base_path, f)) for f in _TOKENIZER_FILES):
        problems.append(f"{base_path} holds no tokenizer ({', '.join(_TOKENIZER_FILES)}): save the tokenizer into "
                        "the model directory")
    if problems:
        raise ValueError(f"model_path {base_path!r}: " + "; ".join(problems))
    return base_config


def check_trained_parts(directory: str, config: UIOConfig, base_config, new_adapters: tuple[str, ...] = ()) -> None:
    """The checks of ``load_trained`` that need only ``uio_config.json``: the saved UIO config
    equals ``config`` (but for runtime options and ``new_adapters`` added now) and the parts
    were trained on a base model of this shape. Raises ValueError / FileNotFoundError."""
    saved_config, meta = UIOConfig.load(directory)
    saved, here = saved_config.to_dict(), config.to_dict()
    added = {f"{name}_lora" for name in new_adapters if saved.get(f"{name}_lora") is None and here.get(f"{name}_lora")}
    differ = sorted(k for k in saved if k not in RUNTIME_OPTIONS and saved[k] != here[k] and k not in added)
    if differ:
        raise ValueError(
            f"the UIO config saved in {directory} differs from this model's in {differ}: build the model with "
            f"UIOMemoryModel.from_pretrained(base_path, trained_path={directory!r})"
        )
    _check_fingerprint(meta, base_config, directory, getattr(base_config, "_name_or_path", "?"))

def _check_fingerprint(meta: dict, base_config, trained_path: str, base_path: str) -> None:
    have = _base_fingerprint(base_config)
    diff = {k: (meta.get(k), have[k]) for k in _FINGERPRINT_KEYS if k in meta and meta.get(k) != have[k]}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs base {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"the UIO parts in {trained_path} were trained on a different base model than {base_path} ({detail}); "
            "load them onto the base model they were trained with"
        )
