"""Streaming generation against a slow reference that rebuilds everything for every token."""

import pytest
import torch
from helpers import assert_same_function, load, perturb_trainable, random_ids

from uio_ds.model.generation import MemoryStream, generate, sample_next
from uio_ds.model.kv import MemoryKV
from uio_ds.model.positions import PositionRangeError, split_segments


def reference_next_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """From scratch: compress every full segment one at a time, decode the residual (1..l tokens)."""
    bounds = split_segments(ids.shape[1], model.segment_length)
    memories = [model.memory_kv(model.encode(ids[:, s:e])) for s, e in bounds[:-1]]
    start, stop = bounds[-1]
    return model.decode(ids[:, start:stop], MemoryKV.cat(memories) if memories else None).logits[:, -1]


@pytest.mark.parametrize("arch, prompt_length", [("llama", 41), ("mistral", 32), ("qwen2", 5)])
def test_streaming_equals_rebuild_from_scratch(tiny_dirs, arch, prompt_length):
    model = load(tiny_dirs[arch])
    perturb_trainable(model, scale=0.2)
    prompt = random_ids(1, prompt_length, seed=1)
    result = generate(model, prompt, max_new_tokens=40)  # crosses at least two re-compressions
    seq = result.sequences
    assert seq.shape == (1, prompt_length + 40) and torch.equal(seq[:, :prompt_length], prompt)
    assert result.num_compressions == (prompt_length + 39) // 16
    assert result.memory_tokens == result.num_compressions * model.num_mem_tokens
    with torch.no_grad():
        for t in range(prompt_length, seq.shape[1]):
            want = reference_next_logits(model, seq[:, :t])
            assert torch.equal(want.argmax(-1), seq[:, t]), f"token {t}"
    # logits, not only tokens: replay the stream and compare every step
    stream = MemoryStream(model)
    with torch.no_grad():
        got = stream.prefill(prompt)
        for t in range(prompt_length, seq.shape[1]):
            assert_same_function(got, reference_next_logits(model, seq[:, :t]), model.base.config)
            got = stream.feed(seq[:, t : t + 1])


def test_chunked_prefill_equals_one_batch(tiny_dirs):
    model = load(tiny_dirs["qwen2"])
    perturb_trainable(model, scale=0.2)
    prompt = random_ids(2, 16 * 7 + 3, seed=11)
    with torch.no_grad():
        together = MemoryStream(model, encode_batch_size=None)
        chunked = MemoryStream(model, encode_batch_size=3)  # 14 segment rows in chunks of 3
        assert_same_function(chunked.prefill(prompt), together.prefill(prompt), model.base.config)
    assert_same_function(chunked.memory.keys, together.memory.keys, model.base.config)


@pytest.mark.parametrize("cuts", [(5, 30, 31, 70), (16, 48), (3,), (20, 21, 22, 23)])
def test_extend_in_pieces_equals_one_prefill(tiny_dirs, cuts):
    """A session's later turns (``extend``) leave the stream exactly as one prefill of the whole
    conversation would: same logits, same memories, same residual."""
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.2)
    ids = random_ids(1, 77, seed=5)
    with torch.no_grad():
        whole = MemoryStream(model)
        want = whole.prefill(ids)
        pieces = MemoryStream(model)
        bounds = [0, *cuts, ids.shape[1]]
        got = pieces.prefill(ids[:, : bounds[1]])
        for start, stop in zip(bounds[1:-1], bounds[2:]):
            got = pieces.extend(ids[:, start:stop])
    assert_same_function(got, want, model.base.config)
    assert pieces.memory_tokens == whole.memory_tokens and torch.equal(pieces.residual, whole.residual)
    assert_same_function(pieces.memory.keys, whole.memory.keys, model.base.config)


def test_raw_kv_is_dropped_after_compression(tiny_dirs):
    model = load(tiny_dirs["llama"])
    stream = MemoryStream(model)
    with torch.no_grad():
        stream.prefill(random_ids(1, 15))
        assert stream.cache.get_seq_length() == 15 and stream.memory_tokens == 0
        stream.feed(random_ids(1, 1, seed=2))  # the residual reaches l=16: compressed
        assert stream.cache.get_seq_length() == 4 and stream.memory_tokens == 4 and stream.residual.shape[1] == 0
        stream.feed(random_ids(1, 1, seed=3))
        assert stream.cache.get_seq_length() == 5


def test_batch_rows_match_single_generation(tiny_dirs):
    model = load(tiny_dirs["qwen2"])
    perturb_trainable(model, scale=0.2)
    prompts = random_ids(3, 37, seed=4)
    batched = generate(model, prompts, max_new_tokens=20).sequences
    for row in range(3):
        single = generate(model, prompts[row : row + 1], max_new_tokens=20).sequences
        assert torch.equal(batched[row : row + 1], single)


def test_stop_tokens_finish_rows_and_pad(tiny_dirs):
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.2)
    prompts = random_ids(2, 20, seed=5)
    free = generate(model, prompts, max_new_tokens=12).sequences[:, 20:]
    stop = int(free[0, 3])  # row 0 emits this at step 3
    out = generate(model, prompts, max_new_tokens=12, stop_token_ids=[stop], pad_token_id=0)
    new = out.sequences[:, 20:]
    first = int((free[0] == stop).nonzero()[0])
    assert torch.equal(new[0, : first + 1], free[0, : first + 1])
    assert (new[0, first + 1 :] == 0).all()
    assert out.finished[0]
    row1_stops = (free[1] == stop).nonzero()
    if len(row1_stops) == 0:  # row 1 never stops: it runs to the end unchanged
        assert not out.finished[1] and torch.equal(new[1], free[1])


def test_stop_when_finishes_rows_as_a_stop_token_would(tiny_dirs):
    """A condition on the tokens so far (a stop string several tokens spell) finishes a row at the
    step it first holds; the other row goes on as it would alone."""
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.2)
    prompts = random_ids(2, 20, seed=5)
    free = generate(model, prompts, max_new_tokens=12).sequences[:, 20:]
    pair = free[0, 2:4].tolist()  # row 0 emits this pair at steps 2 and 3

    def seen(tokens):
        return [any(row[i:i + 2] == pair for i in range(len(row) - 1)) for row in tokens.tolist()]

    out = generate(model, prompts, max_new_tokens=12, stop_when=seen, pad_token_id=0)
    new = out.sequences[:, 20:]
    assert torch.equal(new[0, :4], free[0, :4]) and (new[0, 4:] == 0).all() and out.finished[0]
    if not seen(free[1:])[0]:
        assert torch.equal(new[1], free[1]) and not out.finished[1]


@pytest.mark.parametrize("recent_tokens", [0, 16])
def test_score_gives_the_logits_feed_gives_token_by_token(tiny_dirs, recent_tokens):
    """Teacher forcing through the stream: every position's logits, compressions included, as
    ``feed`` gives them one token at a time."""
    model = load(tiny_dirs["qwen2"], recent_tokens=recent_tokens)
    perturb_trainable(model, scale=0.2)
    ids = random_ids(1, 75, seed=8)
    with torch.no_grad():
        stream = MemoryStream(model)
        stream.prefill(ids[:, :21])
        got = stream.score(ids[:, 21:])  # 54 tokens: the residual fills three more segments
        one = MemoryStream(model)
        one.prefill(ids[:, :21])
        want = torch.stack([one.feed(ids[:, t:t + 1]) for t in range(21, 75)], dim=1)
    assert got.shape == (1, 54, model.vocab_size)
    assert_same_function(got, want, model.base.config)
    assert stream.num_compressions == one.num_compressions == 4 and torch.equal(stream.residual, one.residual)


def test_repeated_stream_reads_each_continuation_as_alone(tiny_dirs):
    """A prompt read once, then three continuations read as one batch (``repeat``): each row's
    logits are those of a stream that read the prompt and that continuation alone."""
    model = load(tiny_dirs["mistral"], recent_tokens=16)
    perturb_trainable(model, scale=0.2)
    prompt, conts = random_ids(1, 40, seed=9), random_ids(3, 30, seed=10)
    with torch.no_grad():
        stream = MemoryStream(model)
        stream.prefill(prompt)
        got = stream.repeat(3).score(conts)
        for row in range(3):
            alone = MemoryStream(model)
            alone.prefill(prompt)
            assert_same_function(got[row:row + 1], alone.score(conts[row:row + 1]), model.base.config)
        assert stream.residual.shape == (1, 8)  # the repeated stream left this one as it was


def test_stream_without_memory_reads_each_segment_alone(tiny_dirs):
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.2)
    ids = random_ids(1, 70, seed=11)
    with torch.no_grad():
        stream = MemoryStream(model, use_memory=False)
        last = stream.prefill(ids[:, :37])  # segments 0 and 1 are not read at all: the decoder sees 32..36
        got = torch.cat([last[:, None], stream.score(ids[:, 37:])], dim=1)
        want = torch.cat([model.decode(ids[:, s:e]).logits for s, e in split_segments(70, 16)], dim=1)[:, 36:]
    assert_same_function(got, want, model.base.config)
    assert stream.num_compressions == 0 and stream.memory is None and stream.cache.get_seq_length() == 70 - 64
    # generation reads the same way: greedy tokens are the argmax of segment-alone logits
    out = generate(model, ids[:, :37], 20, use_memory=False).sequences
    with torch.no_grad():
        ref = torch.cat([model.decode(out[:, s:e]).logits for s, e in split_segments(56, 16)], dim=1)
    assert torch.equal(ref[0, 36:].argmax(-1), out[0, 37:])


def test_sampling_is_seeded_and_top_k_one_is_greedy(tiny_dirs):
    model = load(tiny_dirs["mistral"])
    prompt = random_ids(2, 24, seed=6)
    a = generate(model, prompt, 16, do_sample=True, temperature=1.5, seed=7).sequences
    b = generate(model, prompt, 16, do_sample=True, temperature=1.5, seed=7).sequences
    c = generate(model, prompt, 16, do_sample=True, temperature=1.5, seed=8).sequences
    greedy = generate(model, prompt, 16).sequences
    top1 = generate(model, prompt, 16, do_sample=True, top_k=1, seed=9).sequences
    assert torch.equal(a, b) and not torch.equal(a, c) and torch.equal(top1, greedy)


def test_top_p_keeps_the_nucleus():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    gen = torch.Generator().manual_seed(0)
    draws = {int(sample_next(logits, True, top_p=0.7, generator=gen)) for _ in range(200)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are never drawn


def test_generation_past_the_position_range(short_context_dir):
    strict = load(short_context_dir)  # 64 positions: at most 220 tokens of text
    called = []
    strict.encode = lambda *a, **k: called.append(1)  # must not be reached
    with pytest.raises(PositionRangeError, match="longest supported text is 220 tokens"):
        generate(strict, random_ids(1, 200), max_new_tokens=21)
    assert not called
    del strict.encode
    result = generate(strict, random_ids(1, 200), max_new_tokens=20)  # exactly 220: fits
    assert result.sequences.shape[1] == 220 and result.memory_tokens == 13 * 4

    sliding = load(short_context_dir, position_overflow="drop_oldest")
    perturb_trainable(sliding, scale=0.2)
    prompt = random_ids(1, 230, seed=10)
    result = generate(sliding, prompt, max_new_tokens=30)
    assert result.num_compressions == (229 + 30) // 16
    assert result.memory_tokens == 48  # the most recent 12 memories are kept, older ones released
    with torch.no_grad():
        for t in range(230, result.sequences.shape[1]):
            want = reference_next_logits(sliding, result.sequences[:, :t])
            assert torch.equal(want.argmax(-1), result.sequences[:, t])


def test_bad_generation_arguments(tiny_dirs):
    model = load(tiny_dirs["llama"])
    with pytest.raises(ValueError, match="non-empty"):
        generate(model, torch.zeros(1, 0, dtype=torch.long), 4)
    with pytest.raises(ValueError, match="temperature"):
        generate(model, random_ids(1, 4), 4, do_sample=True, temperature=0)
    with pytest.raises(ValueError, match="top_p"):
        generate(model, random_ids(1, 4), 4, top_p=0)


def test_memory_window_reads_only_the_most_recent_memories(short_context_dir):
    """memory_window=3: generation, scoring and training read the last 3 memories only, checked
    against the unwindowed model given those 3 memories by hand; and any length fits."""
    from uio_ds.eval.methods import UIOMethod

    windowed = load(short_context_dir, memory_window=3)
    perturb_trainable(windowed, scale=0.2)
    plain = load(short_context_dir)
    plain.load_state_dict(windowed.state_dict())
    assert plain.max_tokens_supported() == 220 and windowed.max_tokens_supported() is None
    assert windowed.readable_memories(10) == 3 and windowed.peak_positions(1000) == 3 * 4 + 16

    def by_hand(ids):  # the unwindowed model reading the last 3 memories before the residual
        bounds = split_segments(ids.shape[1], 16)
        memories = [plain.memory_kv(plain.encode(ids[:, s:e])) for s, e in bounds[:-1]][-3:]
        start, stop = bounds[-1]
        return plain.decode(ids[:, start:stop], MemoryKV.cat(memories) if memories else None).logits[:, -1]

    prompt = random_ids(1, 300, seed=11)  # past the 220 tokens that reading every memory allows
    result = generate(windowed, prompt, max_new_tokens=20)
    assert result.memory_tokens == 3 * 4
    with torch.no_grad():
        for t in range(300, 320):
            assert torch.equal(by_hand(result.sequences[:, :t]).argmax(-1), result.sequences[:, t]), t
        doc = random_ids(1, 90, seed=12)
        losses = UIOMethod(windowed).token_losses(doc)
        # loss 79 scores token 80 from position 79, the end of segment 5, read after the
        # memories of segments 2, 3 and 4 (not 1)
        want = torch.nn.functional.cross_entropy(by_hand(doc[:, :80]).float(), doc[:, 80])
        assert losses[79] == pytest.approx(want.item(), rel=1e-5)
        assert windowed(doc).loss_sum.item() == pytest.approx(sum(losses), rel=1e-5)
        assert abs(plain(doc).loss_sum.item() - sum(losses)) > 1e-3  # the window changes the scores


def test_prefill_memory_stays_below_full_attention_at_every_length(tiny_dirs):
    """The encoder batch comes from a budget (1/8 of full attention's KV cache for the prompt):
    UIO's prefill then holds about its memory K/V, 1/ratio of full attention's cache (ratio 4
    here), where compressing every segment at once holds nearly as much as full attention."""
    from uio_ds.utils.memory_tracker import TensorMemoryTracker

    model = load(tiny_dirs["llama"])
    for n in (256, 1024, 4096):
        ids = random_ids(1, n, seed=1)
        with torch.no_grad():
            with TensorMemoryTracker() as full:
                model.base(ids, use_cache=True, logits_to_keep=1)
            with TensorMemoryTracker() as budget:
                MemoryStream(model).prefill(ids)
            with TensorMemoryTracker() as at_once:
                MemoryStream(model, encode_batch_size=None).prefill(ids)
        assert budget.peak < full.peak / 3, n
        assert at_once.peak > 0.8 * full.peak and at_once.peak > 3 * budget.peak, n
    assert model.encode_batch_for(4096) > model.encode_batch_for(1024) >= model.encode_batch_for(16) == 1
