"""The trained parts of a memory model on disk, and what a base model and a set of parts must
share: ``save_trained``/``load_trained`` (peft-format adapters, the ``<mem>`` embeddings, the
UIO config with the base model's shape and a probe of its weights), and the checks that read
files alone (a model directory, a saved config) before any weights are loaded."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from uio_ds.config import UIOConfig

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2")
MEM_EMBEDDINGS_FILE = "mem_embeddings.safetensors"
# Options that choose how a trained model runs, not what was trained: they may differ on load.
RUNTIME_OPTIONS = ("dtype", "attention", "position_overflow", "memory_window", "recent_tokens", "sink_tokens",
                   "decoder_recompute")
# Shape facts a saved set of trained parts must share with the base model it is loaded onto.
_FINGERPRINT_KEYS = ("model_type", "hidden_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads")


def base_fingerprint(base_config) -> dict:
    return {k: getattr(base_config, k, None) for k in _FINGERPRINT_KEYS}


def spread_indices(n: int, count: int) -> torch.Tensor:
    """``count`` indices spread evenly over 0..n-1, both ends included, in integer arithmetic (a
    float32 linspace rounds n-1 up past the end once n exceeds 2**24, as a real model's
    embedding matrix does)."""
    return torch.arange(count, dtype=torch.long) * (n - 1) // max(count - 1, 1)


def weights_probe(base: nn.Module, count: int = 16) -> list[float]:
    """A few of the base model's weights, spread over its input embeddings, first and last
    layers and final norm: parts trained on one set of weights are refused on another set of
    the same shape. Compared with a tolerance (``check_weights``), so loading the same weights
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


def check_weights(saved: list[float] | None, base: nn.Module, trained_path: str) -> None:
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


@dataclass(frozen=True)
class LoRAGrowth:
    """How one LoRA config grows a saved one: target modules added, the rank raised."""

    targets: tuple[str, ...]
    """Target modules added (their LoRA starts at its initial values, B = 0)."""
    rank: tuple[int, int]
    """(saved rank, new rank); the saved A and B fill the first rows / columns, the rest of B is 0."""


def lora_growth(saved: dict | None, here: dict | None) -> LoRAGrowth | None:
    """How the LoRA config ``here`` grows ``saved`` (both as in ``UIOConfig.to_dict``), so that the
    grown adapter first computes exactly what the saved one does: it keeps every saved target
    module and may add others, and it may raise the rank with alpha / rank (the update's scale)
    unchanged; dropout equal. None when it is not such a growth, or the two are equal."""
    if saved is None or here is None or saved == here:
        return None
    if saved["dropout"] != here["dropout"] or not set(saved["target_modules"]) <= set(here["target_modules"]):
        return None
    if here["rank"] < saved["rank"] or here["alpha"] * saved["rank"] != saved["alpha"] * here["rank"]:
        return None
    added = tuple(t for t in here["target_modules"] if t not in saved["target_modules"])
    return LoRAGrowth(added, (saved["rank"], here["rank"]))


def memory_growth(saved: dict, here: dict) -> int | None:
    """How many ``<mem>`` rows the UIO config ``here`` gives each row of ``saved`` (both as in
    ``UIOConfig.to_dict``): a compression ratio that divides the saved one at the same segment
    length (8 -> 4: twice the slots). Each saved row then starts the slots that cover its chunk
    (``repeat_interleave``); unlike a grown LoRA this changes what the model computes at once, as
    the decoder reads more slots. None when the ratio is not so lowered."""
    r, s = here["compression_ratio"], saved["compression_ratio"]
    if here["segment_length"] != saved["segment_length"] or not 0 < r < s or s % r:
        return None
    return s // r


def _grown_tensor(key: str, saved: torch.Tensor, initial: torch.Tensor) -> torch.Tensor:
    """A saved LoRA matrix placed in the grown one's shape: A (rank, in) fills the first rows and
    the new rows keep their initial values; B (out, rank) fills the first columns, the rest 0."""
    out = initial.clone()
    if ".lora_A." in key and saved.shape[1:] == initial.shape[1:]:
        out[: saved.shape[0]] = saved
        return out
    if ".lora_B." in key and saved.shape[0] == initial.shape[0]:
        out.zero_()
        out[:, : saved.shape[1]] = saved
        return out
    raise ValueError(f"shape mismatch for {key}: saved {tuple(saved.shape)}, model {tuple(initial.shape)}")


@dataclass(frozen=True)
class SavedParts:
    """What ``check_trained_parts`` found in a directory of trained parts, for ``load_trained``."""

    meta: dict
    """What was saved beside it (the base model's shape, the weights probe)."""
    new: tuple[str, ...]
    """Adapters of this model the parts were saved without: they keep their initial values."""
    lora: dict[str, LoRAGrowth]
    """Adapter name -> how this model's LoRA grows the saved one (with ``grow`` only)."""
    mem_factor: int | None
    """``<mem>`` rows this model gives each saved row (``memory_growth``, with ``grow`` only)."""


def check_trained_parts(directory: str, config: UIOConfig, base_config, new_adapters: tuple[str, ...] = (),
                        grow: bool = False) -> SavedParts:
    """The checks of ``load_trained`` that need only ``uio_config.json``: the saved UIO config
    equals ``config`` (but for runtime options, ``new_adapters`` added now and, with ``grow``,
    adapters grown by ``lora_growth`` and a ratio lowered by ``memory_growth``) and the parts were
    trained on a base model of this shape. Returns what was found; raises ValueError /
    FileNotFoundError."""
    saved_config, meta = UIOConfig.load(directory)
    saved, here = saved_config.to_dict(), config.to_dict()
    new = tuple(name for name in new_adapters if saved.get(f"{name}_lora") is None and here.get(f"{name}_lora"))
    lora = {name: g for name in ("encoder", "transfer", "decoder")
            if grow and (g := lora_growth(saved[f"{name}_lora"], here[f"{name}_lora"])) is not None}
    mem_factor = memory_growth(saved, here) if grow else None
    allowed = {f"{name}_lora" for name in (*new, *lora)} | ({"compression_ratio"} if mem_factor else set())
    differ = sorted(k for k in saved if k not in RUNTIME_OPTIONS and saved[k] != here[k] and k not in allowed)
    if differ:
        grows = ("; an adapter may grow: keep its target modules and dropout, add modules, raise the rank "
                 "with alpha / rank unchanged" if grow and any(k.endswith("_lora") for k in differ) else "")
        if grow and "compression_ratio" in differ:
            grows += (f"; the compression ratio may only be lowered to one that divides the saved "
                      f"{saved['compression_ratio']} (more <mem> slots), at the same segment_length")
        raise ValueError(
            f"the UIO config saved in {directory} differs from this model's in {differ}: build the model with "
            f"UIOMemoryModel.from_pretrained(base_path, trained_path={directory!r}){grows}"
        )
    check_fingerprint(meta, base_config, directory, getattr(base_config, "_name_or_path", "?"))
    return SavedParts(meta, new, lora, mem_factor)


def check_fingerprint(meta: dict, base_config, trained_path: str, base_path: str) -> None:
    have = base_fingerprint(base_config)
    diff = {k: (meta.get(k), have[k]) for k in _FINGERPRINT_KEYS if k in meta and meta.get(k) != have[k]}
    if diff:
        detail = ", ".join(f"{k}: saved {a!r} vs base {b!r}" for k, (a, b) in diff.items())
        raise ValueError(
            f"the UIO parts in {trained_path} were trained on a different base model than {base_path} ({detail}); "
            "load them onto the base model they were trained with"
        )


def save_trained(model, directory: str) -> str:
    """Write the trained parts: peft-format ``encoder/`` and ``transfer/`` adapters,
    ``mem_embeddings.safetensors`` and ``uio_config.json`` (with the base model's shape)."""
    from peft import get_peft_model_state_dict
    from safetensors.torch import save_file

    os.makedirs(directory, exist_ok=True)
    for name in model.adapter_names:
        sub = os.path.join(directory, name)
        model._peft_config(name).save_pretrained(sub)
        state = get_peft_model_state_dict(model.base, adapter_name=name)
        # The key prefix a PeftModel writes, so peft's own loader reads these files too.
        state = {f"base_model.model.{k}": v.detach().contiguous().cpu() for k, v in state.items()}
        save_file(state, os.path.join(sub, "adapter_model.safetensors"))
    save_file(
        {"mem_embeddings": model.mem_embeddings.detach().contiguous().cpu()},
        os.path.join(directory, MEM_EMBEDDINGS_FILE),
    )
    model.config.save(directory, extra={**base_fingerprint(model.base.config),
                                       "weights_probe": model._weights_probe or weights_probe(model.base)})
    return directory

def load_trained(model, directory: str, new_adapters: tuple[str, ...] = (), allow_other_weights: bool = False,
                 grow: bool = False) -> None:
    """Load what ``save_trained`` wrote; every tensor must match by name and shape, and the
    saved config must equal this model's except for the runtime options (dtype, attention,
    position_overflow, memory_window).

    ``new_adapters`` (e.g. ``("decoder",)``) are adapters this model adds to parts saved without
    them: they keep their initial values (a decoder LoRA on top of a trained memory).
    ``grow``: an adapter may add target modules to those it was saved with (e.g. the encoder's
    MLP) and raise its rank with alpha / rank unchanged (``lora_growth``): what is new starts with
    B = 0, so the model computes at first exactly what the saved parts did; and the compression
    ratio may be lowered to one dividing the saved ratio (``memory_growth``): each saved ``<mem>``
    row is repeated for the slots that now cover its chunk.
    ``allow_other_weights``: load onto base weights other than those the parts were trained on
    (same shape), which is refused by default."""
    from peft import get_peft_model_state_dict, set_peft_model_state_dict
    from safetensors.torch import load_file

    parts = check_trained_parts(directory, model.config, model.base.config, new_adapters, grow)
    if not allow_other_weights:
        check_weights(parts.meta.get("weights_probe"), model.base, directory)
    for name in model.adapter_names:
        if name in parts.new:
            continue
        path = os.path.join(directory, name, "adapter_model.safetensors")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path} is missing: {directory} is not a complete save_trained output")
        state = {k.removeprefix("base_model.model."): v for k, v in load_file(path).items()}
        expected = get_peft_model_state_dict(model.base, adapter_name=name)
        growth = parts.lora.get(name)
        if growth is not None:
            for key in set(expected) - set(state):  # the modules added now keep their initial values
                if any(f".{target}." in key for target in growth.targets):
                    state[key] = expected[key]
            if growth.rank[1] > growth.rank[0]:
                state = {k: _grown_tensor(k, v, expected[k]) if k in expected and v.shape != expected[k].shape else v
                         for k, v in state.items()}
        if set(state) != set(expected):
            raise ValueError(
                f"{path}: adapter tensors do not match the model (missing {sorted(set(expected) - set(state))[:3]}, "
                f"unexpected {sorted(set(state) - set(expected))[:3]})"
            )
        bad = [k for k in state if state[k].shape != expected[k].shape]
        if bad:
            raise ValueError(f"{path}: shape mismatch for {bad[:3]}")
        set_peft_model_state_dict(model.base, state, adapter_name=name)
    mem = load_file(os.path.join(directory, MEM_EMBEDDINGS_FILE))["mem_embeddings"]
    if parts.mem_factor:
        mem = mem.repeat_interleave(parts.mem_factor, dim=0)
    if mem.shape != model.mem_embeddings.shape:
        raise ValueError(f"saved <mem> embeddings have shape {tuple(mem.shape)}, expected {tuple(model.mem_embeddings.shape)}")
    with torch.no_grad():
        model.mem_embeddings.copy_(mem)
    model._set_adapter(None, force=True)
