"""The 'stepwise' encoder layout against slow references that read each <mem> token's visible
tokens alone, on all three tiny architectures, with SDPA, eager and the flash stand-in."""

import json
import os

import pytest
import torch
from flash_standin import flash_standin
from helpers import assert_same_function, load, perturb_trainable, random_ids, slow_stepwise_memory
from transformers import AutoModelForCausalLM

from uio_ds.config import CONFIG_NAME
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.positions import stepwise_layout

ARCHS = ("llama", "mistral", "qwen2")


def test_layout_positions_and_visibility():
    positions, visible = stepwise_layout(8, 4)
    assert positions.tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 2, 4, 6, 8]
    # <mem> 0 reads tokens 0-1 and itself, <mem> 3 the whole segment and itself; none reads another <mem>
    assert visible[8].nonzero().flatten().tolist() == [0, 1, 8]
    assert visible[11].nonzero().flatten().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 11]
    # segment tokens are causal and never read a <mem> token
    assert torch.equal(visible[:8, :8], torch.ones(8, 8, dtype=torch.bool).tril())
    assert not visible[:8, 8:].any()
    # a residual shorter than l spreads the <mem> tokens over what there is
    positions, visible = stepwise_layout(5, 4)
    assert positions[5:].tolist() == [2, 3, 4, 5]
    assert visible[5:, :5].sum(1).tolist() == [2, 3, 4, 5]


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_stepwise_encoder_equals_slow_reference(tiny_dirs, arch, attention):
    model = load(tiny_dirs[arch], attention=attention, memory_layout="stepwise")
    perturb_trainable(model, seed=3, scale=0.1)
    with torch.no_grad():
        for length in (16, 11):  # a full segment and a residual
            ids = random_ids(2, length, seed=length)
            memory = model.encode(ids)
            assert_same_function(memory, slow_stepwise_memory(model, ids), model.base.config)
    # and the comparison can fail: the appended layout gives other memories
    appended = load(tiny_dirs[arch], attention=attention, memory_layout="appended")
    perturb_trainable(appended, seed=3, scale=0.1)
    with torch.no_grad():
        ids = random_ids(2, 16, seed=16)
        assert (appended.encode(ids) - slow_stepwise_memory(appended, ids)).abs().max() > 1e-2


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_lora_stepwise_memory_equals_base_on_visible_tokens(tiny_dirs, arch):
    model = load(tiny_dirs[arch], memory_layout="stepwise")
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], attn_implementation="sdpa").eval()
    ids = random_ids(3, 16, seed=5)
    with torch.no_grad():
        assert_same_function(model.encode(ids), slow_stepwise_memory(model, ids, base_model=base), base.config)


@pytest.mark.parametrize("arch", ARCHS)
def test_stepwise_encoder_through_flash_standin(tiny_dirs, arch):
    """With flash-attn configured the stepwise encoder runs through SDPA with its mask (flash
    takes no arbitrary mask) and the decoder through flash: memories and losses equal SDPA's."""
    model = load(tiny_dirs[arch], attention="sdpa", memory_layout="stepwise")
    perturb_trainable(model, seed=4, scale=0.1)
    ids = random_ids(2, 32, seed=6)
    with torch.no_grad():
        want_memory = model.encode(ids[:, :16])
        want_loss = model(ids).loss
        model.base.config._attn_implementation = "flash_attention_2"
        with flash_standin() as calls:
            got_memory = model.encode(ids[:, :16])
            encoder_calls = len(calls)
            got_loss = model(ids).loss
        assert model.base.config._attn_implementation == "flash_attention_2"
    assert encoder_calls == 0
    assert len(calls) > 0  # the decoder ran through the stand-in
    assert_same_function(got_memory, want_memory, model.base.config)
    assert_same_function(got_loss, want_loss, model.base.config)


def test_layout_is_saved_and_checked_on_load(tiny_dirs, tmp_path):
    stepwise = load(tiny_dirs["llama"], memory_layout="stepwise")
    stepwise.save_trained(str(tmp_path / "parts"))
    with open(tmp_path / "parts" / CONFIG_NAME) as f:
        assert json.load(f)["uio"]["memory_layout"] == "stepwise"
    assert UIOMemoryModel.from_pretrained(tiny_dirs["llama"], trained_path=str(tmp_path / "parts")).config.memory_layout \
        == "stepwise"
    with pytest.raises(ValueError, match=r"differs from this model's in \['memory_layout'\]"):
        load(tiny_dirs["llama"], memory_layout="appended").load_trained(str(tmp_path / "parts"))
    # parts saved before the option existed were trained with the appended layout
    path = os.path.join(tmp_path, "parts", CONFIG_NAME)
    with open(path) as f:
        payload = json.load(f)
    del payload["uio"]["memory_layout"]
    with open(path, "w") as f:
        json.dump(payload, f)
    old = UIOMemoryModel.from_pretrained(tiny_dirs["llama"], trained_path=str(tmp_path / "parts"))
    assert old.config.memory_layout == "appended"


def test_unknown_layout_is_refused():
    from helpers import small_config

    with pytest.raises(ValueError, match=r"memory_layout='diagonal': choose one of \['appended', 'stepwise'\]"):
        small_config(memory_layout="diagonal")
