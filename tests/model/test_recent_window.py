"""The raw recent window (uio.recent_tokens): the decoder reads the last k segments' raw K/V between
the memories and its own tokens. Exact against full attention when the window covers the text;
streaming generation, scoring and every gradient strategy agree with the same decoder reading."""

import pytest
import torch
from helpers import assert_same_function, load, perturb_trainable, random_ids
from transformers import AutoModelForCausalLM

from uio_ds.algo import TBPTT, Full, Incremental, Unbiased
from uio_ds.config import ConfigError, UIOConfig
from uio_ds.eval.methods import UIOMethod
from uio_ds.model.generation import MemoryStream, generate
from uio_ds.model.positions import max_tokens_supported, peak_positions, segment_targets, split_segments


def reference_last_logits(model, ids: torch.Tensor) -> torch.Tensor:
    """From scratch: every segment through the decoder in order (memories of the segments before its
    window, the window's raw K/V as the decoder read them), the logits after the last token."""
    bounds = split_segments(ids.shape[1], model.segment_length)
    memories = [model.memory_kv(model.encode(ids[:, a:b])) for a, b in bounds[:-1]]
    recent = model.recent_kv()
    for t, (a, b) in enumerate(bounds):
        first, stop = model.read_memories(t)
        prefix = memories[first:stop]
        kv = None
        if prefix:
            kv = prefix[0] if len(prefix) == 1 else type(prefix[0]).cat(prefix)
        logits = model.decode(ids[:, a:b], kv, recent=recent).logits
    return logits[:, -1]


def test_the_window_holds_whole_segments():
    with pytest.raises(ConfigError, match="recent_tokens=20 is not a multiple of segment_length=16"):
        UIOConfig(segment_length=16, compression_ratio=4, recent_tokens=20)
    config = UIOConfig(segment_length=16, compression_ratio=4, recent_tokens=32)
    # segment t reads max(0, t-2) memories of 4, min(2, t) raw segments of 16, then itself
    assert peak_positions(config, 16) == 16 and peak_positions(config, 48) == 2 * 16 + 16
    assert peak_positions(config, 80) == 2 * 4 + 2 * 16 + 16
    limit = 100
    longest = max_tokens_supported(config, limit)
    assert peak_positions(config, longest) <= limit < peak_positions(config, longest + 1)


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_a_window_over_the_whole_text_is_full_attention(tiny_dirs, arch):
    model = load(tiny_dirs[arch], recent_tokens=64)  # 4 segments of 16: a 60-token text is all raw
    perturb_trainable(model, scale=0.2)  # memories would change the result if any were read
    base = AutoModelForCausalLM.from_pretrained(tiny_dirs[arch], attn_implementation="sdpa").eval()
    doc = random_ids(2, 60, seed=1)
    with torch.no_grad():
        want = base(doc, labels=doc).loss
        got = model(doc)
        assert_same_function(got.loss, want, base.config)
        losses = UIOMethod(model).token_losses(doc[:1])
        full = torch.nn.functional.cross_entropy(base(doc[:1]).logits[0, :-1], doc[0, 1:], reduction="none")
        assert_same_function(torch.tensor(losses), full, base.config)
    for strategy in (Full(), TBPTT(2), Incremental(None), Unbiased(2)):
        result = strategy.run(model, doc)
        assert result.loss == pytest.approx(want.item(), rel=1e-5), strategy
        assert all(g is None or g.abs().max() == 0 for g in result.grads), strategy  # no memory was read
    prompt = random_ids(1, 30, seed=2)
    with torch.no_grad():
        greedy = generate(model, prompt, max_new_tokens=20).sequences
        plain = base.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert torch.equal(greedy, plain)


@pytest.mark.parametrize("prompt_length", [41, 5])
def test_streaming_generation_reads_what_scoring_reads(tiny_dirs, prompt_length):
    model = load(tiny_dirs["llama"], recent_tokens=16)  # one raw segment, memories before it
    perturb_trainable(model, scale=0.2)
    prompt = random_ids(1, prompt_length, seed=3)
    result = generate(model, prompt, max_new_tokens=40)
    seq = result.sequences
    stream = MemoryStream(model)
    with torch.no_grad():
        got = stream.prefill(prompt)
        for t in range(prompt_length, seq.shape[1]):
            want = reference_last_logits(model, seq[:, :t])
            assert_same_function(got, want, model.base.config)
            assert torch.equal(want.argmax(-1), seq[:, t]), f"token {t}"
            got = stream.feed(seq[:, t : t + 1])
    # and the window matters: without it the same parts predict otherwise
    plain = load(tiny_dirs["llama"])
    plain.load_state_dict(model.state_dict())
    with torch.no_grad():
        assert (reference_last_logits(plain, seq[:, :70]) - reference_last_logits(model, seq[:, :70])).abs().max() > 1e-3


@pytest.mark.parametrize("sink_tokens", [0, 3])
def test_strategies_agree_with_a_window(tiny_dirs, sink_tokens):
    """With the window smaller than the text, the incremental strategies give full BPTT's gradient
    (the raw K/V are detached in every strategy alike), prompts included; with attention sinks too."""
    model = load(tiny_dirs["mistral"], recent_tokens=16, sink_tokens=sink_tokens)
    perturb_trainable(model, seed=3, scale=0.2)
    doc = random_ids(2, 16 * 5 + 5, seed=4)
    labels = doc.clone()
    labels[:, :20] = -100  # the first segment is read, not scored: it must still fill the window
    documents = [{"input_ids": doc[i], "labels": labels[i]} for i in range(2)]
    want = Full().run(model, documents)
    for strategy in (TBPTT(6), Incremental(None), Unbiased(6)):
        got = strategy.run(model, documents)
        assert got.loss_sum == pytest.approx(want.loss_sum, rel=1e-5), strategy
        for g, w in zip(got.grads, want.grads):
            assert (g is None) == (w is None)
            if w is not None:
                assert_same_function(g, w, model.base.config)
    # the loss is the decoder's with the window: the same as scoring reads it
    with torch.no_grad():
        scored = UIOMethod(model).token_losses(doc[:1])
    targets = segment_targets(labels[:1], 0, doc.shape[1])
    assert len(scored) == doc.shape[1] - 1 and int((targets != -100).sum()) == doc.shape[1] - 20
