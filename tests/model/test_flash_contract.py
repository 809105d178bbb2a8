"""The flash_attention_2 path, checked on the CPU against flash-attn's contract.

transformers calls flash-attn with (batch, seqlen, heads, head_dim) tensors, fewer key/value
heads under GQA, and causal=True with keys longer than queries when a cache (our memory
prefix) precedes the segment, relying on flash-attn's bottom-right causal alignment. A
pure-torch stand-in with that contract (tests/flash_standin.py) replaces the flash-attn
functions; the decoder with a memory prefix must then give the logits and gradients of the
SDPA and eager paths. With a top-left aligned mask (flash-attn < 2.1) the test must fail.
"""

from __future__ import annotations

import pytest
import torch
from flash_standin import flash_attn_func, flash_standin
from helpers import assert_same_function, load, perturb_trainable, random_ids

from uio_ds.model.attention import resolve_attention


def _decoder_with_memory(model, ids, targets):
    """Loss and logits of segment 2 read after the memory of segment 1, and its gradients."""
    model.zero_grad(set_to_none=True)
    memory = model.memory_kv(model.encode(ids[:, :16]))
    out = model.decode(ids[:, 16:32], memory, targets)
    grads = torch.autograd.grad(out.loss_sum, model.trainable_parameters(), allow_unused=True)
    return out.logits.detach(), grads


def _run(model, implementation, top_left=False):
    model.base.config._attn_implementation = implementation
    ids = random_ids(2, 33, seed=3)
    targets = ids[:, 17:33]
    if implementation == "flash_attention_2":
        with flash_standin(top_left=top_left) as calls:
            logits, grads = _decoder_with_memory(model, ids[:, :32], targets)
        return logits, grads, list(calls)
    return (*_decoder_with_memory(model, ids[:, :32], targets), [])


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_flash_path_equals_sdpa_and_eager_with_memory_prefix(tiny_dirs, arch):
    model = load(tiny_dirs[arch], dtype="float32", attention="sdpa")
    perturb_trainable(model, seed=1, scale=0.1)
    flash_logits, flash_grads, calls = _run(model, "flash_attention_2")
    # the stand-in really ran, in flash's layout, with the memory prefix in the keys
    heads = model.base.config.num_attention_heads
    kv_heads = model.num_kv_heads
    decoder_calls = [c for c in calls if c["k"][1] > c["q"][1]]
    assert decoder_calls, calls
    assert all(c["causal"] for c in calls)
    m = model.num_mem_tokens
    assert all(c["q"] == (2, 16, heads, model.head_dim) and c["k"] == (2, m + 16, kv_heads, model.head_dim)
               for c in decoder_calls)
    for implementation in ("sdpa", "eager"):
        logits, grads, _ = _run(model, implementation)
        assert_same_function(flash_logits, logits, model.base.config)
        for g_flash, g in zip(flash_grads, grads):
            assert (g_flash is None) == (g is None)
            if g is not None:  # fp32 rounding of different summation orders: relative norm error
                assert (g_flash - g).norm() <= 1e-4 * g.norm() + 1e-7, (implementation, (g_flash - g).norm(), g.norm())


def test_top_left_causal_alignment_would_be_caught(tiny_dirs):
    model = load(tiny_dirs["mistral"], dtype="float32", attention="sdpa")
    perturb_trainable(model, seed=1, scale=0.1)
    wrong, _, _ = _run(model, "flash_attention_2", top_left=True)
    right, _, _ = _run(model, "sdpa")
    assert (wrong - right).abs().max() > 1e-2


def test_standin_matches_its_documented_semantics():
    """Bottom-right causal alignment and GQA head mapping, against an explicit float64 reference."""
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(2, 5, 4, 8, generator=gen, dtype=torch.float64)
    k = torch.randn(2, 9, 2, 8, generator=gen, dtype=torch.float64)
    v = torch.randn(2, 9, 2, 8, generator=gen, dtype=torch.float64)
    out = flash_attn_func(q, k, v, causal=True)
    ref = torch.empty_like(out)
    for b in range(2):
        for h in range(4):
            for i in range(5):
                keys = range(0, i + 9 - 5 + 1)  # bottom-right: the last query sees every key
                s = torch.stack([q[b, i, h] @ k[b, j, h // 2] for j in keys]) / 8**0.5
                ref[b, i, h] = (s.softmax(0).unsqueeze(1) * v[b, list(keys), h // 2]).sum(0)
    # float64 (eps 2.2e-16) over sums of at most 9 terms of order 1: 1e-12 is thousands of ulps
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_asking_for_flash_without_it_fails_before_loading(tiny_dirs, monkeypatch):
    import uio_ds.model.attention as attention

    monkeypatch.setattr(attention, "flash_attn_available", lambda: False)
    with pytest.raises(RuntimeError, match=r"pip install 'uio_ds\[gpu\]'"):
        resolve_attention("flash_attention_2", torch.bfloat16)
    assert resolve_attention("auto", torch.bfloat16) == "sdpa"
