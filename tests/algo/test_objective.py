"""Distillation from the base reading everything: its teacher, a loss that vanishes where memory is
the context itself, and every strategy's gradient against a plain PyTorch reference."""

import pytest
import torch
import torch.nn.functional as F
from helpers import assert_same_function, load, perturb_trainable, random_ids
from transformers import AutoModelForCausalLM

from uio_ds.algo import TBPTT, Full, Incremental, Objective, Unbiased
from uio_ds.formats import IGNORE_INDEX
from uio_ds.model.kv import capture_kv
from uio_ds.model.positions import segment_targets, split_segments
from uio_ds.model.teacher import FullAttentionTeacher


def plain_base(path):
    return AutoModelForCausalLM.from_pretrained(path, attn_implementation="sdpa").eval()


def test_teacher_is_the_base_reading_everything(tiny_dirs):
    model = load(tiny_dirs["llama"])
    perturb_trainable(model)  # trained adapters must stay off in the teacher
    base = plain_base(tiny_dirs["llama"])
    ids = random_ids(2, 40, seed=1)
    teacher = FullAttentionTeacher(model)
    got = torch.cat([teacher.next_segment(ids[:, a:b]) for a, b in split_segments(40, 16)], dim=1)
    with torch.no_grad():
        want = F.log_softmax(base(ids).logits, dim=-1)
    assert_same_function(got, want, base.config)
    # past the position range (4,096 on the tiny models) there is no teacher
    teacher.read = model.max_positions - 8
    assert teacher.next_segment(ids[:, :16]) is None


@pytest.mark.parametrize("arch", ["llama", "mistral", "qwen2"])
def test_distillation_is_zero_where_memory_is_the_context(tiny_dirs, arch):
    """Memory K/V that are the base's own K/V of the prefix make the decoder the teacher itself."""
    model, base = load(tiny_dirs[arch]), plain_base(tiny_dirs[arch])
    prefix, segment = random_ids(2, 24, seed=2), random_ids(2, 16, seed=3)
    text = torch.cat([prefix, segment], dim=1)
    with torch.no_grad(), capture_kv(base) as found:
        base(prefix)
    teacher = FullAttentionTeacher(model)
    teacher.next_segment(prefix)
    taught = teacher.next_segment(segment)
    targets = segment_targets(text, 24, 40)
    with torch.no_grad():
        exact = model.decode(segment, found[0], targets, taught, lm_weight=0.0)
        blind = model.decode(segment, None, targets, taught, lm_weight=0.0)
    assert exact.num_tokens == 2 * 15 and torch.equal(exact.loss_sum, exact.distill_sum)  # the last has no next
    # equal distributions up to fp32 rounding of two summation orders: KL of order 1e-7 per token
    assert exact.distill_sum.abs() < 1e-4, exact.distill_sum
    assert blind.distill_sum > 1.0  # without the prefix the decoder is far from the teacher


def reference_gradient(model, doc, labels, objective: Objective):
    """Plain autograd over the whole document: the teacher is the base over all of it in one pass,
    the student reads the memories of every earlier segment; torch's own kl_div."""
    params = model.trainable_parameters()
    bounds = split_segments(doc.shape[1], model.segment_length)
    with torch.no_grad(), model.adapter(None):
        teacher = F.log_softmax(model.base(doc).logits.float(), dim=-1)
    memory = model.compress(doc[:, : bounds[-1][0]], batch_size=None)
    total = 0.0
    for t, (a, b) in enumerate(bounds):
        kv = memory.token_slice(0, t * model.num_mem_tokens) if t else None
        logits = model.decode(doc[:, a:b], kv).logits.float()
        targets = segment_targets(labels, a, b)
        scored = targets != IGNORE_INDEX
        ce = F.cross_entropy(logits[scored], targets[scored], reduction="sum")
        kl = F.kl_div(F.log_softmax(logits, dim=-1)[scored], teacher[:, a:b][scored], log_target=True, reduction="sum")
        total = total + objective.lm * ce + objective.distill * kl
    return total, torch.autograd.grad(total, params, allow_unused=True)


@pytest.mark.parametrize("objective", [Objective(lm=0.0, distill=1.0), Objective(lm=0.5, distill=2.0)],
                         ids=["distill", "mixed"])
def test_every_strategy_matches_the_reference_gradient(tiny_dirs, objective):
    model = load(tiny_dirs["mistral"])  # GQA; l=16, m=4
    perturb_trainable(model, seed=3, scale=0.2)
    doc = random_ids(2, 16 * 4 + 5, seed=4)  # 5 segments, the last one short
    labels = doc.clone()
    labels[:, :20] = IGNORE_INDEX  # a prompt: the first segment is read, not scored (the teacher must read it)
    loss, want = reference_gradient(model, doc, labels, objective)
    tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    documents = [{"input_ids": doc[i], "labels": labels[i]} for i in range(2)]
    for strategy in (Full(objective=objective), TBPTT(5, objective=objective),
                     Incremental(None, objective=objective), Unbiased(5, objective=objective)):
        got = strategy.run(model, documents)
        assert got.loss_sum == pytest.approx(loss.item(), rel=1e-5), strategy
        for g, w in zip(got.grads, want):
            assert (g is None) == (w is None), strategy
            if w is not None:  # the token-weighted mean: the strategies scale by 1 / scored tokens
                assert_same_function(g * tokens, w, model.base.config)
        if not isinstance(strategy, Full):
            assert got.stats["distill_sum"] > 0
            weighted = objective.lm * got.stats["lm_loss_sum"] + objective.distill * got.stats["distill_sum"]
            assert weighted == pytest.approx(got.loss_sum, rel=1e-5)


def test_distillation_changes_the_gradient_and_objectives_are_checked(tiny_dirs):
    model = load(tiny_dirs["mistral"])
    perturb_trainable(model, seed=3, scale=0.2)
    doc = random_ids(1, 48, seed=5)
    lm = Incremental(None).run(model, doc).grads
    distill = Incremental(None, objective=Objective(lm=0.0, distill=1.0)).run(model, doc).grads
    assert max((a - b).abs().max().item() for a, b in zip(lm, distill) if a is not None) > 1e-3
    with pytest.raises(ValueError, match="both 0"):
        Objective(lm=0.0, distill=0.0)
    with pytest.raises(ValueError, match=r"objective.distill=-1"):
        Objective(distill=-1)


def test_documents_of_sources_with_their_own_objective_run_with_it(tiny_dirs):
    """A step mixing sources: each group with its own objective, the sum equal to the groups run apart."""
    from uio_ds.algo.objective import group_by_objective

    model = load(tiny_dirs["mistral"])
    perturb_trainable(model, seed=3, scale=0.2)
    books, facts = random_ids(1, 48, seed=6)[0], random_ids(1, 40, seed=7)[0]
    answer = facts.clone()
    answer[:30] = IGNORE_INDEX
    documents = [books, {"input_ids": facts, "labels": answer, "objective": {"lm": 1.0, "distill": 0.0}}]
    default = Objective(lm=0.0, distill=1.0)
    groups = group_by_objective(documents, default)
    assert [g[0] for g in groups] == [default, Objective()] and [len(g[1]) for g in groups] == [1, 1]
    strategy = Incremental(None, objective=default)
    total = 47 + 9
    parts = []
    for objective, docs in groups:
        with strategy.using(objective):
            parts.append(strategy.run(model, docs, loss_scale=1.0 / total))
    assert strategy.objective is default
    merged = parts[0].merge(parts[1])
    lm_only = Incremental(None).run(model, [documents[1]], loss_scale=1.0 / total)
    distilled = Incremental(None, objective=default).run(model, [books], loss_scale=1.0 / total)
    assert merged.stats["distill_sum"] == pytest.approx(distilled.stats["distill_sum"])
    assert merged.stats["lm_loss_sum"] == pytest.approx(distilled.stats["lm_loss_sum"] + lm_only.loss_sum)
    assert lm_only.stats["distill_sum"] == 0.0  # the keys are there whatever the objective
    for g, a, b in zip(merged.grads, lm_only.grads, distilled.grads):
        if g is not None:
            assert_same_function(g, a + b, model.base.config)


def test_a_regularised_decoder_lora_is_pulled_toward_the_base(tiny_dirs):
    """objective.regularize: KL(base || decoder LoRA) on each segment read without memory; zero while
    the LoRA is (B = 0), and every strategy's gradient equals a plain autograd reference."""
    from uio_ds.config import LoRAConfig

    model = load(tiny_dirs["llama"], decoder_lora=LoRAConfig(rank=4, alpha=8.0, target_modules=("q_proj", "v_proj")))
    doc = random_ids(1, 16 * 3 + 4, seed=8)
    objective = Objective(regularize=2.0)
    with torch.no_grad():
        fresh = model.decode(doc[:, :16], None, segment_targets(doc, 0, 16), regularize_weight=1.0)
    assert fresh.regularize_sum == 0  # a LoRA with B = 0 is the base
    perturb_trainable(model, seed=9, scale=0.2)
    params = model.trainable_parameters()
    bounds = split_segments(doc.shape[1], model.segment_length)
    memory = model.compress(doc[:, : bounds[-1][0]], batch_size=None)
    total = 0.0
    for t, (a, b) in enumerate(bounds):
        kv = memory.token_slice(0, t * model.num_mem_tokens) if t else None
        targets = segment_targets(doc, a, b)
        scored = targets != IGNORE_INDEX
        with torch.no_grad(), model.adapter(None):
            base = F.log_softmax(model.base(doc[:, a:b]).logits.float(), dim=-1)
        alone = F.log_softmax(model.decode(doc[:, a:b]).logits.float(), dim=-1)
        ce = F.cross_entropy(model.decode(doc[:, a:b], kv).logits.float()[scored], targets[scored], reduction="sum")
        total = total + ce + 2.0 * F.kl_div(alone[scored], base[scored], log_target=True, reduction="sum")
    want = torch.autograd.grad(total, params, allow_unused=True)
    tokens = doc.shape[1] - 1
    for strategy in (Full(objective=objective), Incremental(None, objective=objective), Unbiased(3, objective=objective)):
        got = strategy.run(model, doc)
        assert got.loss_sum == pytest.approx(total.item(), rel=1e-5), strategy
        for g, w in zip(got.grads, want):
            assert (g is None) == (w is None)
            if w is not None:
                assert_same_function(g * tokens, w, model.base.config)


def test_regularising_needs_a_decoder_lora():
    from uio_ds.config import ConfigError, TrainConfig

    with pytest.raises(ConfigError, match="objective.regularize=1.0 keeps a decoder LoRA close to the base"):
        TrainConfig.from_dict({"model_path": "m", "data": {"sources": [{"path": "d.jsonl"}]},
                               "objective": {"regularize": 1.0}})
