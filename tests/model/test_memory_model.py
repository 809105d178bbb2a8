"""The UIO memory model against plain transformers references, on all three tiny architectures."""

import pytest
import torch
from helpers import assert_same_function, load, perturb_trainable, random_ids, small_config
from transformers import AutoModelForCausalLM

from uio_ds.formats import IGNORE_INDEX
from uio_ds.model.kv import MemoryKV
from uio_ds.model.memory_model import UIOMemoryModel
from uio_ds.model.positions import segment_targets, split_segments

ARCHS = ("llama", "mistral", "qwen2")


def plain_base(path: str, attention: str = "sdpa"):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation=attention).eval()


def prefix_kv(base, prefix: torch.Tensor) -> MemoryKV:
    """The base model's own un-rotated K/V of ``prefix``, captured at k_proj / v_proj."""
    keys, values, hooks = [], [], []
    cfg = base.config
    head_dim = cfg.hidden_size // cfg.num_attention_heads

    def grab(store):
        def hook(_m, _i, out):
            store.append(out.view(out.shape[0], out.shape[1], cfg.num_key_value_heads, head_dim).transpose(1, 2))
        return hook

    for layer in base.model.layers:
        hooks.append(layer.self_attn.k_proj.register_forward_hook(grab(keys)))
        hooks.append(layer.self_attn.v_proj.register_forward_hook(grab(values)))
    with torch.no_grad():
        base(prefix)
    for h in hooks:
        h.remove()
    return MemoryKV(torch.stack(keys), torch.stack(values))


@pytest.mark.parametrize("arch", ARCHS)
def test_zero_lora_encoder_equals_base(tiny_dirs, arch):
    # The appended layout (default) is the base model reading [segment ; <mem> x m] causally (the
    # stepwise layout has its own references in test_memory_layout.py).
    model, base = load(tiny_dirs[arch]), plain_base(tiny_dirs[arch])
    ids = random_ids(3, 16)
    with torch.no_grad():
        memory = model.encode(ids)
        embeds = torch.cat([base.get_input_embeddings()(ids), model.mem_embeddings.expand(3, -1, -1)], dim=1)
        hidden = base.model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
        reference = torch.stack(
            [layer.input_layernorm(hidden[i])[:, 16:] for i, layer in enumerate(base.model.layers)], dim=1
        )
    assert memory.shape == (3, model.num_layers, model.num_mem_tokens, base.config.hidden_size)
    assert_same_function(memory, reference, model.base.config)
    # and the comparison can fail: a non-zero encoder LoRA changes the memory
    perturb_trainable(model)
    with torch.no_grad():
        assert (model.encode(ids) - reference).abs().max() > 1e-3


@pytest.mark.parametrize("arch", ARCHS)
def test_no_memory_decoder_equals_base_exactly(tiny_dirs, arch):
    model, base = load(tiny_dirs[arch]), plain_base(tiny_dirs[arch])
    perturb_trainable(model)  # adapters must be off in the decoder even when trained
    ids = random_ids(2, 16, seed=1)
    with torch.no_grad():
        assert torch.equal(model.decode(ids).logits, base(ids).logits)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
@pytest.mark.parametrize("arch", ARCHS)
def test_memory_prefix_equals_full_attention(tiny_dirs, arch, attention):
    """Memory K/V that are the base's own K/V of a real prefix must give exactly the logits
    of the base reading [prefix ; segment] in one pass: RoPE positions, bottom-right causal
    alignment, GQA and the cache plumbing are all checked by this one identity."""
    model = load(tiny_dirs[arch], attention=attention)
    base = plain_base(tiny_dirs[arch], attention)
    prefix, segment = random_ids(2, 24, seed=2), random_ids(2, 16, seed=3)
    with torch.no_grad():
        got = model.decode(segment, prefix_kv(base, prefix)).logits
        want = base(torch.cat([prefix, segment], dim=1)).logits[:, 24:]
    assert_same_function(got, want, model.base.config)


def test_first_query_sees_the_last_memory_slot(tiny_dirs):
    """Top-left causal alignment (torch SDPA's is_causal with more keys than queries) would
    show the first segment token only the first memory slot; ours must see all of them."""
    model = load(tiny_dirs["llama"])
    perturb_trainable(model)
    ids = random_ids(1, 8, seed=4)
    with torch.no_grad():
        memory = model.memory_kv(model.encode(random_ids(1, 16, seed=5)))
        changed = MemoryKV(memory.keys.clone(), memory.values.clone())
        changed.values[:, :, :, -1] += 1.0
        a, b = model.decode(ids, memory).logits, model.decode(ids, changed).logits
    assert (a[:, 0] - b[:, 0]).abs().max() > 1e-4


@pytest.mark.parametrize("arch", ARCHS)
def test_sdpa_and_eager_agree_with_memory(tiny_dirs, arch):
    sdpa, eager = load(tiny_dirs[arch], attention="sdpa"), load(tiny_dirs[arch], attention="eager")
    perturb_trainable(sdpa)
    eager.load_state_dict(sdpa.state_dict())
    ids = random_ids(2, 40, seed=6)
    with torch.no_grad():
        a, b = sdpa(ids), eager(ids)
    assert a.num_tokens == b.num_tokens == 2 * 39
    assert_same_function(a.loss, b.loss, sdpa.base.config)
    assert_same_function(torch.stack(a.segment_loss_sums), torch.stack(b.segment_loss_sums), sdpa.base.config)


@pytest.mark.parametrize("arch", ARCHS)
def test_parallel_compression_equals_one_by_one(tiny_dirs, arch):
    model = load(tiny_dirs[arch])
    perturb_trainable(model)
    segments = random_ids(5, 16, seed=7)
    with torch.no_grad():
        together = model.memory_kv(model.encode(segments))
        apart = MemoryKV.cat(
            [model.memory_kv(model.encode(segments[i : i + 1])) for i in range(5)]
        )  # one row each: the token axis now holds segment after segment
    assert_same_function(together.per_text(1).keys, apart.keys, model.base.config)
    assert_same_function(together.per_text(1).values, apart.values, model.base.config)
    # compress: the same memories, one row per text, whatever the chunk of segments per call
    texts = segments[:4].reshape(2, 2 * 16)
    with torch.no_grad():
        whole, chunked = model.compress(texts, batch_size=None), model.compress(texts, batch_size=3)
        auto, single = model.compress(texts), model.compress(texts, batch_size=1)
        first = model.compress(texts[:1])
    for other in (chunked, auto, single):
        assert_same_function(whole.keys, other.keys, model.base.config)
        assert_same_function(whole.values, other.values, model.base.config)
    assert_same_function(whole.values[:, :1], first.values, model.base.config)
    two = 2 * model.num_mem_tokens  # text 0 is segments 0 and 1
    assert_same_function(whole.keys[:, :1], apart.keys[..., :two, :], model.base.config)
    with pytest.raises(ValueError, match="whole segments"):
        model.compress(segments[:1, :10])
    with pytest.raises(ValueError, match="batch_size=0: must be an integer >= 1, 'auto' or None"):
        model.compress(texts, batch_size=0)


@pytest.mark.parametrize("arch", ARCHS)
def test_gradients_reach_trainable_parts_only(tiny_dirs, arch):
    model = load(tiny_dirs[arch])
    perturb_trainable(model)  # LoRA B starts at zero, which would leave LoRA A without gradient
    ids = random_ids(2, 40, seed=8)
    memory = model.encode(ids[:, :16])
    memory.retain_grad()
    kv = model.memory_kv(memory)
    out = model.decode(ids[:, 16:32], kv, segment_targets(ids, 16, 32))
    out.loss.backward()
    assert memory.grad is not None and memory.grad.abs().sum() > 0
    names = dict(model.named_trainable_parameters())
    assert any(".encoder." in n for n in names) and any(".transfer." in n for n in names)
    for name, p in names.items():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    frozen = [n for n, p in model.named_parameters() if n not in names]
    assert frozen and all(model.get_parameter(n).grad is None for n in frozen)
    summary = model.trainable_summary()
    assert summary["trainable"] == sum(p.numel() for p in names.values()) and 0 < summary["share"] < 0.1


@pytest.mark.parametrize("group", ["encoder", "transfer", "mem_embeddings"])
def test_gradient_matches_finite_differences(tiny_dirs, group):
    """Autograd through the adapter switches equals a central finite difference (float64),
    for each trainable group on its own, so a dropped gradient in any one of them shows.
    (RMSNorm computes in float32 inside, which bounds the achievable agreement near 1e-4.)"""
    model = load(tiny_dirs["qwen2"]).double()
    perturb_trainable(model)
    ids = random_ids(1, 40, seed=9)
    params = [p for n, p in model.named_trainable_parameters() if group in n]
    assert params
    grads = torch.autograd.grad(model(ids).loss, params)
    gen = torch.Generator().manual_seed(0)
    direction = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction)).item()
    eps = 1e-4
    with torch.no_grad():
        for p, d in zip(params, direction):
            p.add_(eps * d)
        up = model(ids).loss.item()
        for p, d in zip(params, direction):
            p.sub_(2 * eps * d)
        down = model(ids).loss.item()
    numeric = (up - down) / (2 * eps)
    assert abs(analytic) > 1e-2
    assert abs(numeric - analytic) <= 1e-3 * abs(analytic)


def test_document_targets_score_every_token_once():
    ids = torch.arange(10).unsqueeze(0)
    bounds = split_segments(10, 4)
    assert bounds == [(0, 4), (4, 8), (8, 10)]
    targets = torch.cat([segment_targets(ids, s, e) for s, e in bounds], dim=1)
    assert targets.tolist() == [[1, 2, 3, 4, 5, 6, 7, 8, 9, IGNORE_INDEX]]
    with pytest.raises(ValueError, match="empty"):
        split_segments(0, 4)


def test_document_loss_matches_manual_segments(tiny_dirs):
    model = load(tiny_dirs["mistral"])
    perturb_trainable(model)
    ids = random_ids(1, 37, seed=10)
    with torch.no_grad():
        out = model(ids)
        kv = [model.memory_kv(model.encode(ids[:, s : s + 16])) for s in (0, 16)]
        manual = [
            model.decode(ids[:, 0:16], None, segment_targets(ids, 0, 16)),
            model.decode(ids[:, 16:32], kv[0], segment_targets(ids, 16, 32)),
            model.decode(ids[:, 32:37], MemoryKV.cat(kv), segment_targets(ids, 32, 37)),
        ]
    assert out.segment_num_tokens == [16, 16, 4]
    torch.testing.assert_close(torch.stack(out.segment_loss_sums), torch.stack([m.loss_sum for m in manual]))


def test_trained_parts_round_trip(tiny_dirs, tmp_path):
    model = load(tiny_dirs["qwen2"], mem_init="normal")
    perturb_trainable(model, seed=11)
    model.save_trained(str(tmp_path / "uio"))
    loaded = UIOMemoryModel.from_pretrained(tiny_dirs["qwen2"], trained_path=str(tmp_path / "uio")).eval()
    ids = random_ids(2, 45, seed=12)
    with torch.no_grad():
        a, b = model(ids), loaded(ids)
    assert torch.equal(torch.stack(a.segment_loss_sums), torch.stack(b.segment_loss_sums))
    for (n1, p1), (n2, p2) in zip(model.named_trainable_parameters(), loaded.named_trainable_parameters()):
        assert n1 == n2 and torch.equal(p1, p2)


def test_saved_encoder_adapter_loads_in_peft(tiny_dirs, tmp_path):
    """The adapters are peft-format: peft's own loader reads the encoder adapter."""
    from peft import PeftModel

    model = load(tiny_dirs["llama"])
    perturb_trainable(model, seed=13)
    model.save_trained(str(tmp_path / "uio"))
    peft_model = PeftModel.from_pretrained(plain_base(tiny_dirs["llama"]), str(tmp_path / "uio" / "encoder")).eval()
    ids = random_ids(2, 16, seed=14)
    with torch.no_grad():
        embeds = torch.cat([model.base.get_input_embeddings()(ids), model.mem_embeddings.expand(2, -1, -1)], dim=1)
        hidden = peft_model.base_model.model.model(inputs_embeds=embeds, output_hidden_states=True).hidden_states
        layer = peft_model.base_model.model.model.layers[1]
        want = layer.input_layernorm(hidden[1])[:, 16:]
        got = model.encode(ids)[:, 1]
    assert_same_function(got, want, model.base.config)


def test_unknown_architecture_is_refused(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unsupported architecture 'gpt2'"):
        UIOMemoryModel.from_pretrained(str(tmp_path), small_config())


def test_missing_path_is_refused(tmp_path):
    with pytest.raises(FileNotFoundError, match="does-not-exist"):
        UIOMemoryModel.from_pretrained(str(tmp_path / "does-not-exist"), small_config())


def test_trained_parts_on_another_base_are_refused(tiny_dirs, tmp_path):
    load(tiny_dirs["llama"]).save_trained(str(tmp_path / "uio"))
    with pytest.raises(ValueError, match="different base model") as err:
        UIOMemoryModel.from_pretrained(tiny_dirs["mistral"], trained_path=str(tmp_path / "uio"))
    assert "model_type: saved 'llama' vs base 'mistral'" in str(err.value)
    other = load(tiny_dirs["llama"], compression_ratio=8)
    with pytest.raises(ValueError, match="differs from this model's"):
        other.load_trained(str(tmp_path / "uio"))
    with pytest.raises(ValueError, match="either config or trained_path"):
        UIOMemoryModel.from_pretrained(tiny_dirs["llama"], small_config(), trained_path=str(tmp_path / "uio"))


def test_trained_parts_on_other_weights_of_the_same_shape_are_refused(tiny_dirs, tmp_path):
    """Same architecture and shape, other weights (another seed): refused unless allowed; the
    same weights loaded in another dtype still pass."""
    from uio_ds.model.tiny import build_tiny_model

    parts = str(tmp_path / "uio")
    load(tiny_dirs["llama"]).save_trained(parts)
    twin = build_tiny_model("llama", str(tmp_path / "twin"), seed=1)
    with pytest.raises(ValueError, match="trained on other base weights of the same shape"):
        UIOMemoryModel.from_pretrained(twin, trained_path=parts)
    UIOMemoryModel.from_pretrained(twin, trained_path=parts, allow_other_weights=True)
    bf16 = load(tiny_dirs["llama"], dtype="bfloat16")
    bf16.load_trained(parts)
    assert UIOMemoryModel.from_pretrained(tiny_dirs["llama"], trained_path=parts).config.segment_length == 16


def test_segment_longer_than_l_is_refused(tiny_dirs):
    model = load(tiny_dirs["llama"])
    with pytest.raises(ValueError, match="longer than segment_length=16"):
        model.encode(random_ids(1, 17))
    with pytest.raises(ValueError, match="longer than segment_length=16"):
        model.decode(random_ids(1, 17))


def test_position_range_error_and_drop_oldest(short_context_dir):
    # 64 positions, l=16, m=4: a full segment fits after at most 12 memories (12*4+16=64),
    # then a residual of 64-13*4=12 tokens after 13 memories: 13*16+12 = 220 tokens
    strict = load(short_context_dir)
    assert strict.max_tokens_supported() == 220
    assert [strict.peak_positions(t) for t in (16, 17, 208, 209, 220, 221)] == [16, 16, 64, 64, 64, 65]
    strict.check_length(220)
    with pytest.raises(ValueError, match="position_overflow='drop_oldest'"):
        strict.check_length(221)
    with pytest.raises(ValueError, match="max_position_embeddings=64"):
        strict(random_ids(1, 221))
    with torch.no_grad():
        assert torch.isfinite(strict(random_ids(1, 220)).loss)
    sliding = load(short_context_dir, position_overflow="drop_oldest")
    sliding.load_state_dict(strict.state_dict())
    ids = random_ids(1, 20 * 16, seed=15)
    with torch.no_grad():
        memory = sliding.memory_kv(sliding.encode(ids[:, : 19 * 16].reshape(19, 16))).per_text(1)
        kept = sliding.fit_positions(memory, 16)
        assert kept.num_tokens == 48
        torch.testing.assert_close(kept.keys, memory.keys[..., -48:, :])
        out = sliding(ids)
    assert torch.isfinite(out.loss) and out.num_tokens == 20 * 16 - 1


def test_without_transfer_head_memory_kv_is_base_projection(tiny_dirs):
    """train_transfer=False (the ablation): the memory K/V are the frozen k/v projections of the
    memory, the transfer LoRA is neither trainable nor touched by a backward pass."""
    model = load(tiny_dirs["qwen2"], train_transfer=False)
    names = dict(model.named_trainable_parameters())
    assert names and not any(".transfer." in n for n in names) and any(".encoder." in n for n in names)
    assert set(names) == {n for n, _ in zip(names, model.trainable_parameters())}
    # a transfer LoRA that would change K/V if it were used (B is zero at initialisation)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if ".transfer." in n:
                p.add_(0.5)
    perturb_trainable(model)
    ids = random_ids(2, 32, seed=3)
    memory = model.encode(ids[:, :16])
    kv = model.memory_kv(memory)
    with torch.no_grad():
        heads, dim = model.num_kv_heads, model.head_dim
        expected = torch.stack([layer.self_attn.k_proj.base_layer(memory[:, i]).view(2, -1, heads, dim).transpose(1, 2)
                                for i, layer in enumerate(model.layers)])
    torch.testing.assert_close(kv.keys, expected)
    model.decode(ids[:, 16:], kv, segment_targets(ids, 16, 32)).loss.backward()
    transfer = [p for n, p in model.named_parameters() if ".transfer." in n]
    assert transfer and all(p.grad is None and not p.requires_grad for p in transfer)
    assert all(p.grad is not None for p in names.values())
    # the trained model (with the transfer head) gives other K/V: the check can fail
    with_head = load(tiny_dirs["qwen2"])
    with_head.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (with_head.memory_kv(memory).keys - expected).abs().max() > 1e-2


def test_decoder_lora_is_off_by_default_and_trains_when_on(tiny_dirs, tmp_path):
    """decoder_lora (optional): absent by default; when set, zero-initialised it leaves the
    decoder equal to the base, it reaches the decoder passes only, gets gradients, and
    round-trips through save_trained / load_trained."""
    from uio_ds.config import LoRAConfig

    plain = load(tiny_dirs["mistral"])
    assert plain.adapter_names == ("encoder", "transfer") and plain.decoder_adapter is None
    assert not any(".decoder." in n for n, _ in plain.named_parameters())
    lora = LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"))
    model = load(tiny_dirs["mistral"], decoder_lora=lora)
    model.load_state_dict(plain.state_dict(), strict=False)
    ids = random_ids(1, 40, seed=4)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).loss, plain(ids).loss, rtol=0, atol=0)
    names = dict(model.named_trainable_parameters())
    decoder = {n: p for n, p in names.items() if ".decoder." in n}
    assert decoder and len(decoder) == 2 * 2 * model.num_layers  # A and B of q and v, every layer
    perturb_trainable(model)
    with torch.no_grad():
        memory = model.encode(ids[:, :16])
        plain_memory = plain.encode(ids[:, :16])
    # the encoder does not run the decoder adapter (the same encoder weights give the same memory)
    with torch.no_grad():
        for n, p in plain.named_trainable_parameters():
            p.copy_(names[n])
        torch.testing.assert_close(plain.encode(ids[:, :16]), model.encode(ids[:, :16]))
        assert not torch.equal(plain_memory, memory)
        # the decoder does: its loss differs from the same parts without the decoder LoRA
        assert abs(model(ids).loss.item() - plain(ids).loss.item()) > 1e-4
    loss = model(ids).loss
    grads = torch.autograd.grad(loss, list(decoder.values()))
    assert all(g.abs().sum() > 0 for g in grads)
    model.save_trained(str(tmp_path / "parts"))
    again = UIOMemoryModel.from_pretrained(tiny_dirs["mistral"], trained_path=str(tmp_path / "parts")).eval()
    assert again.decoder_adapter == "decoder"
    with torch.no_grad():
        torch.testing.assert_close(again(ids).loss, model(ids).loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match="differs from this model's in \\['decoder_lora'\\]"):
        plain.load_trained(str(tmp_path / "parts"))


def test_decoder_lora_added_on_top_of_trained_parts(tiny_dirs, tmp_path):
    """load_trained(new_adapters=("decoder",)): parts saved without a decoder LoRA load into a model
    that has one (a trained memory, then a decoder taught to read it); the new adapter keeps its
    zero start, so the model first computes what the saved parts computed. Without the flag the
    differing config is refused."""
    from uio_ds.config import LoRAConfig

    trained = load(tiny_dirs["llama"])
    perturb_trainable(trained, seed=21)
    trained.save_trained(str(tmp_path / "parts"))
    lora = LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj"))
    model = load(tiny_dirs["llama"], decoder_lora=lora)
    with pytest.raises(ValueError, match=r"differs from this model's in \['decoder_lora'\]"):
        model.load_trained(str(tmp_path / "parts"))
    model.load_trained(str(tmp_path / "parts"), new_adapters=("decoder",))
    ids = random_ids(2, 40, seed=22)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).loss, trained(ids).loss, rtol=0, atol=0)
    other = load(tiny_dirs["llama"], decoder_lora=lora, compression_ratio=8)
    with pytest.raises(ValueError, match=r"differs from this model's in \['compression_ratio'\]"):
        other.load_trained(str(tmp_path / "parts"), new_adapters=("decoder",))


def test_encoder_lora_widened_to_more_modules_continues_trained_parts(tiny_dirs, tmp_path):
    """load_trained(grow=True): parts whose encoder LoRA sat on q_proj / v_proj load into a
    model whose encoder LoRA also covers the MLP; the saved tensors are restored, the new modules
    keep their zero start (the model computes exactly what the saved parts did) and then train.
    Without the flag, or with another rank, the differing config is refused."""
    from uio_ds.config import LoRAConfig

    trained = load(tiny_dirs["llama"])
    perturb_trainable(trained, seed=23)
    trained.save_trained(str(tmp_path / "parts"))
    wide = LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj", "gate_proj", "up_proj", "down_proj"))
    model = load(tiny_dirs["llama"], encoder_lora=wide)
    with pytest.raises(ValueError, match=r"differs from this model's in \['encoder_lora'\]"):
        model.load_trained(str(tmp_path / "parts"))
    model.load_trained(str(tmp_path / "parts"), grow=True)
    ids = random_ids(2, 40, seed=24)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).loss, trained(ids).loss, rtol=0, atol=0)
    kept = {n: p for n, p in trained.named_parameters() if p.requires_grad}
    mine = dict(model.named_parameters())
    assert all(torch.equal(mine[n], p) for n, p in kept.items())  # every saved tensor, by name
    added = {n: p for n, p in mine.items() if p.requires_grad and n not in kept}
    assert added and all(".mlp." in n for n in added)
    grads = torch.autograd.grad(model(ids).loss, [p for n, p in added.items() if "lora_B" in n])
    assert all(g.abs().sum() > 0 for g in grads)  # the new modules learn from the first step
    other = load(tiny_dirs["llama"], encoder_lora=LoRAConfig(rank=8, alpha=8.0, target_modules=wide.target_modules))
    with pytest.raises(ValueError, match=r"differs from this model's in \['encoder_lora'\]"):
        other.load_trained(str(tmp_path / "parts"), grow=True)


def test_lora_rank_grown_continues_trained_parts(tiny_dirs, tmp_path):
    """load_trained(grow=True) onto adapters of twice the rank and alpha (the same scale): the
    saved A fills the first rows and B the first columns, the new columns of B are 0, so the model
    computes exactly what the saved parts did, and the new rank learns from the first step."""
    from uio_ds.config import LoRAConfig

    trained = load(tiny_dirs["llama"])
    perturb_trainable(trained, seed=25)
    trained.save_trained(str(tmp_path / "parts"))
    cfg = trained.config
    grown = {k: LoRAConfig(rank=2 * c.rank, alpha=2 * c.alpha, target_modules=c.target_modules)
             for k, c in (("encoder_lora", cfg.encoder_lora), ("transfer_lora", cfg.transfer_lora))}
    model = load(tiny_dirs["llama"], **grown)
    model.load_trained(str(tmp_path / "parts"), grow=True)
    ids = random_ids(2, 40, seed=26)
    with torch.no_grad():  # the same sums, with zeros added: equal up to the kernels' summation order
        torch.testing.assert_close(model(ids).loss, trained(ids).loss)
    mine = dict(model.named_parameters())
    saved = {n: p for n, p in trained.named_parameters() if p.requires_grad and "lora_" in n}
    assert saved
    for n, p in saved.items():
        if "lora_A" in n:
            assert torch.equal(mine[n][: p.shape[0]], p) and mine[n].shape[0] == 2 * p.shape[0]
        else:
            assert torch.equal(mine[n][:, : p.shape[1]], p) and not mine[n][:, p.shape[1]:].any()
    new_b = [mine[n] for n in saved if "lora_B" in n]
    grads = torch.autograd.grad(model(ids).loss, new_b, allow_unused=True)
    assert any(g is not None and g[:, g.shape[1] // 2:].abs().sum() > 0 for g in grads)


@pytest.mark.parametrize("change, grows", [
    ({"rank": 8, "alpha": 16.0}, True),  # rank raised, scale kept
    ({"target_modules": ["q_proj", "v_proj", "o_proj"]}, True),
    ({"rank": 8}, False),  # the scale alpha / rank would halve
    ({"rank": 2, "alpha": 4.0}, False),  # a smaller rank drops what was trained
    ({"target_modules": ["q_proj"]}, False),  # a target dropped
    ({"dropout": 0.1}, False),
    ({}, False),  # nothing grows
])
def test_lora_growth_keeps_what_was_trained_and_its_scale(change, grows):
    from uio_ds.model.parts import lora_growth

    saved = {"rank": 4, "alpha": 8.0, "dropout": 0.0, "target_modules": ["q_proj", "v_proj"]}
    assert (lora_growth(saved, {**saved, **change}) is not None) == grows


def test_lower_compression_ratio_starts_each_slot_from_its_chunks_saved_row(tiny_dirs, tmp_path):
    """load_trained(grow=True) onto a model with half the compression ratio (twice the <mem> slots):
    the adapters load as saved and each saved <mem> row starts both slots that now cover its
    chunk; every slot then learns. Without the flag the other ratio is refused."""
    trained = load(tiny_dirs["llama"])  # ratio 4: 4 slots for 16 tokens
    perturb_trainable(trained, seed=27)
    trained.save_trained(str(tmp_path / "parts"))
    model = load(tiny_dirs["llama"], compression_ratio=2)
    with pytest.raises(ValueError, match=r"differs from this model's in \['compression_ratio'\]"):
        model.load_trained(str(tmp_path / "parts"))
    model.load_trained(str(tmp_path / "parts"), grow=True)
    torch.testing.assert_close(model.mem_embeddings, trained.mem_embeddings.repeat_interleave(2, dim=0), rtol=0, atol=0)
    mine = dict(model.named_parameters())
    assert all(torch.equal(mine[n], p) for n, p in trained.named_parameters() if p.requires_grad and "lora_" in n)
    model.train()
    (grad,) = torch.autograd.grad(model(random_ids(2, 40, seed=28)).loss, [model.mem_embeddings])
    assert grad.shape[0] == 8 and bool((grad.abs().sum(1) > 0).all())


@pytest.mark.parametrize("saved, here, factor", [
    ((16, 8), (16, 4), 2), ((16, 8), (16, 2), 4),
    ((16, 8), (16, 8), None), ((16, 4), (16, 8), None),  # the same, or fewer slots
    ((24, 8), (24, 3), None),  # 3 does not divide 8
    ((16, 8), (32, 4), None),  # another segment length
])
def test_memory_growth_only_lowers_the_ratio_to_a_divisor(saved, here, factor):
    from uio_ds.model.parts import memory_growth

    saved, here = ({"segment_length": l, "compression_ratio": r} for l, r in (saved, here))
    assert memory_growth(saved, here) == factor


def test_weights_probe_indices_stay_inside_large_tensors():
    """A real model's embedding matrix passes 2**24 elements (SmolLM2: 49,152 x 576), where a
    float32 linspace put the last probe index one past the end and the export of a trained run
    failed; the indices are integers, both ends included."""
    from uio_ds.model.parts import spread_indices

    for n in (1, 2, 17, 2**24 + 1, 49152 * 576, 128256 * 4096):
        index = spread_indices(n, 16)
        assert index[0] == 0 and index[-1] == n - 1 and bool((index[1:] >= index[:-1]).all())
    # the same probe as before on tensors that float32 represents exactly (saved parts still load)
    assert spread_indices(1000, 16).tolist() == torch.linspace(0, 999, 16).long().tolist()
