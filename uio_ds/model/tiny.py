"""Tiny Llama-family checkpoints and a locally trained tokenizer.

Tests and the CPU demo use these instead of a hub download: a byte-level BPE
tokenizer is trained with ``tokenizers`` on generated text, a small Llama,
Mistral (grouped-query attention) or Qwen2 (grouped-query attention, q/k/v
bias) model is initialised from a seed, and both are written with
``save_pretrained``. They then load through ``from_pretrained(path)``, the same
path a user takes with a local Llama-2-7b-chat directory.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForCausalLM, PreTrainedTokenizerFast

from uio_ds.formats import synthetic_text

TINY_ARCHITECTURES = ("llama", "mistral", "qwen2")
# "<|endoftext|>" is in the vocabulary because transformers loads a qwen2 directory with
# Qwen2Tokenizer whatever the saved class, and that class adds it when it is missing
# (a 513th token for a 512-row embedding); byte-level BPE never emits it as unknown.
SPECIAL_TOKENS = {"bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>", "unk_token": "<|endoftext|>"}
# ChatML's shape over the tiny vocabulary's own special tokens: a turn is <s>role\ncontent</s>\n
CHAT_TEMPLATE = ("{% for m in messages %}<s>{{ m['role'] }}\n{{ m['content'] }}</s>\n{% endfor %}"
                 "{% if add_generation_prompt %}<s>assistant\n{% endif %}")

# Small enough for a CPU test in well under a second per forward, large enough
# for GQA (4 query heads over 2 KV heads) and more than one layer.
_BASE_SHAPE = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=4096,
    initializer_range=0.1,
)
_ARCH_SHAPE: dict[str, dict[str, Any]] = {
    "llama": dict(num_key_value_heads=4, tie_word_embeddings=False),
    "mistral": dict(num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None),
    "qwen2": dict(num_key_value_heads=2, tie_word_embeddings=True, use_sliding_window=False),
}


def build_tiny_tokenizer(vocab_size: int = 512, num_sentences: int = 4000, seed: int = 0,
                         texts: list[str] | None = None) -> PreTrainedTokenizerFast:
    """Train a byte-level BPE tokenizer on generated text, plus ``texts`` if given (deterministic)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS.values()),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    text = synthetic_text(num_sentences, seed=seed)
    tok.train_from_iterator(text.split("\n\n") + list(texts or []), trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHAT_TEMPLATE, **SPECIAL_TOKENS)


def tiny_config(arch: str, tokenizer: PreTrainedTokenizerFast, **overrides: Any):
    """A transformers config of architecture ``arch`` with the tiny shape (``overrides`` win)."""
    if arch not in TINY_ARCHITECTURES:
        raise ValueError(f"unknown tiny architecture {arch!r}: choose one of {list(TINY_ARCHITECTURES)}")
    kwargs = {**_BASE_SHAPE, **_ARCH_SHAPE[arch], **overrides}
    return AutoConfig.for_model(
        arch,
        vocab_size=len(tokenizer),
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **kwargs,
    )


def build_tiny_model(arch: str, out_dir: str, seed: int = 0, vocab_size: int = 512,
                     tokenizer_texts: list[str] | None = None, **overrides: Any) -> str:
    """Write a randomly initialised tiny ``arch`` model plus tokenizer to ``out_dir``; return ``out_dir``.
    ``overrides`` change the config (hidden_size=..., num_hidden_layers=...)."""
    tokenizer = build_tiny_tokenizer(vocab_size=vocab_size, texts=tokenizer_texts)
    config = tiny_config(arch, tokenizer, **overrides)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(config)
    os.makedirs(out_dir, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir
