import json
import os

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer

from uio_ds.formats import synthetic_text
from uio_ds.model.tiny import build_tiny_tokenizer


def test_synthetic_text_is_deterministic():
    assert synthetic_text(50, seed=3) == synthetic_text(50, seed=3)
    assert synthetic_text(50, seed=3) != synthetic_text(50, seed=4)


def test_tokenizer_round_trips_text():
    tok = build_tiny_tokenizer()
    text = synthetic_text(20, seed=9) + " Unseen bytes: é ✓ 42."
    assert tok.decode(tok(text)["input_ids"]) == text
    assert len(tok) == 512 and tok.eos_token == "</s>" and tok.pad_token == "<pad>"


@pytest.mark.parametrize(
    "arch, cls, kv_heads",
    [("llama", "LlamaForCausalLM", 4), ("mistral", "MistralForCausalLM", 2), ("qwen2", "Qwen2ForCausalLM", 2)],
)
def test_tiny_models_load_through_from_pretrained(tiny_dirs, arch, cls, kv_heads):
    path = tiny_dirs[arch]
    assert {"config.json", "model.safetensors", "tokenizer.json"} <= set(os.listdir(path))
    with open(os.path.join(path, "config.json")) as f:
        assert json.load(f)["model_type"] == arch
    model = AutoModelForCausalLM.from_pretrained(path)
    tok = AutoTokenizer.from_pretrained(path)
    assert type(model).__name__ == cls
    assert model.config.num_attention_heads == 4 and model.config.num_key_value_heads == kv_heads
    assert (model.model.layers[0].self_attn.q_proj.bias is not None) == (arch == "qwen2")
    ids = tok("Ada found the old lantern.", return_tensors="pt")["input_ids"]
    assert model(ids).logits.shape == (1, ids.shape[1], len(tok))
    # the loaded tokenizer is the one that was built, whatever class transformers picks for it
    built = build_tiny_tokenizer()
    text = synthetic_text(30, seed=5) + " é ✓ 42"
    assert len(tok) == len(built) == model.config.vocab_size
    assert tok(text)["input_ids"] == built(text)["input_ids"] and tok.decode(tok(text)["input_ids"]) == text
