"""Continuous batching (``DecodeBatch``): streams of different memory and residual lengths decode in
one pass, join and leave between steps, and each row's logits are what the stream gives alone."""

import pytest
import torch
from helpers import assert_same_function, load, perturb_trainable, random_ids

from uio_ds.model.batching import DecodeBatch
from uio_ds.model.generation import MemoryStream
from uio_ds.model.tiny import build_tiny_model


def decode_alone(model, prompt: torch.Tensor, tokens: list[int]) -> list[torch.Tensor]:
    """Logits after the prompt and after each of ``tokens``, one stream decoding alone."""
    stream = MemoryStream(model)
    out = [stream.prefill(prompt)]
    for t in tokens:
        out.append(stream.feed(torch.tensor([[t]])))
    return out


@pytest.mark.parametrize("arch, overrides", [
    ("llama", {}),
    ("qwen2", {}),
    ("mistral", {}),
    ("mistral_sliding", {}),  # a sliding window of 12 entries, shorter than most rows' caches
    ("llama", {"recent_tokens": 16}),  # a raw recent window: the rows' captured K/V go to their streams
    ("qwen2", {"recent_tokens": 16, "sink_tokens": 3}),  # and sinks ahead of the memories
    ("llama", {"memory_window": 2, "position_overflow": "drop_oldest"}),
])
@torch.no_grad()
def test_ragged_streams_decode_together_as_alone(tiny_dirs, tmp_path, arch, overrides):
    if arch == "mistral_sliding":
        model = load(build_tiny_model("mistral", str(tmp_path / "sliding"), sliding_window=12))
    else:
        model = load(tiny_dirs[arch], **overrides)
    perturb_trainable(model, scale=0.2)
    # prompts of 5 to 77 tokens: 0 to 4 memories, residuals of every length; 40 steps cross
    # at least two compressions of every row, at different steps for each
    lengths, steps = [5, 16, 33, 77], 40
    prompts = [random_ids(1, n, seed=n) for n in lengths]
    tokens = [random_ids(1, steps, seed=100 + n)[0].tolist() for n in lengths]
    want = [decode_alone(model, p, t) for p, t in zip(prompts, tokens)]

    batch = DecodeBatch(model, slack=8)  # a small slack: the buffer is packed again several times
    streams, got = [], [[] for _ in lengths]
    for i, prompt in enumerate(prompts):
        stream = MemoryStream(model)
        got[i].append(stream.prefill(prompt))
        streams.append(stream)
    # rows join at different steps: 0 and 1 at once, 2 after 3 steps, 3 after 7
    joins, fed = {0: [0, 1], 3: [2], 7: [3]}, [0] * len(lengths)
    members: list[int] = []
    for step in range(steps + 20):
        for i in joins.get(step, []):
            batch.add(streams[i])
            members.append(i)
        # row 1 leaves after 20 tokens and rejoins after 25: its cache goes out and comes back
        if 1 in members and fed[1] == 20 and step < 30:
            batch.remove(streams[1])
            members = [next(i for i, s in enumerate(streams) if s is member) for member in batch.streams]
            joins.setdefault(step + 5, []).append(1)
        for i in [i for i in members if fed[i] >= steps]:
            batch.remove(streams[i])
        # a leaver's slot takes the last row: the members in the batch's order
        members = [next(i for i, s in enumerate(streams) if s is member) for member in batch.streams]
        if not members:
            continue
        logits = batch.step(torch.tensor([tokens[i][fed[i]] for i in members]))
        for row, i in enumerate(members):
            got[i].append(logits[row:row + 1])
            fed[i] += 1
    assert fed == [steps] * len(lengths) and len(batch) == 0
    assert batch.repacks > 2
    for i in range(len(lengths)):
        assert len(got[i]) == len(want[i])
        for g, w in zip(got[i], want[i]):
            assert_same_function(g, w, model.base.config)
    # a stream that left goes on alone from where the batch left it
    alone = MemoryStream(model)
    alone.prefill(prompts[0])
    for t in tokens[0]:
        alone.feed(torch.tensor([[t]]))
    assert_same_function(streams[0].feed(torch.tensor([[7]])), alone.feed(torch.tensor([[7]])), model.base.config)


@torch.no_grad()
def test_rows_of_a_batched_prefill_go_on_alone(tiny_dirs):
    """Prompts of one length read together (one encoder batch), then split into a stream each."""
    model = load(tiny_dirs["llama"])
    perturb_trainable(model, scale=0.2)
    prompts = random_ids(3, 37, seed=4)
    together = MemoryStream(model)
    first = together.prefill(prompts)
    rows = together.rows()
    assert len(rows) == 3
    for b, row in enumerate(rows):
        alone = MemoryStream(model)
        assert_same_function(first[b:b + 1], alone.prefill(prompts[b:b + 1]), model.base.config)
        for t in random_ids(1, 20, seed=b)[0].tolist():
            assert_same_function(row.feed(torch.tensor([[t]])), alone.feed(torch.tensor([[t]])), model.base.config)


def test_a_step_needs_a_token_per_member(tiny_dirs):
    model = load(tiny_dirs["llama"])
    stream = MemoryStream(model)
    with torch.no_grad():
        stream.prefill(random_ids(1, 9))
    batch = DecodeBatch(model)
    batch.add(stream)
    with pytest.raises(ValueError, match="one token per member: 1"):
        batch.step(torch.tensor([3, 4]))
    two = MemoryStream(model)
    with torch.no_grad():
        two.prefill(random_ids(2, 9))
    with pytest.raises(ValueError, match="one row per stream"):
        batch.add(two)
