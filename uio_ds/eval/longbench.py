"""LongBench-format QA and summarisation from local jsonl files.

Each record: ``context`` (the long text), ``input`` (the question; may be empty for
summaries), ``answers`` (a list of gold strings) and ``dataset`` (the task name). The
prompt is the context, then the question; the greedy answer is cut at the first line
break. QA tasks are scored by F1, summarisation tasks (gov_report, qmsum, multi_news,
vcsum, samsum, or any name containing "sum") by ROUGE-L; per task and averaged.
A malformed record stops the run with its file and line.
"""

from __future__ import annotations

import json
from typing import Sequence

from tqdm import tqdm

from uio_ds.eval.methods import Method
from uio_ds.eval.metrics import qa_f1, rouge_l

SUMMARY_TASKS = {"gov_report", "qmsum", "multi_news", "vcsum", "samsum"}
PROMPT = "{context}\n\nAnswer the question based on the text above.\nQuestion: {input}\nAnswer:"


def load_records(path: str) -> list[dict]:
    """Records of a LongBench-format jsonl file, checked field by field."""
    records = []
    try:
        handle = open(path, encoding="utf-8")
    except FileNotFoundError:
        raise FileNotFoundError(f"LongBench file {path!r} not found") from None
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
            for field, kind in (("context", str), ("input", str), ("answers", list)):
                if not isinstance(record.get(field), kind):
                    raise ValueError(f"{where}: field {field!r} must be a {kind.__name__}")
            if not record["answers"] or not all(isinstance(a, str) for a in record["answers"]):
                raise ValueError(f"{where}: 'answers' must be a non-empty list of strings")
            record.setdefault("dataset", "default")
            records.append(record)
    if not records:
        raise ValueError(f"{path} holds no records")
    return records


def is_summary(task: str) -> bool:
    return task in SUMMARY_TASKS or "sum" in task


def evaluate_longbench(methods: Sequence[Method], tokenizer, records: Sequence[dict], max_new_tokens: int = 32,
                       max_prompt_tokens: int | None = None) -> dict:
    """Scores per method and task; a prompt past a method's range is cut from the left
    (the start of the context), as LongBench does with its middle truncation."""
    report = {}
    for method in methods:
        scores: dict[str, list[float]] = {}
        for record in tqdm(records, desc=f"longbench {method.name}", leave=False):
            ids = tokenizer(PROMPT.format(**record), return_tensors="pt")["input_ids"]
            limit = min(x for x in (max_prompt_tokens, method.max_tokens and method.max_tokens - max_new_tokens)
                        if x) if (max_prompt_tokens or method.max_tokens) else None
            if limit and ids.shape[1] > limit:
                ids = ids[:, -limit:]
            answer = tokenizer.decode(method.greedy(ids, max_new_tokens), skip_special_tokens=True)
            answer = answer.strip().split("\n")[0]
            task = record["dataset"]
            score = rouge_l(answer, record["answers"][0]) if is_summary(task) else qa_f1(answer, record["answers"])
            scores.setdefault(task, []).append(score)
        per_task = {task: sum(v) / len(v) for task, v in scores.items()}
        report[method.name] = {"tasks": per_task, "average": sum(per_task.values()) / len(per_task)}
    return report
