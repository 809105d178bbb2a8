"""The four gradient strategies, checked exactly against each other and statistically against Eq. 5."""

import math
import random

import pytest
import torch
from helpers import load, perturb_trainable, random_ids

from uio_ds.algo import TBPTT, Full, Incremental, Unbiased, build_strategy
from uio_ds.algo.incremental import _Reservoir


@pytest.fixture(scope="module")
def model(tiny_dirs):
    m = load(tiny_dirs["mistral"])  # GQA; l=16, m=4
    perturb_trainable(m, seed=3, scale=0.2)  # non-zero LoRA B, so every parameter has gradient
    return m


def flat(grads) -> torch.Tensor:
    return torch.cat([g.flatten() for g in grads if g is not None])


def rel_err(a, b) -> float:
    return ((flat(a) - flat(b)).norm() / flat(b).norm()).item()


def assert_same_structure(a, b):
    assert [g is None for g in a.grads] == [g is None for g in b.grads]


def test_full_matches_plain_backward(model):
    doc = random_ids(2, 70, seed=1)
    res = Full().run(model, doc)
    loss = model(doc).loss
    ref = torch.autograd.grad(loss, model.trainable_parameters(), allow_unused=True)
    assert res.num_tokens == 2 * 69 and math.isclose(res.loss, loss.item(), rel_tol=1e-6)
    assert all(g is not None for g in res.grads)
    assert rel_err(res.grads, ref) < 1e-6


@pytest.mark.parametrize("S, T", [(1, 5), (2, 5), (3, 7), (2, 3)])
def test_incremental_equals_tbptt(model, S, T):
    doc = random_ids(1, 16 * (T - 1) + 7, seed=S * 10 + T)  # T segments, the last one short
    plain, inc = TBPTT(S).run(model, doc), Incremental(S).run(model, doc)
    assert_same_structure(plain, inc)
    assert rel_err(inc.grads, plain.grads) <= 1e-5
    assert plain.segment_loss_sums == pytest.approx(inc.segment_loss_sums, rel=1e-6)
    # the cost the method promises: T-1 encoder backward passes instead of about (T-1)*S
    assert inc.stats["encoder_backward_passes"] == T - 1
    assert plain.stats["encoder_backward_passes"] == sum(min(S, t) for t in range(T))
    assert inc.stats["max_live_graphs"] == min(S, T - 1)


def test_truncation_changes_the_gradient(model):
    doc = random_ids(1, 16 * 5, seed=2)
    assert rel_err(Incremental(1).run(model, doc).grads, Full().run(model, doc).grads) > 1e-3


@pytest.mark.parametrize("mode", ["keep", "offload", "recompute", "recompute_offload"])
def test_graph_modes_agree(model, mode):
    doc = random_ids(2, 16 * 6, seed=4)
    ref = Incremental(2).run(model, doc)
    res = Incremental(2, graph_mode=mode, encode_batch_size=2).run(model, doc)
    assert rel_err(res.grads, ref.grads) <= 1e-5
    if mode.startswith("recompute"):
        assert res.stats["max_live_graphs"] == 0 and res.stats["encoder_recomputes"] == 5
    else:
        assert res.stats["max_live_graphs"] == 2


def test_recompute_offload_moves_only_the_decoder_activations(model, monkeypatch):
    import uio_ds.algo.passes as passes

    entered = []
    real = passes.offload_saved_tensors
    monkeypatch.setattr(passes, "offload_saved_tensors", lambda device: entered.append(device) or real(device))
    doc = random_ids(1, 16 * 4, seed=4)
    res = Incremental(2, graph_mode="recompute_offload").run(model, doc)
    assert len(entered) == 4 and res.stats["max_live_graphs"] == 0  # once per decoder step; no graph kept
    entered.clear()
    Incremental(2, graph_mode="recompute").run(model, doc)
    assert entered == []


def test_incremental_without_window_and_unbiased_with_large_window_equal_full(model):
    doc = random_ids(1, 16 * 5 + 3, seed=5)
    full = Full().run(model, doc)
    assert rel_err(Incremental(None).run(model, doc).grads, full.grads) <= 1e-5
    for S in (5, 9):  # S >= T-1: nothing is ever evicted and the factor is 1
        res = Unbiased(S, seed=S).run(model, doc)
        assert rel_err(res.grads, full.grads) <= 1e-5
        assert res.stats["evictions"] == 0


def test_memories_past_the_position_range_are_skipped_exactly(short_context_dir):
    """Under 'drop_oldest' the strategies run the transfer head only on memories a decoder reads
    (64 positions, l=16, m=4: the 12 most recent): the gradient is that of the full model."""
    m = load(short_context_dir, position_overflow="drop_oldest")
    perturb_trainable(m, seed=4, scale=0.2)
    assert m.readable_memories(20) == 12 and m.readable_memories(5) == 5
    doc = random_ids(1, 16 * 16 + 5, seed=6)  # 16 memories: the oldest ones are dropped
    full = Full().run(m, doc)
    assert rel_err(Incremental(None).run(m, doc).grads, full.grads) <= 1e-5
    assert abs(Incremental(None).run(m, doc).loss - full.loss) <= 1e-6


def test_documents_of_different_lengths(model):
    docs = [random_ids(1, 40, seed=6)[0], random_ids(1, 75, seed=7)[0]]
    together = Incremental(2).run(model, docs)
    scale = 1.0 / (39 + 74)
    apart = [Incremental(2).run(model, d.unsqueeze(0), loss_scale=scale) for d in docs]
    assert together.num_tokens == 39 + 74
    summed = [a + b for a, b in zip(apart[0].grads, apart[1].grads)]
    assert rel_err(together.grads, summed) <= 1e-6
    with pytest.raises(ValueError, match="different lengths go in a list"):
        Incremental(2).run(model, torch.zeros(2, 3, 40, dtype=torch.long))


def test_labels_score_only_the_marked_tokens(model):
    """Labels (Hugging Face convention): IGNORE_INDEX tokens are read but not predicted. Every
    strategy's gradient equals plain autograd over the hand-summed loss of the kept targets."""
    from uio_ds.formats import IGNORE_INDEX
    from uio_ds.model.positions import segment_targets, split_segments

    doc = random_ids(2, 16 * 4 + 5, seed=11)
    labels = doc.clone()
    labels[0, :60] = IGNORE_INDEX  # row 0: only its last targets are scored (all in segment 4-5)
    labels[1, 20:50] = IGNORE_INDEX
    kept = int((labels[:, 1:] != IGNORE_INDEX).sum())
    # reference: decode every segment after all earlier memories, loss over kept targets only
    memory = model.memory_kv(model.encode(doc[:, :64].reshape(8, 16))).per_text(2)
    total = 0
    for t, (a, b) in enumerate(split_segments(doc.shape[1], 16)):
        previous = memory.token_slice(0, 4 * t) if t else None
        total = total + model.decode(doc[:, a:b], previous, segment_targets(labels, a, b)).loss_sum
    ref = torch.autograd.grad(total / kept, model.trainable_parameters(), allow_unused=True)
    for strategy in (Full(), Incremental(None), Unbiased(10)):
        res = strategy.run(model, [{"input_ids": doc, "labels": labels}])
        assert res.num_tokens == kept and math.isclose(res.loss_sum, total.item(), rel_tol=1e-5)
        assert rel_err(res.grads, ref) < 1e-5, strategy
    # segment 2 scores no token in either row: its decoder pass is not run (loss and gradient 0)
    calls = []
    original = model.decode
    model.decode = lambda *args, **kwargs: calls.append(args[0].shape[1]) or original(*args, **kwargs)
    try:
        for strategy in (TBPTT(2), Incremental(None), Unbiased(2)):
            calls.clear()
            res = strategy.run(model, [{"input_ids": doc, "labels": labels}])
            assert len(calls) == 4 and res.segment_num_tokens[2] == 0 and res.segment_loss_sums[2] == 0, strategy
    finally:
        del model.decode
    # an unlabelled document is scored on every token, as before
    assert Full().run(model, [{"input_ids": doc}]).num_tokens == 2 * (doc.shape[1] - 1)
    with pytest.raises(ValueError, match="labels of shape"):
        Full().run(model, [{"input_ids": doc, "labels": labels[:, :10]}])
    with pytest.raises(ValueError, match="no scored token"):
        Full().run(model, [{"input_ids": doc, "labels": torch.full_like(doc, IGNORE_INDEX)}])


def test_stacked_documents_keep_their_own_reservoir(model):
    """Unbiased(S) draws one window per document: a stacked batch gets exactly the gradient of its
    documents run one by one with the same seed (windows drawn in the same order)."""
    docs = [random_ids(1, 16 * 6 + 3, seed=20 + i)[0] for i in range(4)]
    stacked = Unbiased(2, seed=9).run(model, docs)
    total = sum(len(d) - 1 for d in docs)
    one_by_one = Unbiased(2, seed=9)
    apart = [one_by_one.run(model, d.unsqueeze(0), loss_scale=1.0 / total) for d in docs]
    summed = [sum(gs) for gs in zip(*(r.grads for r in apart))]
    assert rel_err(stacked.grads, summed) <= 1e-5
    # and the rows did draw different windows (otherwise this would not test anything)
    same_seed = Unbiased(2, seed=9)
    evictions = [same_seed._window().plan(6)[1] for _ in range(4)]
    assert len({tuple(e) for e in evictions}) > 1


def test_equal_length_documents_are_stacked(model):
    from uio_ds.algo import as_batches, count_targets

    docs = [random_ids(1, 40, seed=6)[0], random_ids(1, 75, seed=7)[0], random_ids(1, 40, seed=8)[0]]
    batches = as_batches(docs)
    assert [tuple(ids.shape) for ids, _ in batches] == [(2, 40), (1, 75)]
    assert batches[0][0][1].equal(docs[2]) and count_targets(docs) == 39 + 74 + 39
    stacked = Incremental(2).run(model, docs)
    apart = [Incremental(2).run(model, d.unsqueeze(0), loss_scale=1.0 / (39 + 74 + 39)) for d in docs]
    summed = [a + b + c for a, b, c in zip(*(r.grads for r in apart))]
    assert rel_err(stacked.grads, summed) <= 1e-5


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: TBPTT(0), "S=0"),
        (lambda: Incremental(-1), "S=-1"),
        (lambda: Unbiased(None), "reservoir size"),
        (lambda: Incremental(2, graph_mode="disk"), "graph_mode"),
        (lambda: build_strategy("rtrl"), "unknown strategy"),
        (lambda: build_strategy("tbptt"), "needs a window"),
    ],
)
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_documents(model):
    with pytest.raises(ValueError, match="at least 2"):
        Incremental(2).run(model, torch.tensor([[5]]))
    with pytest.raises(ValueError, match="non-empty list"):
        Incremental(2).run(model, [])
    with pytest.raises(ValueError, match="not a tensor of token ids"):
        Incremental(2).run(model, [torch.rand(10)])


def test_recompute_refuses_dropout(tiny_dirs):
    from uio_ds.config import LoRAConfig

    m = load(tiny_dirs["llama"], encoder_lora=LoRAConfig(rank=4, alpha=8.0, dropout=0.1))
    with pytest.raises(ValueError, match="dropout"):
        Incremental(2, graph_mode="recompute").run(m, random_ids(1, 40))


def test_reservoir_keeps_each_past_memory_with_probability_s_over_n():
    """Chi-square test of the window at step n: each of n memories is in it w.p. S/n."""
    S, n, trials = 3, 12, 4000
    rng = random.Random(0)
    counts = [0] * n
    for _ in range(trials):
        enters, evict, _ = _Reservoir(S, True, rng).plan(n)
        for s in range(n):
            if enters[s] and evict[s] is None:  # still in the window after all n arrivals
                counts[s] += 1
    expected = trials * S / n
    chi2 = sum((c - expected) ** 2 / expected for c in counts)
    # 11 degrees of freedom: the 0.999 quantile is 31.3
    assert chi2 < 31.3, (counts, chi2)
    assert sum(counts) == trials * S


def test_reservoir_state_round_trips():
    a = Unbiased(2, seed=5)
    a._window().plan(10)
    state = a.state_dict()
    b = Unbiased(2, seed=99)
    b.load_state_dict(state)
    assert a._window().plan(20) == b._window().plan(20)


def test_unbiased_is_unbiased_and_the_factor_matters(model):
    """Over many seeds the mean of unbiased(S) converges to the full gradient; without the
    compensation factor it is measurably short of it. Tolerances come from the sample variance."""
    doc = random_ids(1, 16 * 7, seed=8)  # T=7 segments, 6 memories
    full = flat(Full().run(model, doc).grads)
    enc_mask = torch.cat([
        torch.full((p.numel(),), ".transfer." not in n, dtype=torch.bool)
        for n, p in model.named_trainable_parameters()
    ])  # the encoder-side parameters (LoRA + <mem>) are where the estimator acts
    direction = full[enc_mask] / full[enc_mask].norm()

    def projections(compensate: bool, seeds: range) -> torch.Tensor:
        return torch.tensor([
            (flat(Unbiased(2, seed=s, compensate=compensate).run(model, doc).grads)[enc_mask] @ direction).item()
            for s in seeds
        ])

    target = (full[enc_mask] @ direction).item()
    with_factor, without = projections(True, range(60)), projections(False, range(60))
    n = len(with_factor)
    se = with_factor.std().item() / math.sqrt(n)
    assert abs(with_factor.mean().item() - target) < 4 * se + 1e-6 * abs(target)
    se_wo = without.std().item() / math.sqrt(n)
    assert target - without.mean().item() > 4 * se_wo
    assert without.mean().item() < 0.97 * target


def test_strategies_train_the_optional_decoder_lora(tiny_dirs):
    """With decoder_lora set, every strategy returns its gradients too; unbiased(S >= T-1) == full."""
    from uio_ds.config import LoRAConfig

    model = load(tiny_dirs["llama"], decoder_lora=LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj")))
    model = model.double()
    perturb_trainable(model)
    doc = random_ids(1, 80, seed=1)
    names = [n for n, _ in model.named_trainable_parameters()]
    assert any(".decoder." in n for n in names)
    full = build_strategy("full").run(model, doc).grads
    unbiased = build_strategy("unbiased", 8).run(model, doc).grads
    for name, a, b in zip(names, full, unbiased):
        assert a is not None and a.abs().sum() > 0, name
        # float64: the two strategies sum the same contributions in another order (eps 2.2e-16)
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-9)
