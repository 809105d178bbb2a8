"""LongBench's protocol on hand-made cases: its per-dataset metrics (checked against the libraries
LongBench scores with), middle truncation, first-line answers, and its config as shipped."""

import json

import pytest

from uio_ds.eval.longbench import build_prompt, datasets, load_records, protocol, score


def test_the_protocol_is_longbench_config():
    assert len(datasets()) == 21
    spec = protocol()["datasets"]
    assert spec["hotpotqa"]["max_new_tokens"] == 32 and spec["gov_report"]["max_new_tokens"] == 512
    assert spec["trec"]["metric"] == "classification" and spec["lcc"]["metric"] == "code_sim"
    assert "{context}" in spec["narrativeqa"]["prompt"] and "{input}" in spec["narrativeqa"]["prompt"]
    assert set(protocol()["first_line_only"]) == {"trec", "triviaqa", "samsum", "lsht"}


def test_qa_f1_is_token_overlap_after_normalisation():
    assert score("qa_f1", "The Eiffel Tower.", "eiffel tower") == 1.0
    # precision 1/3, recall 1/1
    assert score("qa_f1", "in Paris France", "Paris") == pytest.approx(2 * (1 / 3) / (1 / 3 + 1))
    assert score("qa_f1", "", "Paris") == 0.0 and score("qa_f1", "London", "Paris") == 0.0


def test_rouge_is_the_rouge_package_and_zero_where_it_refuses():
    from rouge import Rouge

    pred, gold = "the cat sat on a mat today", "the cat sat on the mat"
    assert score("rouge", pred, gold) == pytest.approx(Rouge().get_scores([pred], [gold], avg=True)["rouge-l"]["f"])
    assert 0 < score("rouge", pred, gold) < 1
    assert score("rouge", gold, gold) == pytest.approx(1.0) and score("rouge", "red blue green", gold) == 0.0
    assert score("rouge", "", gold) == 0.0


def test_chinese_metrics_split_words_with_jieba():
    assert score("qa_f1_zh", "北京天安门。", "北京天安门") == 1.0
    assert 0 < score("qa_f1_zh", "我爱北京", "北京天安门") < 1
    assert score("rouge_zh", "我爱北京天安门", "我爱北京天安门") == pytest.approx(1.0)


def test_classification_retrieval_count_and_code_scores():
    classes = ["Location", "Entity", "Description", "Abbreviation"]
    assert score("classification", "Location", "Location", classes) == 1.0
    assert score("classification", "Entity or Location", "Location", classes) == 0.5
    assert score("classification", "Entity", "Location", classes) == 0.0
    assert score("retrieval", "The answer is Paragraph 12.", "Paragraph 12") == 1.0
    assert score("retrieval", "Paragraph 3 or 12", "Paragraph 12") == 0.5
    assert score("retrieval_zh", "段落5", "段落5") == 1.0
    assert score("count", "There are 7 unique paragraphs: 7", "7") == 1.0
    assert score("count", "no number", "7") == 0.0
    pred = "# a comment\n    return x + 1\n"
    assert score("code_sim", pred, "    return x + 2") == 0.94  # 15 of 16 characters, twice, over 32
    assert score("code_sim", "```python\nx = 1", "x = 1") == 1.0 and score("code_sim", "", "") == 1.0
    assert score("code_sim", "# only a comment", "x = 1") == 0.0


def _code_pairs(n: int, seed: int):
    """Predictions and gold lines like lcc's and repobench-p's: code lines, the prediction often a
    few edits from the gold, sometimes after a comment or a fence, sometimes longer than 200
    characters (where difflib's junk heuristic starts to count), sometimes empty."""
    import random

    rng = random.Random(seed)
    words = ["self", "return", "x", "y", "np", "torch", "def", "if", "else", "for", "in", "range", "len", "(", ")",
             "[", "]", ":", ",", "=", "+", "-", "*", ".", "0", "1", "None", "'a'", '"b"', "{", "}", "    "]
    pairs = []
    for i in range(n):
        gold = " ".join(rng.choice(words) for _ in range(rng.choice([0, 1, 3, 8, 20, 60, 120])))
        chars = list(gold)
        for _ in range(rng.randint(0, max(1, len(chars) // 4))):
            at = rng.randint(0, len(chars))
            op = rng.random()
            if op < 0.4 and chars and at < len(chars):
                del chars[at]
            elif op < 0.8:
                chars.insert(at, rng.choice("abcxyz ()=.:"))
            elif chars and at < len(chars):
                chars[at] = rng.choice("0123456789")
        line = "".join(chars)
        lead = rng.choice(["", "", "\n", "# comment\n", "```python\n", "// note\n", "```\n# a\n"])
        tail = rng.choice(["", "\n", "\nmore = code()", "\n```"])
        pairs.append((lead + line + tail if i % 17 else rng.choice(["", "#", line]), gold))
    return pairs


def test_code_similarity_equals_longbench_scorer_on_generated_pairs():
    """lcc and repobench-p as LongBench's metrics.py scores them: the first line that is not a comment
    or a fence, then fuzzywuzzy's fuzz.ratio, which without python-Levenshtein (LongBench does not
    ask for it) is difflib's SequenceMatcher, rounded to an integer percent, over 100."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "Using slow pure-python SequenceMatcher": the case LongBench runs
        from fuzzywuzzy import fuzz

    def longbench(prediction: str, gold: str) -> float:  # metrics.py's code_sim_score, read from its repository
        first = next((x for x in prediction.lstrip("\n").split("\n")
                      if "`" not in x and "#" not in x and "//" not in x), "")
        return fuzz.ratio(first, gold) / 100

    pairs = _code_pairs(1000, seed=0)
    assert sum(len(g) > 200 for _, g in pairs) > 50 and sum(not g for _, g in pairs) > 50
    wrong = [(p, g, score("code_sim", p, g), longbench(p, g)) for p, g in pairs if score("code_sim", p, g) != longbench(p, g)]
    assert not wrong, wrong[:3]
    distinct = {longbench(p, g) for p, g in pairs}
    assert len(distinct) > 50  # the cases spread over the scale, not only 0 and 1


def test_long_prompts_keep_their_first_and_last_halves(tiny_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    record = {"dataset": "hotpotqa", "context": "Ada kept the lantern in the harbour. " * 50,
              "input": "Where was the lantern?", "answers": ["harbour"]}
    whole = build_prompt(tokenizer, record, None, chat=False)[0].tolist()
    cut = build_prompt(tokenizer, record, 40, chat=False)[0].tolist()
    assert len(whole) > 40 and cut == whole[:20] + whole[-20:]


def test_records_are_checked_before_any_generation(tmp_path):
    good = {"context": "text", "input": "q", "answers": ["a"], "dataset": "hotpotqa"}
    path = tmp_path / "lb.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, "dataset": "my_qa"}) + "\n")
    with pytest.raises(ValueError, match=r"lb.jsonl:2: dataset 'my_qa' is not a LongBench dataset"):
        load_records(str(path))
    path.write_text(json.dumps({**good, "dataset": "trec"}) + "\n")
    with pytest.raises(ValueError, match=r"lb.jsonl:1: dataset 'trec' needs 'all_classes'"):
        load_records(str(path))


def test_chat_template_wraps_every_dataset_but_the_raw_ones(smollm2_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    record = {"context": "Ada kept the lantern.", "input": "Who kept it?", "answers": ["Ada"]}
    raw = build_prompt(tokenizer, {**record, "dataset": "hotpotqa"}, None, chat=False)[0].tolist()
    chat = build_prompt(tokenizer, {**record, "dataset": "hotpotqa"}, None, chat=True)[0].tolist()
    assert len(chat) > len(raw) and "Who kept it?" in tokenizer.decode(chat)
    assert tokenizer.decode(chat).rstrip().endswith("assistant")
    trivia = {**record, "dataset": "triviaqa"}
    assert build_prompt(tokenizer, trivia, None, chat=True).equal(build_prompt(tokenizer, trivia, None, chat=False))
