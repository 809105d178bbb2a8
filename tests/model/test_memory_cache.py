"""Segment memories cached by content: a cached read equals a fresh read exactly, hits across
texts and restarts (the disk), and keys that change with the tokens, the trained parts and the
memory's shape."""

import torch
from helpers import load, perturb_trainable, random_ids

from uio_ds.model import generate
from uio_ds.model.memory_cache import MemoryCache


def _model(tiny_dirs, **overrides):
    model = load(tiny_dirs["llama"], **overrides)
    perturb_trainable(model, scale=0.3)
    return model


def test_a_cached_read_equals_a_fresh_read_exactly(tiny_dirs):
    model = _model(tiny_dirs)
    l = model.segment_length
    texts = random_ids(2, 3 * l, seed=1)
    cache = MemoryCache(model)
    with torch.no_grad():
        fresh = model.compress(texts)
        cold, first = cache.compress(texts)
        warm, second = cache.compress(texts)
    assert (first.hits, first.misses) == (0, 6) and (second.hits, second.misses) == (6, 0)
    for got in (cold, warm):
        assert torch.equal(got.keys, fresh.keys) and torch.equal(got.values, fresh.values)
    assert cache.stats.to_dict() == {"hits": 6, "disk_hits": 0, "misses": 6}


def test_segments_are_shared_between_texts_by_content(tiny_dirs):
    """Another text that starts with the same two segments reads them from the cache and compresses
    only its own third one; each segment's memory is the one it has in any text."""
    model = _model(tiny_dirs)
    l = model.segment_length
    a = random_ids(1, 3 * l, seed=2)
    b = torch.cat([a[:, : 2 * l], random_ids(1, l, seed=3)], dim=1)
    cache = MemoryCache(model)
    m = model.num_mem_tokens
    with torch.no_grad():
        cache.compress(a)
        got, call = cache.compress(b)
        fresh = model.compress(b)
    assert (call.hits, call.misses) == (2, 1)
    torch.testing.assert_close(got.keys, fresh.keys, rtol=1e-5, atol=1e-6)
    assert torch.equal(got.keys[..., : 2 * m, :], model.compress(a).keys[..., : 2 * m, :])


def test_the_disk_cache_serves_a_restart(tiny_dirs, tmp_path):
    model = _model(tiny_dirs)
    texts = random_ids(1, 2 * model.segment_length, seed=4)
    with torch.no_grad():
        want, _ = MemoryCache(model, directory=str(tmp_path)).compress(texts)
        restarted = MemoryCache(model, directory=str(tmp_path))  # nothing in memory: a new process
        got, call = restarted.compress(texts)
    assert call.hits == 2 and restarted.stats.disk_hits == 2 and call.misses == 0
    assert torch.equal(got.keys, want.keys) and torch.equal(got.values, want.values)
    # a damaged file is a miss, not an error
    for path in tmp_path.rglob("*.safetensors"):
        path.write_bytes(b"broken")
    with torch.no_grad():
        _, call = MemoryCache(model, directory=str(tmp_path)).compress(texts)
    assert call.misses == 2


def test_keys_change_with_the_trained_parts_and_the_memory_shape(tiny_dirs):
    model = _model(tiny_dirs)
    ids = random_ids(1, model.segment_length, seed=5)
    key = MemoryCache(model).key(ids[0])
    assert MemoryCache(model).key(ids[0]) == key
    assert MemoryCache(model).key(random_ids(1, model.segment_length, seed=6)[0]) != key
    perturb_trainable(model, seed=1, scale=0.01)
    assert MemoryCache(model).key(ids[0]) != key
    other = _model(tiny_dirs, compression_ratio=8)
    assert MemoryCache(other).prefix != MemoryCache(model).prefix


def test_the_byte_cap_keeps_the_most_recent_segments(tiny_dirs):
    model = _model(tiny_dirs)
    l = model.segment_length
    one = 2 * model.num_layers * model.num_kv_heads * model.num_mem_tokens * model.head_dim * \
        model.mem_embeddings.element_size()
    cache = MemoryCache(model, max_bytes=2 * one)
    with torch.no_grad():
        cache.compress(random_ids(1, 3 * l, seed=7))
    assert cache.bytes == 2 * one and len(cache._items) == 2


def test_generation_through_the_cache_is_generation(tiny_dirs):
    model = _model(tiny_dirs)
    prompt = random_ids(1, 3 * model.segment_length + 5, seed=8)
    cache = MemoryCache(model)
    plain = generate(model, prompt, 6)
    first = generate(model, prompt, 6, memory_cache=cache)
    again = generate(model, prompt, 6, memory_cache=cache)
    assert torch.equal(first.sequences, plain.sequences) and torch.equal(again.sequences, plain.sequences)
    assert cache.stats.hits >= 3
