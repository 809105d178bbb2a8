"""The memory model on a real pretrained checkpoint: SmolLM2-135M-Instruct (Llama, GQA 9/3 heads,
tied embeddings, 8,192 positions), prepared from its GGUF file into a local HF directory."""

import json
import os

import pytest
import torch
from helpers import adapters, assert_same_function, perturb_trainable, slow_stepwise_memory
from transformers import AutoModelForCausalLM, AutoTokenizer

from uio_ds.config import UIOConfig
from uio_ds.formats import synthetic_text
from uio_ds.model.generation import generate
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.positions import segment_targets
from uio_ds.model.prepare import PREPARED_FILE, prepare_model


def real_config(**overrides) -> UIOConfig:
    return UIOConfig(**{"segment_length": 256, "compression_ratio": 8, **adapters(8, 32.0), **overrides})


@pytest.fixture(scope="module")
def smol(smollm2_dir):
    model = UIOMemoryModel.from_pretrained(smollm2_dir, real_config()).eval()
    base = AutoModelForCausalLM.from_pretrained(smollm2_dir).eval()
    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    return model, base, tok


def test_prepared_directory_is_verified_and_idempotent(smollm2_dir):
    with open(os.path.join(smollm2_dir, PREPARED_FILE)) as f:
        report = json.load(f)
    check = report["verification"]
    assert "Paris" in check["answer"]
    assert check["parameters"] == 134_515_008
    assert 1.0 < check["perplexity"] < 30.0  # a broken conversion gives hundreds or thousands
    messages = []
    again = prepare_model("smollm2", smollm2_dir, log=messages.append)  # no work the second time
    assert again == report and "already prepared" in messages[0]
    cfg = AutoModelForCausalLM.from_pretrained(smollm2_dir).config
    assert (cfg.model_type, cfg.num_hidden_layers, cfg.num_attention_heads, cfg.num_key_value_heads) == ("llama", 30, 9, 3)
    assert getattr(cfg, "quantization_config", None) is None and cfg.max_position_embeddings == 8192


def test_zero_lora_encoder_equals_base(smol, smollm2_dir):
    model, base, tok = smol  # the appended layout (default): the base reading [segment ; <mem> x m] causally
    ids = tok(synthetic_text(20, seed=1), return_tensors="pt")["input_ids"][:, :64]
    with torch.no_grad():
        memory = model.encode(ids)
        embeds = torch.cat([base.get_input_embeddings()(ids), model.mem_embeddings.unsqueeze(0)], dim=1)
        hidden = base.model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
        want = torch.stack([layer.input_layernorm(hidden[i])[:, 64:] for i, layer in enumerate(base.model.layers)], 1)
    assert memory.shape == (1, 30, 32, 576)
    assert_same_function(memory, want, base.config)
    # the stepwise layout against the slow reference that runs each <mem> token on its visible tokens
    stepwise = UIOMemoryModel.from_pretrained(smollm2_dir, real_config(memory_layout="stepwise")).eval()
    with torch.no_grad():
        assert_same_function(stepwise.encode(ids), slow_stepwise_memory(stepwise, ids, base_model=base), base.config)


def test_no_memory_logits_equal_base(smol):
    model, base, tok = smol
    ids = tok("The capital of France is", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        assert torch.equal(model.decode(ids).logits, base(ids).logits)


def test_memory_changes_logits_and_trains_only_the_uio_parts(smol, smollm2_dir):
    model = UIOMemoryModel.from_pretrained(smollm2_dir, real_config())
    perturb_trainable(model, scale=0.01)
    _, _, tok = smol
    ids = tok(synthetic_text(60, seed=2), return_tensors="pt")["input_ids"][:, :320]
    memory = model.memory_kv(model.encode(ids[:, :256]))
    with_memory = model.decode(ids[:, 256:], memory, segment_targets(ids, 256, 320))
    with torch.no_grad():
        without = model.decode(ids[:, 256:]).logits
    assert (with_memory.logits - without).abs().max() > 1e-2
    with_memory.loss.backward()
    trainable = dict(model.named_trainable_parameters())
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in trainable.values())
    assert all(p.grad is None for n, p in model.named_parameters() if n not in trainable)


@pytest.mark.slow
def test_generation_runs_past_the_8k_position_window(smol, smollm2_dir, kjv_file):
    _, _, tok = smol
    model = UIOMemoryModel.from_pretrained(smollm2_dir, real_config(segment_length=1024, compression_ratio=32)).eval()
    with open(kjv_file) as f:
        text = "\n".join(json.loads(line)["text"] for _, line in zip(range(700), f))
    ids = tok(text, return_tensors="pt")["input_ids"]
    assert ids.shape[1] > 8192 + 100
    ids = ids[:, : 8192 + 100]
    result = generate(model, ids, max_new_tokens=8)
    assert result.sequences.shape == (1, 8300)
    assert result.num_compressions == 8299 // 1024 and result.memory_tokens == 8 * 32
    assert model.peak_positions(8300) < 8192 < 8300
