"""Lockstep (ZeRO-3's equal work per rank), with two ranks played by two threads in one process.

What ZeRO-3 needs is that every rank runs the same modules in the same order, forward and
backward (each run gathers that module's weights from all ranks); what training needs is that
padding changes no rank's gradient. Both are checked here without DeepSpeed: each thread's
module passes are recorded by hooks, and the gradients are compared with a run alone.
"""

import threading

import pytest
import torch
from helpers import load, perturb_trainable, random_ids

from uio_ds.algo import build_strategy
from uio_ds.algo.lockstep import DONE, Lockstep


class TwoRanks:
    """``agree`` for two threads: both post a kind, both read the minimum."""

    def __init__(self):
        self.barrier = threading.Barrier(2)
        self.posted = [None, None]

    def agree_for(self, rank: int):
        def agree(kind: int) -> int:
            self.posted[rank] = kind
            self.barrier.wait()
            chosen = min(self.posted)
            self.barrier.wait()  # nobody posts again before both have read
            return chosen

        return agree


def record_passes(model) -> list:
    """Every forward and backward pass of the base's modules, in order, by module name."""
    log = []
    for name, module in model.base.named_modules():
        if not list(module.parameters(recurse=False)):
            continue
        module.register_forward_pre_hook(lambda m, a, name=name: log.append(("fwd", name)))
        module.register_full_backward_pre_hook(lambda m, g, name=name: log.append(("bwd", name)))
    return log


def rank_documents(rank: int) -> list[torch.Tensor]:
    """Rank 0: one document of 4 segments; rank 1: two of 2 and 6 segments (l = 16)."""
    if rank == 0:
        return [random_ids(1, 60, seed=1)[0]]
    return [random_ids(1, 25, seed=2)[0], random_ids(1, 90, seed=3)[0]]


@pytest.mark.parametrize("algorithm, window, overrides", [
    ("incremental", 2, {}),
    ("unbiased", 2, {}),
    ("incremental", None, {"memory_window": 2}),  # fewer memories read than kept
])
def test_two_ranks_run_the_same_passes_and_keep_their_gradients(tiny_dirs, algorithm, window, overrides):
    models = []
    for _ in range(2):
        m = load(tiny_dirs["llama"], **overrides)
        perturb_trainable(m, scale=0.1)
        models.append(m)
    logs = [record_passes(m) for m in models]
    arbiter, results, errors = TwoRanks(), [None, None], []

    def run(rank: int) -> None:
        try:
            strategy = build_strategy(algorithm, window, graph_mode="recompute")
            lockstep = Lockstep(arbiter.agree_for(rank))
            results[rank] = strategy.run(models[rank], rank_documents(rank), lockstep=lockstep)
        except BaseException as err:  # a failure in one thread must not leave the other waiting
            errors.append(err)
            arbiter.barrier.abort()

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    assert logs[0] == logs[1]  # the same modules, forward and backward, in the same order
    assert ("bwd", "model.layers.0.self_attn.k_proj.base_layer") in logs[0]
    padding = [r.stats["padding_passes"] for r in results]
    assert padding[0] > padding[1] >= 0  # rank 0 has fewer segments: it waits with padding passes
    for rank in range(2):
        alone = build_strategy(algorithm, window).run(models[rank], rank_documents(rank))
        assert results[rank].loss_sum == pytest.approx(alone.loss_sum, rel=1e-6)
        for got, want in zip(results[rank].grads, alone.grads):
            # the same kernels on the same segment shapes in both runs (the padding passes add zero
            # gradient): only the order of the per-segment sums differs, a few fp32 ulps
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_a_rank_alone_pads_nothing(tiny_dirs):
    model = load(tiny_dirs["llama"])
    lockstep = Lockstep(lambda kind: kind)
    out = build_strategy("incremental", 2, graph_mode="recompute").run(model, rank_documents(1), lockstep=lockstep)
    assert out.stats["padding_passes"] == 0 and lockstep.agree(DONE) == DONE


@pytest.mark.parametrize("algorithm, options, words", [
    ("incremental", {"graph_mode": "keep"}, "graph_mode 'recompute'"),
    ("tbptt", {}, "cannot keep ranks in lockstep"),
    ("full", {}, "cannot keep ranks in lockstep"),
])
def test_strategies_that_cannot_pad_are_refused(tiny_dirs, algorithm, options, words):
    model = load(tiny_dirs["llama"])
    strategy = build_strategy(algorithm, None if algorithm == "full" else 2, **options)
    with pytest.raises(ValueError, match=words):
        strategy.run(model, rank_documents(0), lockstep=Lockstep(lambda kind: kind))
