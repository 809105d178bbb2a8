"""Evaluation harness on the tiny models: documents independent, methods consistent, files checked."""

import gzip
import json
import re

import pytest
import torch
from helpers import load, perturb_trainable, random_ids

from uio_ds.eval.autoencode import correct_prefix, evaluate_autoencoding, reconstruct
from uio_ds.eval.longbench import evaluate_longbench, load_records
from uio_ds.eval.methods import StreamingMethod, build_methods
from uio_ds.eval.passkey import evaluate_passkey
from uio_ds.eval.perplexity import evaluate_perplexity
from uio_ds.formats import passkey_prompt


def test_perplexity_scores_every_token_once_and_resets_between_documents(model):
    names = ["uio", "no_memory", "streaming", "full", "homer"]
    methods = build_methods(model, names)
    a, b = random_ids(1, 70, seed=1)[0], random_ids(1, 50, seed=2)[0]
    both = evaluate_perplexity(methods, [a, b], lengths=[32, 64], segment_length=16, names=["a", "b"])
    alone = evaluate_perplexity(methods, [b], lengths=[32], segment_length=16, names=["b"])
    for name in names:
        assert both[name]["tokens"] == 69 + 49
        # document b scores the same whether or not document a was read before it: nothing leaks
        assert both[name]["documents"]["b"] == pytest.approx(alone[name]["documents"]["b"], rel=1e-6)
        assert both[name]["by_length"][64]["documents"] == 1
    # the first segment has no memory: UIO and no-memory agree there exactly, and differ after
    assert both["uio"]["by_segment"][0] == pytest.approx(both["no_memory"]["by_segment"][0], rel=1e-6)
    assert both["homer"]["by_segment"][0] == pytest.approx(both["no_memory"]["by_segment"][0], rel=1e-5)
    assert both["uio"]["by_segment"][2] != pytest.approx(both["no_memory"]["by_segment"][2], rel=1e-3)


def test_later_segment_perplexity_leaves_out_the_first_segment(model):
    import math

    from uio_ds.eval.methods import UIOMethod

    method = UIOMethod(model)
    a, b = random_ids(1, 70, seed=1)[0], random_ids(1, 40, seed=2)[0]
    out = evaluate_perplexity([method], [a, b], lengths=[32, 64], segment_length=16)["uio"]
    la, lb = method.token_losses(a.unsqueeze(0)), method.token_losses(b.unsqueeze(0))
    # losses 0..14 score tokens 1..15 (segment 1); the rest score segments 2..T
    later = la[15:] + lb[15:]
    assert out["later_perplexity"] == pytest.approx(math.exp(sum(later) / len(later)), rel=1e-6)
    at32 = la[15:31] + lb[15:31]
    assert out["by_length"][32]["later_perplexity"] == pytest.approx(math.exp(sum(at32) / 32), rel=1e-6)
    assert out["by_length"][64]["later_perplexity"] == pytest.approx(math.exp(sum(la[15:63]) / 48), rel=1e-6)


def test_uio_losses_match_the_training_forward(model):
    from uio_ds.eval.methods import UIOMethod

    doc = random_ids(1, 53, seed=3)
    losses = UIOMethod(model).token_losses(doc)
    with torch.no_grad():
        out = model(doc)
    assert len(losses) == out.num_tokens == 52
    assert sum(losses) == pytest.approx(out.loss_sum.item(), rel=1e-5)


def test_passkey_prompt_places_the_key(tokenizer):
    haystack = torch.tensor(tokenizer("Ada found the lantern. " * 200)["input_ids"])
    prompt = passkey_prompt(tokenizer, haystack, 300, 0.5, "12345")
    assert prompt.shape == (1, 300)
    text = tokenizer.decode(prompt[0])
    assert text.count("12345") == 2 and text.endswith("The pass key is")
    assert abs(text.index("12345") / len(text) - 0.5) < 0.1
    with pytest.raises(ValueError, match="haystack"):
        passkey_prompt(tokenizer, haystack[:50], 300, 0.5, "1")


def test_passkey_grid_shape_and_full_attention_range(model, tokenizer):
    haystack = torch.tensor(tokenizer("Ada found the lantern. " * 500)["input_ids"])
    methods = build_methods(model, ["uio", "full"])
    methods[1].max_tokens = 200  # pretend a short window: longer prompts are not scored
    out = evaluate_passkey(methods, tokenizer, haystack, [128, 256], [0.2, 0.8], trials=2, answer_tokens=6)
    assert out["methods"]["full"]["accuracy"][1] == [None, None]
    assert out["methods"]["full"]["answer_loss"][1] == [None, None]
    assert all(0 <= v <= 1 for row in out["methods"]["uio"]["accuracy"] for v in row)
    assert all(v > 0 for row in out["methods"]["uio"]["answer_loss"] for v in row)


def test_passkey_answer_loss_is_the_true_answers_loss(model, tokenizer):
    import random

    import torch.nn.functional as F

    haystack = torch.tensor(tokenizer("Ada found the lantern. " * 100)["input_ids"])
    out = evaluate_passkey(build_methods(model, ["full"]), tokenizer, haystack, [160], [0.2], trials=1, seed=7)
    rng = random.Random(7)
    key = "".join(rng.choice("0123456789") for _ in range(5))
    answer = tokenizer(f" {key}", add_special_tokens=False, return_tensors="pt")["input_ids"]
    ids = torch.cat([passkey_prompt(tokenizer, haystack, 160, 0.2, key), answer], dim=1)
    with torch.no_grad():
        logits = model.base(input_ids=ids).logits[0, -answer.shape[1] - 1 : -1]
    want = F.cross_entropy(logits.float(), answer[0]).item()
    assert out["methods"]["full"]["mean_answer_loss"] == pytest.approx(want, rel=1e-5)


def test_autoencoding_reconstructs_from_memory_alone(model, tokenizer):
    segments = random_ids(3, 16, seed=4)
    rebuilt = reconstruct(model, segments)
    assert rebuilt.shape == (3, 15)
    # the memory matters: other memories give other reconstructions
    other = reconstruct(model, torch.cat([segments[:, :1], random_ids(3, 15, seed=5)], dim=1))
    assert not torch.equal(rebuilt, other)
    report = evaluate_autoencoding(model, tokenizer, segments)
    assert 0 <= report["bleu4"] <= 1 and 0 <= report["rouge_l"] <= 1
    assert report["segments"] == 3 and report["memory_tokens"] == model.num_mem_tokens
    # the baseline reads no memory: its reconstructions and loss are the plain decoder's
    assert not torch.equal(reconstruct(model, segments, with_memory=False), rebuilt)
    targets = torch.cat([segments[:, 1:], torch.full_like(segments[:, :1], -100)], dim=1)
    with torch.no_grad():
        plain = model.decode(segments, None, targets).loss.item()
    assert report["no_memory"]["loss"] == pytest.approx(plain, rel=1e-5)
    assert report["loss"] != pytest.approx(plain, rel=1e-3)
    with torch.no_grad():
        first_choice = model.decode(segments, None).logits[:, :-1].argmax(-1)
    assert report["no_memory"]["token_accuracy"] == pytest.approx((first_choice == segments[:, 1:]).float().mean().item())
    # greedy's first token is teacher forcing's first choice: the same test decides both
    greedy = reconstruct(model, segments, with_memory=False)
    assert torch.equal(greedy[:, 0], first_choice[:, 0])
    assert report["no_memory"]["correct_prefix"] == correct_prefix(greedy, segments)


def test_autoencoding_after_more_of_the_start_scores_only_the_rest(model, tokenizer):
    """given=k: the decoder reads the memory and the segment's first k tokens and rebuilds the
    other l-k; the loss, first choices and references are those of tokens k..l-1."""
    segments = random_ids(3, 16, seed=6)
    rebuilt = reconstruct(model, segments, given=4)
    assert rebuilt.shape == (3, 12)
    with torch.no_grad():
        memory = model.memory_kv(model.encode(segments)).per_text(3)
        targets = torch.cat([segments[:, 1:], torch.full_like(segments[:, :1], -100)], dim=1)
        targets[:, :3] = -100
        out = model.decode(segments, memory, targets)
    first_choice = out.logits[:, 3:-1].argmax(-1)
    assert torch.equal(rebuilt[:, 0], first_choice[:, 0])  # the first rebuilt token follows the 4 given
    report = evaluate_autoencoding(model, tokenizer, segments, given=4)
    assert report["given"] == 4 and report["loss"] == pytest.approx(out.loss.item(), rel=1e-5)
    assert report["token_accuracy"] == pytest.approx((first_choice == segments[:, 4:]).float().mean().item())
    start = (first_choice == segments[:, 4:]).float().mean(0)[:8]  # the first 8 rebuilt tokens, one by one
    assert report["token_accuracy_start"] == pytest.approx(start.tolist(), abs=1e-4)
    assert report["correct_prefix"] == correct_prefix(rebuilt, segments) <= 12
    assert report["example"]["reference"] == tokenizer.decode(segments[0, 4:], skip_special_tokens=True)
    with pytest.raises(ValueError, match="given=16"):
        evaluate_autoencoding(model, tokenizer, segments, given=16)


def test_correct_prefix_counts_tokens_before_the_first_error():
    segments = torch.tensor([[9, 1, 2, 3, 4], [9, 1, 2, 3, 4], [9, 1, 2, 3, 4]])
    rebuilt = torch.tensor([[1, 2, 3, 4], [1, 7, 3, 4], [5, 2, 3, 4]])  # all right; 1 right; none right
    assert correct_prefix(rebuilt, segments) == pytest.approx((4 + 1 + 0) / 3)


def test_longbench_records_are_checked_with_file_and_line(tmp_path, model, tokenizer):
    good = {"context": "Ada lives in the harbour. " * 10, "input": "Where does Ada live?", "answers": ["harbour"],
            "dataset": "hotpotqa"}
    path = tmp_path / "lb.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "dataset": "samsum"}) + "\n")
    records = load_records(str(path))
    report = evaluate_longbench(build_methods(model, ["uio"]), tokenizer, records, max_new_tokens=4)
    assert set(report["uio"]["tasks"]) == {"hotpotqa", "samsum"}
    assert all(0 <= v <= 100 for v in report["uio"]["tasks"].values())
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "answers": "harbour"}) + "\n")
    with pytest.raises(ValueError, match=f"{bad}:2: field 'answers' must be a list"):
        load_records(str(bad))
    broken = tmp_path / "broken.jsonl"
    broken.write_text("{oops\n")
    with pytest.raises(ValueError, match=f"{broken}:1: not valid JSON"):
        load_records(str(broken))
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_records(str(tmp_path / "nope.jsonl"))


def test_eval_command_writes_json_and_plots(tiny_dirs, tmp_path):
    from uio_ds.eval.run import main
    from uio_ds.formats import synthetic_text

    docs = tmp_path / "docs.jsonl"
    docs.write_text("\n".join(json.dumps({"text": synthetic_text(60, seed=i)}) for i in range(3)) + "\n")
    code = main(["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8",
                 "--data", str(docs), "--tasks", "perplexity", "passkey", "autoencode",
                 "--lengths", "64", "256", "--passkey-lengths", "160", "--passkey-depths", "0.5",
                 "--passkey-trials", "1", "--ae-segments", "2", "--out", str(tmp_path), "--name", "t"])
    assert code == 0
    report = json.loads((tmp_path / "t.json").read_text())
    assert set(report["perplexity"]) == {"uio", "no_memory", "streaming", "full"}
    assert (tmp_path / "t_perplexity.png").exists() and (tmp_path / "t_passkey.png").exists()
    # what each method reads at the lengths the tasks read (perplexity's and the pass key's), stated:
    # l = 32, 4 memory slots per segment, StreamingLLM's default window
    kv = report["kv_entries"]
    assert kv["uio"] == {"64": 36, "160": 4 * 4 + 32, "256": 7 * 4 + 32}
    assert kv["no_memory"] == {"64": 32, "160": 32, "256": 32}
    assert kv["full"] == {"64": 64, "160": 160, "256": 256} and kv["streaming"]["256"] == 32 + 7
    # with a raw window of one segment, uio reads that segment raw and memories only before it
    code = main(["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8",
                 "--recent-tokens", "32", "--data", str(docs), "--tasks", "perplexity", "--methods", "uio",
                 "--lengths", "256", "--out", str(tmp_path), "--name", "r"])
    assert code == 0
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["config"]["recent_tokens"] == 32 and report["kv_entries"]["uio"] == {"256": 6 * 4 + 32 + 32}


def test_last_losses_equal_the_tail_of_all_losses(model):
    """The passkey answer loss decodes only the last segments; it must equal the full scoring."""
    for name in ("uio", "no_memory", "full"):
        method = build_methods(model, [name])[0]
        for length, n in ((53, 5), (48, 3), (50, 20), (17, 16)):
            doc = random_ids(1, length, seed=length)
            assert method.last_losses(doc, n) == pytest.approx(method.token_losses(doc)[-n:], rel=1e-5, abs=1e-6)


def test_streaming_window_sets_the_kv_entries_streamingllm_reads(model, tiny_dirs, tmp_path, capsys):
    ids = random_ids(1, 60, seed=3)
    full = build_methods(model, ["full"])[0].token_losses(ids)
    default = build_methods(model, ["streaming"])[0]
    assert default.streaming.sink_tokens + default.streaming.window_tokens == model.segment_length
    wide = build_methods(model, ["streaming"], streaming_window=64)[0]
    assert wide.streaming.sink_tokens + wide.streaming.window_tokens == 64
    # 60 tokens fit in a 64-entry window: StreamingLLM is full attention there, and not in l = 16 entries
    assert wide.token_losses(ids) == pytest.approx(full, rel=1e-5, abs=1e-5)
    assert default.token_losses(ids) != pytest.approx(full, rel=1e-3)
    with pytest.raises(ValueError, match="must exceed the 4 attention sinks"):
        build_methods(model, ["streaming"], streaming_window=4)
    from uio_ds.eval.run import main

    assert main(["--model", tiny_dirs["llama"], "--methods", "streaming", "--streaming-window", "3"]) == 2
    assert "error: --streaming-window 3" in capsys.readouterr().err
    # a memory window of 0 without a raw window is refused with the config's message, not read as "no window"
    assert main(["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8", "--memory-window", "0"]) == 2
    assert "memory_window=0 reads no memory and there is no raw window" in capsys.readouterr().err


def test_facts_task_reports_held_out_wording_apart(tiny_dirs, tmp_path, capsys):
    from transformers import AutoTokenizer

    from uio_ds.data.generators.facts import write_fact_jsonl
    from uio_ds.eval.run import main

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    path = tmp_path / "facts.jsonl"
    write_fact_jsonl(str(path), 8, tokenizer, [240], ["story"], templates="all", facts=(1, 2), log=lambda _: None)
    code = main(["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8",
                 "--tasks", "facts", "--facts", str(path), "--methods", "uio", "full", "--out", str(tmp_path),
                 "--name", "f"])
    assert code == 0
    report = json.loads((tmp_path / "f.json").read_text())["facts"]
    cells = report["methods"]["uio"]["cells"]
    assert cells["all"]["n"] == 8 and 0 <= cells["all"]["accuracy"] <= 1 and cells["all"]["answer_loss"] > 0
    assert sum(c["n"] for name, c in cells.items() if name.startswith("wording:")) == 8
    assert sum(c["n"] for name, c in cells.items() if name.startswith("depth:")) == 8
    # what each method said, record by record: right exactly where the key is in the answer's first line
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for method in ("uio", "full"):
        m = report["methods"][method]
        assert [s["key"] for s in m["said"]] == [r["answers"][0] for r in records]
        assert all("\n" not in s["said"] for s in m["said"])
        assert all(s["right"] == (s["key"] in s["said"]) for s in m["said"] if len(s["said"]) < 80)
        assert sum(s["right"] for s in m["said"]) == round(m["cells"]["all"]["accuracy"] * 8)
        # the key match: 1 where the answer is right, its mean the cell's
        assert all(s["key_match"] == 1 for s in m["said"] if s["right"])
        assert all(0 <= s["key_match"] < 1 for s in m["said"] if not s["right"])
        assert m["cells"]["all"]["key_match"] == pytest.approx(sum(s["key_match"] for s in m["said"]) / 8, abs=1e-3)
        prompts = [len(tokenizer(r["prompt"])["input_ids"]) for r in records]
        assert [s["tokens"] for s in m["said"]] == prompts
        # how many 32-token segments before the question's the key lies: against the token that
        # holds the key's first character, found from the tokenizer's offsets
        for s, r, n in zip(m["said"], records, prompts):
            at = r["prompt"].find(s["key"])
            offsets = tokenizer(r["prompt"], return_offsets_mapping=True)["offset_mapping"]
            token = next(i for i, (a, b) in enumerate(offsets) if b > at)
            assert s["back"] == (n - 1) // 32 - token // 32
        assert sum(c["n"] for name, c in m["cells"].items() if name.startswith("back:")) == 8
    assert report["segment_length"] == 32
    # the same records gzip-compressed: the same digest and figures; other records: another digest
    with gzip.open(tmp_path / "facts.jsonl.gz", "wt", encoding="utf-8") as f:
        f.write(path.read_text())
    other = tmp_path / "other.jsonl"
    other.write_text("".join(path.read_text().splitlines(keepends=True)[:7]))
    for name, file in (("g", "facts.jsonl.gz"), ("o", "other.jsonl")):
        assert main(["--model", tiny_dirs["llama"], "--segment-length", "32", "--compression-ratio", "8", "--tasks",
                     "facts", "--facts", str(tmp_path / file), "--methods", "full", "--out", str(tmp_path),
                     "--name", name]) == 0
    again, fewer = (json.loads((tmp_path / f"{n}.json").read_text())["facts"] for n in ("g", "o"))
    assert again["records_sha1"] == report["records_sha1"] != fewer["records_sha1"]
    assert again["methods"]["full"] == report["methods"]["full"] and fewer["records"] == 7
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "x"}) + "\n")
    assert main(["--model", tiny_dirs["llama"], "--tasks", "facts", "--facts", str(bad), "--methods", "full"]) == 2
    assert re.search(r"error: .*bad.jsonl:1: a fact record needs prompt, answers and facts", capsys.readouterr().err)


def test_facts_lengths_selects_records_by_their_length_cell(tiny_dirs, tmp_path, capsys):
    from transformers import AutoTokenizer

    from uio_ds.data.generators.facts import write_fact_jsonl
    from uio_ds.eval.facts import length_bucket
    from uio_ds.eval.run import main

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    path = tmp_path / "facts.jsonl"
    write_fact_jsonl(str(path), 12, tokenizer, [120, 240], ["story"], facts=(1, 1), seed=3, log=lambda _: None)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    short = [r["answers"][0] for r in records if length_bucket(r["tokens"]) == "128"]
    assert 0 < len(short) < 12
    base = ["--model", tiny_dirs["llama"], "--segment-length", "32", "--tasks", "facts", "--methods", "full",
            "--out", str(tmp_path), "--facts", str(path)]
    assert main(base + ["--facts-lengths", "128", "--name", "short"]) == 0
    said = json.loads((tmp_path / "short.json").read_text())["facts"]["methods"]["full"]["said"]
    assert [s["key"] for s in said] == short  # those records only, in file order
    assert main(base + ["--facts-lengths", "128", "--facts-max", "1", "--name", "one"]) == 0
    said = json.loads((tmp_path / "one.json").read_text())["facts"]["methods"]["full"]["said"]
    assert [s["key"] for s in said] == short[:1]
    capsys.readouterr()
    assert main(base + ["--facts-lengths", "4096"]) == 2
    assert re.search(r"error: .*facts.jsonl holds no fact record of 4K tokens \(it holds (128, 256|256, 128)\)",
                     capsys.readouterr().err)
    bare = tmp_path / "bare.jsonl"
    bare.write_text("".join(json.dumps({k: v for k, v in r.items() if k != "tokens"}) + "\n" for r in records))
    assert main(base[:-1] + [str(bare), "--facts-lengths", "128"]) == 2
    assert "record 1 has no 'tokens' count" in capsys.readouterr().err


@pytest.mark.parametrize("recent", [0, 16])
def test_uio_answer_reads_the_prompt_once_and_equals_greedy_and_answer_loss(tiny_dirs, recent):
    """The facts task's one reading of a prompt gives what ``greedy`` and ``last_losses`` give
    reading it twice, an answer crossing a segment boundary included."""
    model = load(tiny_dirs["llama"], recent_tokens=recent)
    perturb_trainable(model, scale=0.2)
    method = build_methods(model, ["uio"])[0]
    for length, n in ((45, 3), (46, 5), (48, 2), (31, 1)):  # l = 16: 45 + 3 crosses 48, 48 starts a segment
        prompt, answer = random_ids(1, length, seed=length), random_ids(1, n, seed=100 + length)
        tokens, losses = method.answer(prompt, answer, 6)
        assert tokens == method.greedy(prompt, 6)
        assert losses == pytest.approx(method.last_losses(torch.cat([prompt, answer], 1), n), rel=1e-4, abs=1e-5)


def test_streaming_answer_reads_the_prompt_once(tiny_dirs):
    """StreamingLLM's one reading of a prompt: the greedy continuation of ``greedy``, and the answer
    scored read after the prompt: token by token (chunk 1) what feeding it one token at a time
    gives, and while nothing is dropped what full attention gives."""
    import torch.nn.functional as F

    model = load(tiny_dirs["llama"])
    base = model.base
    for chunk, window in ((1, 12), (5, 12), (7, 200)):
        method = StreamingMethod(base, sink_tokens=2, window_tokens=window, chunk_tokens=chunk)
        for length, n in ((30, 4), (41, 1), (13, 6)):
            prompt, answer = random_ids(1, length, seed=length), random_ids(1, n, seed=50 + length)
            tokens, losses = method.answer(prompt, answer, 5)
            assert tokens == method.greedy(prompt, 5)
            s = method.streaming
            s.reset()
            logits = [s.prefill(prompt)] + [s.step(answer[:, i : i + 1]) for i in range(n - 1)]
            fed = F.cross_entropy(torch.stack(logits, 1)[0].float(), answer[0], reduction="none").tolist()
            if chunk == 1:
                assert losses == pytest.approx(fed, rel=1e-4, abs=1e-5)
            if window == 200:  # nothing dropped: full attention
                with torch.no_grad():
                    full = base(torch.cat([prompt, answer], 1)).logits[0, length - 1 : -1]
                want = F.cross_entropy(full.float(), answer[0], reduction="none").tolist()
                assert losses == pytest.approx(want, rel=1e-4, abs=1e-4)
                assert losses == pytest.approx(method.last_losses(torch.cat([prompt, answer], 1), n), rel=1e-4, abs=1e-4)


def test_key_match_scores_how_much_of_the_key_the_answer_spells():
    """Against a plain Levenshtein distance over every substring of the answer: the key is scored
    in full, wherever it stands in the line."""
    import itertools
    import random

    from uio_ds.eval.facts import key_match

    def levenshtein(a, b):
        row = list(range(len(b) + 1))
        for i, x in enumerate(a, 1):
            new = [i]
            for j, y in enumerate(b, 1):
                new.append(min(row[j - 1] + (x != y), row[j] + 1, new[-1] + 1))
            row = new
        return row[-1]

    def reference(key, line):
        subs = {line[i:j] for i, j in itertools.combinations_with_replacement(range(len(line) + 1), 2)}
        return 1 - min(levenshtein(key, s) for s in subs) / len(key)

    assert key_match("4573013", "The code is 4573013.") == 1.0
    assert key_match("4573013", "The code is 4573333.") == pytest.approx(5 / 7)  # two digits off
    assert key_match("9695397", "9") == pytest.approx(1 / 7)  # not 1: the key is the needle
    assert key_match("9695397", "") == 0.0 and key_match("abc", "xyz") == 0.0
    rng = random.Random(0)
    for _ in range(200):
        key = "".join(rng.choices("0123ab", k=rng.randint(1, 7)))
        line = "".join(rng.choices("0123ab -", k=rng.randint(0, 12)))
        assert key_match(key, line) == pytest.approx(reference(key, line))
    with pytest.raises(ValueError, match="non-empty key"):
        key_match("", "x")


def test_fact_prompts_are_grouped_by_the_nearest_power_of_two():
    from uio_ds.eval.facts import length_bucket

    assert [length_bucket(n) for n in (2047, 2041, 1500, 1400, 4100, 32700, 300)] == \
        ["2K", "2K", "2K", "1K", "4K", "32K", "256"]
