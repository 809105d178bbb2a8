"""LongBench (Bai et al., 2023) from local jsonl files, with LongBench's own protocol.

Each record: ``context``, ``input`` (the question; empty for summaries), ``answers`` (gold
strings), ``dataset`` (one of LongBench's 21 names) and, for the classification tasks,
``all_classes``: the records of THUDM/LongBench's data files as they are. What follows is
LongBench's ``pred.py`` / ``eval.py`` (the prompts and generation lengths are its config files,
``longbench_protocol.json``):

* the dataset's own prompt template and maximum number of new tokens;
* a prompt longer than the method can read is cut in the middle: its first and last halves
  are kept (the instructions sit at both ends), at the token level here;
* ``--longbench-chat``: the tokenizer's chat template wraps the prompt, except on trec,
  triviaqa, samsum, lsht, lcc and repobench-p, as LongBench does for chat models;
* greedy decoding; for trec, triviaqa, samsum and lsht only the first line of the answer counts;
* the score of an answer is the best over all gold answers of the dataset's metric (QA F1,
  ROUGE-L of the ``rouge`` package, classification, retrieval, count or code similarity), and a
  dataset's score is the mean x 100.

A malformed record, or an unknown dataset name, stops the run before any generation, with its
file and line.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import string
from collections import Counter
from functools import lru_cache
from typing import Sequence

from tqdm import tqdm

from uio_ds.eval.methods import Method
from uio_ds.eval.metrics import normalize_answer


@lru_cache(maxsize=1)
def protocol() -> dict:
    """LongBench's per-dataset prompt, generation length and metric, and its special cases."""
    with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "longbench_protocol.json"),
              encoding="utf-8") as f:
        return json.load(f)


def datasets() -> list[str]:
    return sorted(protocol()["datasets"])


def load_records(path: str) -> list[dict]:
    """Records of a LongBench jsonl file, checked field by field (dataset names included)."""
    records = []
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"LongBench file {path!r} not found") from None
    known = protocol()["datasets"]
    with handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise ValueError(f"{where}: not valid JSON ({err.msg})") from None
            if not isinstance(record, dict):
                raise ValueError(f"{where}: a record must be a JSON object")
            for field, kind in (("context", str), ("input", str), ("answers", list), ("dataset", str)):
                if not isinstance(record.get(field), kind):
                    raise ValueError(f"{where}: field {field!r} must be a {kind.__name__}")
            if not record["answers"] or not all(isinstance(a, str) for a in record["answers"]):
                raise ValueError(f"{where}: 'answers' must be a non-empty list of strings")
            if record["dataset"] not in known:
                raise ValueError(f"{where}: dataset {record['dataset']!r} is not a LongBench dataset; "
                                 f"use one of {sorted(known)}")
            if known[record["dataset"]]["metric"] == "classification" and not isinstance(record.get("all_classes"),
                                                                                        list):
                raise ValueError(f"{where}: dataset {record['dataset']!r} needs 'all_classes' (the label list)")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


# ---------------------------------------------------------------------------- metrics


def _token_f1(prediction: list[str], gold: list[str]) -> float:
    """Token-overlap F1; 0 when nothing overlaps (an empty answer included), as in LongBench."""
    same = sum((Counter(prediction) & Counter(gold)).values())
    if same == 0:
        return 0.0
    precision, recall = same / len(prediction), same / len(gold)
    return 2 * precision * recall / (precision + recall)


def _zh_tokens(text: str) -> list[str]:
    jieba = _require("jieba", "jieba")
    punctuation = set(string.punctuation) | set("！？｡。＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃》「」『』【】"
                                                "〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿–—‘’‛“”„‟…‧﹏.")
    words = ("".join(ch for ch in w.lower() if ch not in punctuation) for w in jieba.cut(text, cut_all=False))
    return ["".join(w.split()) for w in words if "".join(w.split())]


def _rouge_l(prediction: str, gold: str) -> float:
    """ROUGE-L F of the ``rouge`` package, which LongBench scores summaries with; 0 where it refuses."""
    rouge = _require("rouge", "rouge")
    try:
        return rouge.Rouge().get_scores([prediction], [gold], avg=True)["rouge-l"]["f"]
    except (ValueError, RecursionError):  # an empty hypothesis, or a pathological one
        return 0.0


def _digits_matching(prediction: str, wanted: str) -> float:
    """Share of the numbers in ``prediction`` that equal ``wanted`` (LongBench's count/retrieval score)."""
    numbers = re.findall(r"\d+", prediction)
    return sum(n == wanted for n in numbers) / len(numbers) if numbers else 0.0


def _classification(prediction: str, gold: str, classes: Sequence[str]) -> float:
    """1 / (classes named in the answer) when the gold class is among them, dropping a named class
    that is part of the gold one's name."""
    named = [c for c in classes if c in prediction]
    for term in named:  # removing while iterating skips the next term: LongBench's scorer does so too
        if term in gold and term != gold:
            named.remove(term)
    return 1.0 / len(named) if gold in named else 0.0


def _code_similarity(prediction: str, gold: str) -> float:
    """Similarity of the answer's first line that is not a comment or a code fence, as LongBench
    computes it: fuzzywuzzy's ``fuzz.ratio`` without python-Levenshtein, which is 100 for equal
    strings, 0 when either is empty, else difflib's ``SequenceMatcher`` ratio (its automatic junk
    heuristic on) rounded to an integer percent. rapidfuzz's Indel ratio, the usual fast stand-in,
    gives other figures (0.30 against 0.13 on one line seen), so difflib it is.
    """
    line = next((x for x in prediction.lstrip("\n").split("\n") if not any(m in x for m in ("`", "#", "//"))), "")
    if line == gold:
        return 1.0
    if not line or not gold:
        return 0.0
    return round(100 * difflib.SequenceMatcher(None, line, gold).ratio()) / 100


def score(metric: str, prediction: str, gold: str, all_classes: Sequence[str] = ()) -> float:
    """One prediction against one gold answer, in [0, 1], with LongBench's metric ``metric``."""
    if metric == "qa_f1":
        return _token_f1(normalize_answer(prediction).split(), normalize_answer(gold).split())
    if metric == "qa_f1_zh":
        return _token_f1(_zh_tokens(prediction), _zh_tokens(gold))
    if metric == "rouge":
        return _rouge_l(prediction, gold)
    if metric == "rouge_zh":
        jieba = _require("jieba", "jieba")
        return _rouge_l(" ".join(jieba.cut(prediction, cut_all=False)), " ".join(jieba.cut(gold, cut_all=False)))
    if metric == "classification":
        return _classification(prediction, gold, all_classes)
    if metric in ("retrieval", "retrieval_zh"):
        found = re.findall(r"Paragraph (\d+)" if metric == "retrieval" else r"段落(\d+)", gold)
        return _digits_matching(prediction, found[0]) if found else 0.0
    if metric == "count":
        return _digits_matching(prediction, str(gold))
    if metric == "code_sim":
        return _code_similarity(prediction, gold)
    raise ValueError(f"unknown LongBench metric {metric!r}")


def _require(module: str, package: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise RuntimeError(f"LongBench scoring needs {package}: pip install 'uio_ds[longbench]'") from None


# ---------------------------------------------------------------------------- generation


def build_prompt(tokenizer, record: dict, limit: int | None, chat: bool):
    """(1, n) token ids of the dataset's prompt, cut in the middle to ``limit`` tokens."""
    import torch

    spec = protocol()["datasets"][record["dataset"]]
    ids = tokenizer(spec["prompt"].format(context=record["context"], input=record["input"]),
                    add_special_tokens=True)["input_ids"]
    if limit and len(ids) > limit:
        half = limit // 2
        ids = ids[:half] + ids[len(ids) - half:]
    if chat and record["dataset"] not in protocol()["no_chat_template"]:
        text = tokenizer.decode(ids, skip_special_tokens=True)
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        ids = ids if isinstance(ids, list) else ids["input_ids"]  # a BatchEncoding in some versions
    return torch.tensor([ids], device="cpu")  # the method moves it to its model's device


def evaluate_longbench(methods: Sequence[Method], tokenizer, records: Sequence[dict],
                       max_prompt_tokens: int | None = None, chat: bool = False,
                       max_new_tokens: int | None = None) -> dict:
    """Scores (x 100) per method and dataset, and their mean. ``max_new_tokens`` overrides the
    datasets' own generation lengths (for quick runs; published figures use theirs)."""
    if chat and getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("--longbench-chat: the tokenizer has no chat template")
    report = {}
    for method in methods:
        scores: dict[str, list[float]] = {}
        for record in tqdm(records, desc=f"longbench {method.name}", leave=False):
            spec = protocol()["datasets"][record["dataset"]]
            new = max_new_tokens or spec["max_new_tokens"]
            room = method.max_tokens - new if method.max_tokens else None
            limit = min(x for x in (max_prompt_tokens, room) if x) if (max_prompt_tokens or room) else None
            ids = build_prompt(tokenizer, record, limit, chat)
            answer = tokenizer.decode(method.greedy(ids, new), skip_special_tokens=True)
            if record["dataset"] in protocol()["first_line_only"]:
                answer = answer.lstrip("\n").split("\n")[0]
            best = max(score(spec["metric"], answer, gold, record.get("all_classes") or ())
                       for gold in record["answers"])
            scores.setdefault(record["dataset"], []).append(best)
        per_task = {task: round(100 * sum(v) / len(v), 2) for task, v in scores.items()}
        report[method.name] = {"tasks": per_task, "average": round(sum(per_task.values()) / len(per_task), 2),
                               "records": {task: len(v) for task, v in scores.items()}}
    return report
