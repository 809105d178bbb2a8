"""Baselines against plain transformers references."""

import pytest
import torch
from helpers import assert_same_function, random_ids
from transformers import AutoModelForCausalLM

from uio_ds.baselines import StreamingLLM


@pytest.fixture(scope="module")
def base(tiny_dirs):
    return AutoModelForCausalLM.from_pretrained(tiny_dirs["mistral"]).eval()


def test_streaming_equals_full_attention_while_the_text_fits(base):
    """Until the text outgrows sinks + window nothing is dropped, so logits equal full attention."""
    ids = random_ids(2, 40, seed=1)
    s = StreamingLLM(base, sink_tokens=4, window_tokens=60, chunk_tokens=7)
    with torch.no_grad():
        loss_sum, n, _ = s.score(ids)
        full = base(ids, labels=ids)
    assert n == 2 * 39
    assert loss_sum / n == pytest.approx(full.loss.item(), rel=1e-5)
    s.reset()
    assert_same_function(s.prefill(ids), full.logits[:, -1], base.config)


@pytest.fixture(scope="module")
def one_layer(tmp_path_factory):
    from uio_ds.model.tiny import build_tiny_model

    path = build_tiny_model("qwen2", str(tmp_path_factory.mktemp("one") / "qwen2-1"), num_hidden_layers=1)
    return AutoModelForCausalLM.from_pretrained(path).eval()


def test_streaming_token_by_token_matches_a_sliding_reference(one_layer):
    """chunk_tokens=1 is the exact method: each token sees the sinks and the last W tokens, at
    cache positions. With one layer a token's K/V depend on the token alone, so the base model
    over [sinks ; window ; token] from scratch is an exact reference (positions, sinks, eviction)."""
    base = one_layer
    ids = random_ids(1, 30, seed=2)
    sinks, window = 2, 5
    s = StreamingLLM(base, sink_tokens=sinks, window_tokens=window, chunk_tokens=1)
    with torch.no_grad():
        _, _, losses = s.score(ids)
        for t in range(sinks + window + 1, 29):
            context = torch.cat([ids[:, :sinks], ids[:, t - window : t + 1]], dim=1)
            logits = base(context).logits[:, -1]
            want = torch.nn.functional.cross_entropy(logits, ids[:, t + 1]).item()
            assert losses[t] == pytest.approx(want, rel=1e-4, abs=1e-5), t
    assert s.cached_tokens == sinks + window


def test_streaming_keeps_its_cache_bounded(base):
    s = StreamingLLM(base, sink_tokens=4, window_tokens=16, chunk_tokens=8)
    s.prefill(random_ids(1, 300, seed=3))
    assert s.cached_tokens == 20 and s.tokens_seen == 300
    s.step(random_ids(1, 1, seed=4))
    assert s.cached_tokens == 20


def test_streaming_refuses_bad_sizes(base):
    with pytest.raises(ValueError, match="window_tokens=0"):
        StreamingLLM(base, window_tokens=0)
    with pytest.raises(ValueError, match="exceeds the model's 4096 positions"):
        StreamingLLM(base, sink_tokens=4, window_tokens=4096, chunk_tokens=8)


def test_homer_single_chunk_equals_the_base_model(base):
    from uio_ds.baselines import HOMER

    ids = random_ids(1, 60, seed=5)
    homer = HOMER(base, chunk_tokens=128)
    with torch.no_grad():
        logits = homer.prefill(ids[:, 4:50], ids[:, :4], ids[:, 50:])
        want = base(ids).logits[:, -1]
        assert_same_function(logits, want, base.config)
        # the cache continues exactly like the base model's own
        nxt = random_ids(1, 3, seed=6)
        assert_same_function(homer.step(nxt), base(torch.cat([ids, nxt], 1)).logits[:, -1], base.config)
    assert homer.stats["chunks"] == 1 and homer.stats["cache_tokens"] == 60


def test_homer_merges_depth_first_with_logarithmic_live_chunks(base):
    from uio_ds.baselines import HOMER

    for n, chunks in ((600, 8), (1200, 16), (2400, 32)):
        ids = random_ids(1, n, seed=n)
        homer = HOMER(base, chunk_tokens=96, warmup_layers=1)
        homer.prefill(ids[:, 4:-8], ids[:, :4], ids[:, -8:])
        s = homer.stats
        assert s["chunks"] == chunks and s["merges"] == chunks - 1
        # depth-first: the chunks alive at once are the levels of the tree plus one
        assert s["max_alive_chunks"] == s["levels"] + 1 == chunks.bit_length()
        # merged chunks stay no longer than a leaf: the cache has a fixed size
        assert s["cache_tokens"] <= 96


def test_homer_target_length_and_prefix_suffix_survive(one_layer):
    """With one layer a token's K depends on the token alone: the cache's keys show which
    tokens were kept. The prefix and suffix must all be there."""
    from uio_ds.baselines import HOMER
    from uio_ds.model.kv import capture_kv

    ids = random_ids(1, 700, seed=7)
    prefix, suffix = ids[:, :5], ids[:, -7:]
    homer = HOMER(one_layer, chunk_tokens=100, warmup_layers=0, target_tokens=40)
    with torch.no_grad():
        homer.prefill(ids[:, 5:-7], prefix, suffix)
        with capture_kv(one_layer) as found:
            one_layer(torch.cat([prefix, suffix], dim=1))
    assert homer.cache_kv.num_tokens == 40 and homer.stats["cache_tokens"] == 40
    keys = homer.cache_kv.keys[0, 0]  # (kv_heads, 40, head_dim)
    edge = found[0].keys[0, 0]
    torch.testing.assert_close(keys[:, :5], edge[:, :5])
    torch.testing.assert_close(keys[:, -7:], edge[:, 5:])


def test_homer_refuses_bad_options(base):
    from uio_ds.baselines import HOMER

    with pytest.raises(ValueError, match="warmup_layers=9"):
        HOMER(base, warmup_layers=9)
    with pytest.raises(ValueError, match="leave no room"):
        HOMER(base, chunk_tokens=8).prefill(random_ids(1, 50), random_ids(1, 4), random_ids(1, 4))
