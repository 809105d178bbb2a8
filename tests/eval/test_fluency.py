"""The fluency task: continuations judged by the frozen base reading everything."""

import json
import math

import pytest
from helpers import random_ids

from uio_ds.eval.fluency import distinct_ngrams, evaluate_fluency, judge_losses
from uio_ds.eval.methods import Method, build_methods


class Repeater(Method):
    """A broken writer: the same token over and over."""

    name = "repeater"

    def greedy(self, ids, max_new_tokens):
        return [7] * max_new_tokens


def test_distinct_ngrams():
    assert distinct_ngrams([1, 2, 3, 1, 2, 3]) == 3 / 4
    assert distinct_ngrams([4] * 10) == 1 / 8
    assert distinct_ngrams([1, 2]) is None


def test_judge_scores_a_continuation_as_full_attention_scores_the_document(model):
    full = build_methods(model, ["full"])[0]
    doc = random_ids(1, 50, seed=4)
    # the judge's loss of tokens 40..49 after 0..39 is full attention's loss of those tokens
    assert judge_losses(model.base, doc[:, :40], doc[0, 40:].tolist()) == pytest.approx(
        full.token_losses(doc)[39:], rel=1e-5, abs=1e-6)
    # a prompt longer than the base's positions is cut from the left
    positions = model.base.config.max_position_embeddings
    long = random_ids(1, positions + 20, seed=5)
    assert judge_losses(model.base, long[:, :-6], long[0, -6:].tolist()) == pytest.approx(
        full.token_losses(long[:, -positions:])[-6:], rel=1e-5, abs=1e-6)
    assert judge_losses(model.base, doc, []) == []


def test_fluency_ranks_the_base_above_a_broken_writer(model, tokenizer):
    methods = build_methods(model, ["uio", "no_memory", "full"]) + [Repeater()]
    docs = [random_ids(1, 60, seed=s)[0] for s in (1, 2, 3)] + [random_ids(1, 20, seed=9)[0]]
    with model.adapter(None):
        report = evaluate_fluency(methods, model.base, tokenizer, docs, prompt_tokens=40, new_tokens=12)
    assert report["documents"] == 3  # the 20-token document is too short and left out
    full, broken = report["methods"]["full"], report["methods"]["repeater"]
    assert full["ratio_to_full"] == pytest.approx(1.0)
    assert full["tokens"] == 36 and len(full["samples"]) == 2
    # full's continuation is the judge's own greedy choice, token by token; a loop of one token is far less likely
    assert broken["judge_perplexity"] > full["judge_perplexity"] and broken["ratio_to_full"] > 1
    assert broken["distinct_3"] == pytest.approx(1 / 10) and full["distinct_3"] > broken["distinct_3"]
    # the reference is the documents' own next tokens under the judge
    losses = [judge_losses(model.base, d[:40].unsqueeze(0), d[40:52].tolist()) for d in docs[:3]]
    flat = [v for l in losses for v in l]
    assert report["reference"]["judge_perplexity"] == pytest.approx(math.exp(sum(flat) / len(flat)), rel=1e-6)
    with pytest.raises(ValueError, match="no document holds 100 \\+ 12 tokens"):
        evaluate_fluency(methods, model.base, tokenizer, docs, prompt_tokens=100, new_tokens=12)


def test_eval_command_runs_fluency_and_refuses_bad_lengths(tiny_dirs, tmp_path, capsys):
    from uio_ds.eval.run import main
    from uio_ds.formats import synthetic_text

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": synthetic_text(60, seed=i)}) for i in range(2)) + "\n")
    args = ["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8", "--data", str(docs),
            "--tasks", "fluency", "--methods", "uio", "full", "--out", str(tmp_path), "--name", "fl"]
    assert main(args + ["--fluency-prompt", "80", "--fluency-tokens", "8"]) == 0
    written = json.loads((tmp_path / "fl.json").read_text())
    assert written["kv_entries"]["full"] == {"88": 88}  # the prompt and its continuation, not --lengths
    report = written["fluency"]
    assert set(report["methods"]) == {"uio", "full"} and report["methods"]["uio"]["tokens"] == 8 * report["documents"]
    assert "fluency (" in capsys.readouterr().out
    assert main(args + ["--fluency-tokens", "0"]) == 2
    assert "error: --fluency-prompt 2000 / --fluency-tokens 0" in capsys.readouterr().err
