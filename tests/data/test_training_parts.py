"""Training config, data pipeline and checkpoint protocol, without DeepSpeed."""

import json
import os

import pytest
from helpers import REPO
from transformers import AutoTokenizer

from uio_ds.config import ConfigError, DataConfig, SourceConfig, TrainConfig, apply_overrides
from uio_ds.data.documents import document_pieces
from uio_ds.data.files import source_files
from uio_ds.data.streams import build_stream
from uio_ds.formats import IGNORE_INDEX, synthetic_text
from uio_ds.train import checkpoint as ckpt


def minimal(**overrides) -> dict:
    cfg = {"model_path": "m", "data": {"sources": [{"path": "d.jsonl"}]}}
    cfg.update(overrides)
    return cfg


def test_shipped_training_configs_load():
    folder = os.path.join(REPO, "launch", "configs")
    names = [f for f in os.listdir(folder) if f.endswith(".json")]
    assert names
    for name in names:
        cfg = TrainConfig.from_file(os.path.join(folder, name))
        assert cfg.data.sources and cfg.steps >= 1


def test_train_config_collects_every_problem():
    bad = minimal(steps=0, optim={"lr": 0, "min_lr_ratio": 2}, algorithm={"name": "unbiased", "window": None},
                  data={"sources": [{"path": "", "weight": -1}], "documents_per_step": 0},
                  uio={"segment_length": 100, "compression_ratio": 32}, colour="red")
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(bad)
    text = str(err.value)
    for needle in ("unknown option(s) ['colour']", "uio.compression_ratio=32 does not divide"):
        assert needle in text, needle
    bad.pop("colour")
    bad["uio"] = {"segment_length": 64}
    with pytest.raises(ConfigError) as err:
        TrainConfig.from_dict(bad)
    text = str(err.value)
    for needle in ("steps=0", "optim.lr=0", "optim.min_lr_ratio=2", "needs a window", "path is empty",
                   "weight=-1", "documents_per_step=0"):
        assert needle in text, needle


def test_overrides_parse_json_values():
    data = apply_overrides(minimal(), ["optim.lr=0.5", "steps=7", "output_dir=runs/x", "algorithm.name=incremental",
                                       "algorithm.window=null"])
    cfg = TrainConfig.from_dict(data)
    assert (cfg.optim.lr, cfg.steps, cfg.output_dir, cfg.algorithm.window) == (0.5, 7, "runs/x", None)
    with pytest.raises(ConfigError, match="expected key.path=value"):
        apply_overrides({}, ["steps"])


def test_lr_schedule_warms_up_then_decays():
    cfg = TrainConfig.from_dict(minimal(optim={"lr": 1.0, "warmup_steps": 4, "min_lr_ratio": 0.1}, steps=14))
    factors = [cfg.optim.lr_multiplier(s, cfg.steps) for s in range(cfg.steps)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == pytest.approx(1.0) and factors[-1] == pytest.approx(0.1)
    assert all(a >= b for a, b in zip(factors[3:], factors[4:]))


def test_sources_are_checked_before_work(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        source_files(SourceConfig(path=str(tmp_path / "nope.jsonl")))
    with pytest.raises(FileNotFoundError, match="matches no file"):
        source_files(SourceConfig(path=str(tmp_path / "*.jsonl")))
    (tmp_path / "a.csv").write_text("x")
    with pytest.raises(ValueError, match="unsupported type"):
        source_files(SourceConfig(path=str(tmp_path / "a.csv")))
    with pytest.raises(FileNotFoundError, match="not one that datasets saved"):
        source_files(SourceConfig(path=str(tmp_path)))


def test_document_pieces_cut_and_skip():
    pieces, skipped = document_pieces([10, 3, 25], min_tokens=4, max_tokens=10)
    assert pieces.tolist() == [[0, 0, 10], [2, 0, 10], [2, 10, 20], [2, 20, 25]]
    assert skipped == 1
    pieces, skipped = document_pieces([10, 3, 25], min_tokens=4, max_tokens=10, truncate=True)
    assert pieces.tolist() == [[0, 0, 10], [2, 0, 10]] and skipped == 1
    pieces, skipped = document_pieces([10, 3, 25], min_tokens=4, max_tokens=10, whole=True)
    assert pieces.tolist() == [[0, 0, 10]] and skipped == 2
    pieces, skipped = document_pieces([7, 0, 21], min_tokens=2, max_tokens=None)
    assert pieces.tolist() == [[0, 0, 7], [2, 0, 21]] and skipped == 1


@pytest.fixture
def two_sources(tiny_dirs, tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b"
    with open(a, "w") as f:
        for i in range(10):
            f.write(json.dumps({"body": synthetic_text(5 + i, seed=i)}) + "\n")
        f.write(json.dumps({"body": 17}) + "\n")
    b.mkdir()
    for i in range(4):
        (b / f"{i}.txt").write_text(synthetic_text(20, seed=100 + i))
    (b / "bad.txt").write_bytes(b"\xff\xfe not utf-8")
    config = DataConfig(
        sources=[SourceConfig(path=str(a), text_field="body", weight=3.0), SourceConfig(path=str(b / "*.txt"))],
        documents_per_step=2, min_tokens=8, max_tokens=64, cache_dir=str(tmp_path / "cache"))
    return config, AutoTokenizer.from_pretrained(tiny_dirs["llama"])


def test_stream_mixes_shards_and_resumes(two_sources):
    config, tok = two_sources
    stream, info = build_stream(config, tok, world_size=2, rank=0, log=lambda *_: None)
    assert info[config.sources[0].path]["skipped"] == {"field 'body' is int, not a string": 1}
    assert info[config.sources[1].path]["skipped"] == {"undecodable bytes (not UTF-8)": 1}
    other, _ = build_stream(config, tok, world_size=2, rank=1, log=lambda *_: None)  # from the cache
    for _ in range(5):
        mine, theirs = stream.next_documents(), other.next_documents()
        assert len(mine) == 2 and all(8 <= len(d) <= 64 for d in mine)
        assert not any(a.equal(b) for a in mine for b in theirs if len(a) == len(b))
    state = stream.state_dict()
    expected = [stream.next_documents() for _ in range(6)]
    fresh, _ = build_stream(config, tok, world_size=2, rank=0, log=lambda *_: None)
    fresh.load_state_dict(json.loads(json.dumps(state)))  # survives a JSON round trip too
    again = [fresh.next_documents() for _ in range(6)]
    assert all(x.equal(y) for a, b in zip(expected, again) for x, y in zip(a, b))


def test_stream_follows_the_weights(two_sources):
    config, tok = two_sources
    stream, _ = build_stream(config, tok, log=lambda *_: None)
    draws = [stream._draw()[0] for _ in range(2000)]
    share = draws.count(0) / len(draws)
    assert abs(share - 0.75) < 0.04  # weights 3 : 1


def test_interrupted_save_keeps_the_last_good_checkpoint(tmp_path):
    root = str(tmp_path)
    for step in (2, 4):
        os.makedirs(os.path.join(root, ckpt.step_tag(step)))
        ckpt.mark_complete(root, ckpt.step_tag(step), {"step": step, "world_size": 2})
    os.makedirs(os.path.join(root, ckpt.step_tag(6)))  # a save that died half way
    with open(os.path.join(root, ckpt.step_tag(6), "partial.pt"), "w") as f:
        f.write("x")
    assert ckpt.latest_tag(root) == "step00000004"
    with open(os.path.join(root, ckpt.LATEST), "w") as f:
        f.write("step00000006")  # even a pointer at an incomplete save is not followed
    assert ckpt.latest_tag(root) == "step00000004"
    os.makedirs(os.path.join(root, ckpt.step_tag(8)))
    ckpt.mark_complete(root, ckpt.step_tag(8), {"step": 8, "world_size": 2})
    removed = ckpt.prune(root, keep_last=2)
    assert sorted(removed) == ["step00000002", "step00000006"]
    assert ckpt.complete_tags(root) == ["step00000004", "step00000008"]


def test_autoencode_documents_are_a_segment_twice(two_sources):
    config, tok = two_sources
    config.autoencode_tokens = 16
    stream, _ = build_stream(config, tok, log=lambda *_: None)
    for doc in stream.next_documents():
        ids, labels = doc["input_ids"], doc["labels"]
        assert len(ids) == 32 and ids[:16].equal(ids[16:])
        # only the copy is scored, from its second token on (its first is given, as in evaluation)
        assert (labels[:17] == IGNORE_INDEX).all() and labels[17:].equal(ids[17:])
    with pytest.raises(ConfigError, match="must equal uio.segment_length"):
        TrainConfig.from_dict(minimal(data={"sources": [{"path": "x"}], "autoencode_tokens": 16},
                                      uio={"segment_length": 32, "compression_ratio": 8}))


def test_prompt_completion_source_scores_the_completion_only(tiny_dirs, tmp_path):
    """completion_field: the document is prompt + completion, the labels mask the prompt, a document
    longer than max_tokens is skipped (never cut) and counted, bad records are counted by file:line."""
    from uio_ds.formats import IGNORE_INDEX

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    path = tmp_path / "qa.jsonl"
    rows = [{"q": "The pass key is 4711. What is the pass key? It is", "a": " 4711."},
            {"q": synthetic_text(30, seed=1), "a": " far too long."},
            {"q": "No answer here.", "a": "   "},
            {"q": "An answer that is not text.", "a": 3}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    config = DataConfig(sources=[SourceConfig(path=str(path), text_field="q", completion_field="a")],
                        documents_per_step=3, max_tokens=64, cache_dir=str(tmp_path / "cache"))
    stream, info = build_stream(config, tok, log=lambda *_: None)
    assert info[str(path)]["skipped"] == {"empty completion": 1, "field 'a' is int, not a string": 1}
    assert info["skipped_pieces"] == 1 and info["pieces"] == [1]
    prompt = tok(rows[0]["q"])["input_ids"]
    completion = tok(rows[0]["a"], add_special_tokens=False)["input_ids"]
    completion.append(tok.eos_token_id)  # eos: the model learns where an answer ends
    for doc in stream.next_documents():
        assert doc["input_ids"].tolist() == prompt + completion
        assert doc["labels"][: len(prompt)].eq(IGNORE_INDEX).all()
        assert doc["labels"][len(prompt):].tolist() == completion
    (tmp_path / "x.txt").write_text("a plain text file has no completion field")
    with pytest.raises(ValueError, match="needs records"):
        build_stream(DataConfig(sources=[SourceConfig(path=str(tmp_path / "x.txt"), completion_field="a")],
                                cache_dir=str(tmp_path / "cache")), tok, log=lambda *_: None)


def test_prompt_completion_config_problems():
    with pytest.raises(ConfigError, match="equals text_field"):
        TrainConfig.from_dict(minimal(data={"sources": [{"path": "x.jsonl", "completion_field": "text"}]}))
    with pytest.raises(ConfigError, match="cannot take part"):
        TrainConfig.from_dict(minimal(data={"sources": [{"path": "x.jsonl", "completion_field": "answer"}],
                                            "autoencode_tokens": 64}))


def test_recall_completion_documents_have_exact_lengths(tiny_dirs, tmp_path):
    from uio_ds.data.generators.synthetic import write_recall_completion_jsonl

    tok = AutoTokenizer.from_pretrained(tiny_dirs["llama"])
    path = tmp_path / "recall.jsonl"
    write_recall_completion_jsonl(str(path), 40, tok, [128, 160], seed=3)
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert len(records) == 40 and {r["tokens"] for r in records} == {128, 160}
    for r in records:
        n = len(tok(r["prompt"])["input_ids"]) + len(tok(r["completion"], add_special_tokens=False)["input_ids"])
        assert n == r["tokens"] and r["completion"] == f" {r['key']}." and r["key"] in r["prompt"][:200]
    with pytest.raises(ValueError, match="too short"):
        write_recall_completion_jsonl(str(path), 1, tok, [20])
