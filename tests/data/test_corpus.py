import json

import pytest

from uio_ds.data.generators.corpus import group_records, heldout_ids, load_corpus, prepare_corpus


def write_jsonl(path, lines):
    with open(path, "wb") as f:
        for line in lines:
            f.write((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n")


def test_grouping_skips_and_counts_bad_records(tmp_path):
    path = tmp_path / "records.jsonl"
    write_jsonl(path, [
        {"book": "A", "text": "one"},
        {"book": "B", "text": "first of B"},
        b"{not json",
        b'{"book": "A", "text": "caf\xe9"}',  # latin-1 byte: not UTF-8
        {"book": "A", "text": 7},
        {"book": "A"},
        {"book": "A", "text": "   "},
        {"text": "no book"},
        ["a", "list"],
        {"book": "A", "text": "two"},  # A's records need not be adjacent
    ])
    docs, stats = group_records([str(path)], group_by=["book"])
    assert [(d["doc_id"], d["text"], d["num_records"], d["order"]) for d in docs] == [
        ("A", "one\ntwo", 2, 0), ("B", "first of B", 1, 1)]
    assert stats.records == 10 and stats.num_skipped == 7
    assert stats.skipped == {
        "not valid JSON": 1,
        "undecodable bytes (not UTF-8)": 1,
        "field 'text' is int, not a string": 1,
        "no field 'text'": 1,
        "empty text": 1,
        "missing group key(s) ['book']": 1,
        "record is not a JSON object": 1,
    }
    assert stats.examples[0] == f"{path}:3: not valid JSON"


def test_missing_file_fails_before_any_work(tmp_path):
    present = tmp_path / "a.jsonl"
    write_jsonl(present, [{"book": "A", "text": "x"}])
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        group_records([str(present), str(tmp_path / "nope.jsonl")])


def test_heldout_takes_every_nth_by_length():
    docs = [{"doc_id": str(i), "num_chars": 100 - i, "order": i} for i in range(12)]
    assert heldout_ids(docs, eval_every=4, eval_offset=1) == ["1", "5", "9"]
    with pytest.raises(ValueError, match="eval_every"):
        heldout_ids(docs, eval_every=1)


def test_prepare_corpus_with_other_keys(tmp_path):
    path = tmp_path / "r.jsonl"
    write_jsonl(path, [{"story": s, "part": p, "body": f"{s}{p}" * (3 + s)} for s in range(6) for p in range(2)])
    manifest = prepare_corpus([str(path)], str(tmp_path / "out"), text_field="body", group_by=["story"],
                              eval_every=3, eval_offset=0, log=lambda *_: None)
    corpus = load_corpus(str(tmp_path / "out"))
    assert manifest["documents"] == 6 and manifest["eval_documents"] == ["2", "5"]
    assert corpus["eval"]["doc_id"] == ["2", "5"] and len(corpus["train"]) == 4
    with pytest.raises(FileNotFoundError, match="not a prepared corpus"):
        load_corpus(str(tmp_path))


def test_king_james_books(kjv_file, tmp_path):
    docs, stats = group_records([kjv_file])
    assert len(docs) == 66 and stats.records == 31103 and stats.num_skipped == 0
    assert [d["doc_id"] for d in docs[:3]] == ["Genesis", "Exodus", "Leviticus"]
    assert docs[-1]["doc_id"] == "Revelation" and [d["order"] for d in docs] == list(range(66))
    assert docs[0]["text"].startswith("In the beginning God created the heaven and the earth.\n")
    manifest = prepare_corpus([kjv_file], str(tmp_path / "kjv"), log=lambda *_: None)
    held = manifest["eval_documents"]
    assert len(held) == 11 and manifest["train_documents"] == 55
    # some of the longest books are held out (Jeremiah and Deuteronomy are among the 8 longest)
    assert {"Jeremiah", "Deuteronomy"} <= set(held)
