"""Attention sinks (uio.sink_tokens): the decoder reads the text's first tokens raw ahead of the
memories, once they have left the raw window. With no memory read (memory_window=0) the decoder
is StreamingLLM reading l tokens at a time, which an independent implementation checks."""

import pytest
import torch
from helpers import assert_same_function, load, perturb_trainable, random_ids

from uio_ds.baselines.streaming_llm import StreamingLLM
from uio_ds.config import UIOConfig
from uio_ds.eval.methods import UIOMethod
from uio_ds.model.generation import MemoryStream, generate
from uio_ds.model.kv import MemoryKV, RecentKV
from uio_ds.model.positions import max_tokens_supported, peak_positions


def test_sinks_are_read_once_they_leave_the_window():
    recent = RecentKV(tokens=4, sinks=3)
    kv = MemoryKV(torch.arange(10.0).view(1, 1, 1, 10, 1), torch.zeros(1, 1, 1, 10, 1))
    recent.add(kv.token_slice(0, 2))
    assert recent.sink_kv is None and recent.num_tokens == 2  # tokens 0-1, all in the window
    recent.add(kv.token_slice(2, 5))
    # the window holds 1-4: token 0 has left it, and is read as the one sink not in the window
    assert recent.around(None).keys.flatten().tolist() == [0, 1, 2, 3, 4]
    recent.add(kv.token_slice(5, 10))
    memory = MemoryKV(torch.full((1, 1, 1, 2, 1), -1.0), torch.zeros(1, 1, 1, 2, 1))
    assert recent.around(memory).keys.flatten().tolist() == [0, 1, 2, -1, -1, 6, 7, 8, 9]
    assert recent.num_tokens == 7
    row = recent.map(lambda x: MemoryKV(x.keys.clone(), x.values.clone()))
    assert row.around(None).keys.flatten().tolist() == [0, 1, 2, 6, 7, 8, 9] and row.seen == 10


def test_positions_count_the_sinks():
    config = UIOConfig(segment_length=16, compression_ratio=4, recent_tokens=32, sink_tokens=4)
    # segment t reads 4 sinks once a segment has left the window, max(0, t-2) memories, 2 raw segments
    assert peak_positions(config, 48) == 2 * 16 + 16
    assert peak_positions(config, 80) == 4 + 2 * 4 + 2 * 16 + 16
    longest = max_tokens_supported(config, 100)
    assert peak_positions(config, longest) <= 100 < peak_positions(config, longest + 1)
    windowed = UIOConfig(segment_length=16, compression_ratio=4, recent_tokens=32, sink_tokens=4, memory_window=2)
    assert max_tokens_supported(windowed, 4 + 8 + 32 + 16) is None
    assert max_tokens_supported(windowed, 4 + 8 + 32 + 15) is not None


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_no_memory_with_sinks_and_a_window_is_streaming_llm(tiny_dirs, arch):
    model = load(tiny_dirs[arch], recent_tokens=32, sink_tokens=4, memory_window=0)
    perturb_trainable(model, scale=0.2)  # a memory read by mistake would change the result
    doc = random_ids(1, 16 * 7 + 5, seed=5)
    streaming = StreamingLLM(model.base, sink_tokens=4, window_tokens=32, chunk_tokens=16)
    with torch.no_grad():
        _, _, want = streaming.score(doc)
        got = UIOMethod(model).token_losses(doc)
    assert_same_function(torch.tensor(got), torch.tensor(want), model.base.config)
    # streaming generation reads the same, and compresses nothing: no memory is ever read
    stream = MemoryStream(model)
    with torch.no_grad():
        first = stream.prefill(doc[:, :1])
        logits = torch.cat([first[:, None], stream.score(doc[:, 1:-1])], dim=1)[0]
    streamed = torch.nn.functional.cross_entropy(logits.float(), doc[0, 1:], reduction="none")
    assert_same_function(streamed, torch.tensor(want), model.base.config)
    assert stream.num_compressions == 0 and stream.memory is None
    # the sinks matter: without them the same window reads otherwise
    config = model.config
    plain = load(tiny_dirs[arch], recent_tokens=32, memory_window=0)
    with torch.no_grad():
        other = UIOMethod(plain).token_losses(doc)
    assert config.sink_tokens == 4 and max(abs(a - b) for a, b in zip(got, other)) > 1e-3


@pytest.mark.parametrize("recent_tokens", [16, 0])
def test_generation_with_sinks_reads_what_scoring_reads(tiny_dirs, recent_tokens):
    """Teacher-forced scoring, streaming generation (batched rows, repeated rows) and the training
    loss read the same [sinks ; memories ; window ; segment]."""
    model = load(tiny_dirs["llama"], recent_tokens=recent_tokens, sink_tokens=5)
    perturb_trainable(model, scale=0.2)
    prompts = random_ids(2, 41, seed=6)
    result = generate(model, prompts, max_new_tokens=30)
    seq = result.sequences
    with torch.no_grad():
        for b in range(2):
            losses = torch.tensor(UIOMethod(model).token_losses(seq[b:b + 1]))
            stream = MemoryStream(model)
            stream.prefill(seq[b:b + 1, :41])
            logits = stream.repeat(2).score(seq[b:b + 1, 41:].expand(2, -1))[0]
            again = torch.nn.functional.cross_entropy(logits[:-1].float(), seq[b, 42:], reduction="none")
            assert_same_function(again, losses[41:], model.base.config)
            # greedy generation chose the argmax of what scoring reads
            assert torch.equal(logits[:-1].argmax(-1), seq[b, 42:])
        full = model(seq).loss_sum / (seq.numel() - seq.shape[0])
    every = torch.tensor([UIOMethod(model).token_losses(seq[b:b + 1]) for b in range(2)])
    assert full.item() == pytest.approx(every.mean().item(), rel=1e-5)

