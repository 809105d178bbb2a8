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
    from rapidfuzz import fuzz

    pred = "# a comment\n    return x + 1\n"
    assert score("code_sim", pred, "    return x + 2") == pytest.approx(fuzz.ratio("    return x + 1", "    return x + 2") / 100)


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
