"""The memory model's LoRA adapters (encoder, transfer head, optional decoder) on one frozen base:
peft injects them into the base model's layers, one is active at a time, and the trainable
parts (the adapters and the ``<mem>`` embeddings) are kept in a fixed order."""

from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from uio_ds.config import LoRAConfig

ADAPTERS = ("encoder", "transfer", "decoder")


class AdapterMixin:
    """What ``UIOMemoryModel`` does with its adapters; it provides ``config``, ``base``, ``layers``
    and ``num_layers``."""

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

    def _is_trainable_name(self, name: str) -> bool:
        if name == "mem_embeddings":
            return True
        is_lora = ".lora_A." in name or ".lora_B." in name
        return is_lora and (self.config.train_transfer or ".transfer." not in name)

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
