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
  ``[memories ; segment]`` (``[sinks ; memories ; raw window ; segment]`` with the optional
  raw window and attention sinks).

Training code calls ``encode``, ``memory_kv`` and ``decode`` directly, never
the root ``forward`` (which a DeepSpeed engine hooks); ``forward`` is the
plain full-BPTT document loss, the reference the algorithms are checked against.

This module is the passes themselves (encode, memory_kv / compress, decode / forward) with their
contracts; their helpers live beside it: ``adapters`` (peft), ``shapes`` (layers, heads, sizes),
``positions`` (segments, layouts, position ranges), ``parts`` (files and checks), ``budget`` (the
encoder's memory), ``outputs`` (results and loss terms), ``kv`` (caches), ``attention`` (kernels),
``recompute`` (the decoder's activation recompute).
"""

from __future__ import annotations

import os
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from uio_ds.config import UIOConfig
from uio_ds.formats import IGNORE_INDEX
from uio_ds.model import budget, parts, positions
from uio_ds.model.adapters import AdapterMixin
from uio_ds.model.attention import resolve_attention, sdpa_where_masked
from uio_ds.model.base import load_causal_lm
from uio_ds.model.inputs import check_token_ids
from uio_ds.model.kv import MemoryKV, RecentKV, capture_kv, forward_after_cache, prefix_cache
from uio_ds.model.outputs import DecoderOutput, DocumentOutput, distillation_sum
from uio_ds.model.positions import PositionRangeError, segment_targets, split_segments
from uio_ds.model.recompute import recomputed_layers
from uio_ds.model.shapes import ModelShapes
from uio_ds.utils.devices import resolve_device

TORCH_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class _EncoderDone(Exception):
    """Raised by the encoder's capture hook once the last layer's memory is taken."""


class UIOMemoryModel(ModelShapes, AdapterMixin, nn.Module):
    """Encoder, transfer head and decoder of UIO-LLMs over one frozen base causal LM. Its adapters
    are ``AdapterMixin``'s, its positions ``uio_ds.model.positions``', its files ``uio_ds.model.parts``'."""

    def __init__(self, base: nn.Module, config: UIOConfig):
        super().__init__()
        problems = parts.base_model_problems(base.config, config)
        if problems:
            raise ValueError("; ".join(problems))
        self.config = config
        self.base = base
        self.base.requires_grad_(False)
        # taken now: under ZeRO-3 the frozen weights are later held in slices across ranks
        # (a base on the meta device, as the memory planner builds it, has no values to probe)
        self._weights_probe = None if base.get_input_embeddings().weight.is_meta else parts.weights_probe(base)
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
            parts.check_fingerprint(meta, base_config, trained_path, base_path)
        dtype = TORCH_DTYPES[config.dtype]
        placement = {} if device is None else {"device_map": {"": resolve_device(device)}}
        base = load_causal_lm(
            base_path, dtype=dtype, attn_implementation=resolve_attention(config.attention, dtype), **placement
        )
        model = cls(base, config)
        if trained_path is not None:
            model.load_trained(trained_path, allow_other_weights=allow_other_weights)
        return model

    def _initial_mem_embeddings(self, m: int, hidden: int) -> torch.Tensor:
        table = self.base.get_input_embeddings().weight.detach().float()
        if self.config.mem_init == "vocab_mean":
            return table.mean(0, keepdim=True).expand(m, hidden).clone()
        # drawn on the host, so the values do not depend on the device the model is on
        gen = torch.Generator().manual_seed(self.config.seed)
        return torch.randn(m, hidden, generator=gen, device="cpu").to(table.device) * table.std()

    # ------------------------------------------------------------------ shapes (and ``ModelShapes``)

    def recent_kv(self) -> RecentKV | None:
        """A fresh raw recent window and sinks for one batch of texts, or None without either."""
        c = self.config
        return RecentKV(c.recent_tokens, c.sink_tokens) if c.recent_tokens or c.sink_tokens else None

    def read_memories(self, t: int) -> tuple[int, int]:
        """(first, stop): the memories that segment t's decoder reads (``positions.read_memories``)."""
        return positions.read_memories(self.config, t, self.max_positions)

    @property
    def device(self) -> torch.device:
        return self.mem_embeddings.device

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
        layout = positions.encoder_layout(self.config, input_ids.shape[0], n, embeds.dtype, embeds.device)
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
            with self.adapter("encoder"), sdpa_where_masked(self.base.config, bool(layout)):
                self.base.model(inputs_embeds=torch.cat([embeds, mem], dim=1), use_cache=False, **layout)
        except _EncoderDone:
            pass
        finally:
            for h in hooks:
                h.remove()
        if len(captured) != self.num_layers:
            raise RuntimeError(f"encoder captured {len(captured)} of {self.num_layers} layers' memory")
        return torch.stack(captured, dim=1)

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
        return drain(self.compress_steps(input_ids, batch_size))

    def compress_steps(self, input_ids: torch.Tensor, batch_size: int | str | None = "auto") -> Iterator:
        """``compress`` one encoder call at a time: yields None after each call but the last, then
        the ``MemoryKV`` (a server interleaves other work between the calls)."""
        check_token_ids(input_ids, self.vocab_size, "input_ids")
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
            if i + step < flat.shape[0]:
                yield None
        yield MemoryKV(keys, values)

    def kv_bytes_per_token(self) -> int:
        """Bytes of K/V one token takes in every layer's cache (``uio_ds.model.budget``)."""
        return budget.kv_bytes_per_token(self)

    def encode_batch_for(self, tokens: int) -> int:
        """Segments per encoder call when ``tokens`` tokens are compressed without a graph
        (``uio_ds.model.budget.encode_batch_for``)."""
        return budget.encode_batch_for(self, tokens)

    # ------------------------------------------------------------------ decoder

    def fit_positions(self, memory: MemoryKV | None, query_length: int, raw_tokens: int = 0) -> MemoryKV | None:
        """Apply ``memory_window`` and ``position_overflow`` to the memory a decoder call reads
        before ``query_length`` tokens and ``raw_tokens`` of raw recent window
        (``uio_ds.model.positions.fit_memory``)."""
        return positions.fit_memory(self.config, memory, query_length, raw_tokens, self.max_positions)

    def readable_memories(self, num_memories: int) -> int:
        """How many of the ``num_memories`` most recent segment memories a decoder call reads:
        all of them, except under 'drop_oldest', which keeps what ``fit_positions`` keeps. Training
        runs the transfer head on those only: the dropped ones serve no loss."""
        return positions.readable_memories(self.config, num_memories, self.max_positions)

    def max_tokens_supported(self) -> int | None:
        """Longest text whose every decoder call fits in the position range (policy 'error');
        None when a ``memory_window`` keeps every decoder call in range whatever the length."""
        return positions.max_tokens_supported(self.config, self.max_positions)

    def peak_positions(self, total_tokens: int) -> int:
        """Largest number of positions any decoder call uses while reading ``total_tokens`` tokens."""
        return positions.peak_positions(self.config, total_tokens)

    def check_length(self, total_tokens: int) -> None:
        """Refuse, before any work, a text that would pass the position range under policy 'error'."""
        problem = positions.length_problem(self.config, total_tokens, self.max_positions)
        if problem:
            raise PositionRangeError(problem)

    def build_cache(self, memory: MemoryKV | None, read_only: bool = False):
        """A transformers DynamicCache holding the memory K/V rotated at positions 0..M-1
        (``read_only``: a pass reads it but does not extend it)."""
        return prefix_cache(self.base, memory, read_only)

    def decoder_forward(self, input_ids: torch.Tensor, cache=None, logits_to_keep: int = 0,
                        positions: torch.Tensor | None = None, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        """The decoder (the frozen base, plus the decoder LoRA when configured) over ``input_ids``
        after whatever ``cache`` holds; returns logits.

        ``cache`` (from ``build_cache``, possibly extended by earlier calls) is updated in place,
        unless it is read-only (``build_cache(..., read_only=True)``). ``positions`` and
        ``attention_mask``: for rows padded to one cache length (``forward_after_cache``).
        """
        with self.adapter(self.decoder_adapter), recomputed_layers(self):
            return forward_after_cache(self.base, input_ids, cache, logits_to_keep, positions, attention_mask)

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

        ``recent`` (from ``recent_kv``, with ``recent_tokens`` or ``sink_tokens`` > 0): the raw window,
        read after the memories, and the sinks, read before them (``RecentKV.around``); extended by
        this pass's own K/V for the next segment's pass.

        ``regularize_weight`` > 0 with a decoder LoRA adds that weight x KL(base || decoder) on the
        segment read without memory (``regularize_sum``): the LoRA is kept close to the base where
        memory plays no part, so it cannot unlearn language while it learns to read memory.
        """
        if memory is not None and memory.batch_size != input_ids.shape[0]:
            raise ValueError(f"memory has batch {memory.batch_size} but the segment batch is {input_ids.shape[0]}")
        memory = self.fit_positions(memory, input_ids.shape[1], recent.num_tokens if recent is not None else 0)
        prefix = recent.around(memory) if recent is not None else memory
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
            out.score(targets, teacher_logprobs, lm_weight, distill_weight)
            if regularize_weight and self.decoder_adapter is not None:
                out.add_regularization(self._regularization_sum(input_ids, targets != IGNORE_INDEX), regularize_weight)
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
        check_token_ids(input_ids, self.vocab_size, "input_ids")
        labels = input_ids if labels is None else labels
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels shape {tuple(labels.shape)} differs from input_ids shape {tuple(input_ids.shape)}")
        batch, length = input_ids.shape
        bounds = split_segments(length, self.segment_length)
        self.check_length(length)
        memory = None
        if len(bounds) > 1 and self.reads_memory:
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
        """Write the trained parts (``uio_ds.model.parts.save_trained``); returns ``directory``."""
        return parts.save_trained(self, directory)

    def load_trained(self, directory: str, new_adapters: tuple[str, ...] = (), allow_other_weights: bool = False,
                     grow: bool = False) -> None:
        """Load what ``save_trained`` wrote (``uio_ds.model.parts.load_trained``): every tensor must
        match by name and shape, and the saved config must equal this model's but for the runtime
        options. ``new_adapters`` (e.g. ``("decoder",)``) are adapters this model adds to parts saved
        without them; with ``grow`` an adapter may add target modules or raise its rank (what is new
        starts as a no-op); ``allow_other_weights`` loads onto other base weights of the same shape."""
        parts.load_trained(self, directory, new_adapters, allow_other_weights, grow)


def largest_trainable_numel(base_config, config: UIOConfig) -> int:
    """Elements of the largest trainable tensor of the memory model over a base of ``base_config``,
    from a model built on the meta device (shapes only, no weights read)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        base = AutoModelForCausalLM.from_config(base_config)
        return max(p.numel() for p in UIOMemoryModel(base, config).trainable_parameters())


def drain(steps: Iterator):
    """Run a ``*_steps`` generator to its end; its last value."""
    last = None
    for last in steps:
        pass
    return last
