"""The command line: generation, its errors, and the demo."""

import os
import subprocess
import sys

import pytest
from helpers import REPO, load, perturb_trainable

from uio_ds.cli import main
from uio_ds.formats import synthetic_text


def test_generate_streams_and_reports_speed(tiny_dirs, tmp_path, capsys):
    model = load(tiny_dirs["llama"])
    perturb_trainable(model)
    model.save_trained(str(tmp_path / "uio"))
    (tmp_path / "prompt.txt").write_text(synthetic_text(40, seed=3))
    code = main(["generate", "--model", tiny_dirs["llama"], "--uio", str(tmp_path / "uio"),
                 "--prompt-file", str(tmp_path / "prompt.txt"), "--max-new-tokens", "20"])
    out, err = capsys.readouterr()
    assert code == 0
    assert "segments compressed into" in err and "tokens/s" in err
    assert "segments compressed into" not in out and out.strip()  # stdout: the continuation alone


@pytest.mark.parametrize("case, message", [
    ("missing", "prompt file"),
    ("empty", "the prompt is empty"),
    ("too_long", "longest supported text"),
    ("other_base", "different base model"),
])
def test_generate_errors_are_clear(tiny_dirs, tmp_path, capsys, case, message):
    (tmp_path / "empty.txt").write_text("  \n")
    (tmp_path / "long.txt").write_text(synthetic_text(300, seed=4))
    (tmp_path / "short.txt").write_text("Ada found the lantern.")
    load(tiny_dirs["llama"]).save_trained(str(tmp_path / "uio"))
    args = {
        "missing": ["--model", tiny_dirs["llama"], "--prompt-file", str(tmp_path / "nope.txt")],
        "empty": ["--model", tiny_dirs["llama"], "--prompt-file", str(tmp_path / "empty.txt")],
        # l=16 and ratio 2 give 8 memory slots per 16 tokens: 4096 positions hold about 8K tokens
        "too_long": ["--model", tiny_dirs["llama"], "--prompt-file", str(tmp_path / "long.txt"),
                     "--segment-length", "16", "--compression-ratio", "2", "--max-new-tokens", "8000"],
        "other_base": ["--model", tiny_dirs["qwen2"], "--uio", str(tmp_path / "uio"),
                       "--prompt-file", str(tmp_path / "short.txt")],
    }[case]
    assert main(["generate", *args]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.slow
def test_launch_generate_is_the_same_command(tiny_dirs, tmp_path):
    (tmp_path / "p.txt").write_text(synthetic_text(10, seed=5))
    proc = subprocess.run([sys.executable, os.path.join(REPO, "launch", "generate.py"), "--model", tiny_dirs["mistral"],
                           "--prompt-file", str(tmp_path / "p.txt"), "--max-new-tokens", "4",
                           "--segment-length", "32", "--compression-ratio", "8"],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "prefill" in proc.stderr


def test_demo_runs(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path / "demo"), "--prompt-tokens", "600", "--max-new-tokens", "8"]) == 0
    assert "segments compressed into" in capsys.readouterr().err and os.path.isdir(tmp_path / "demo" / "uio" / "encoder")


@pytest.mark.parametrize("kind", ["recall", "passkey", "repeat", "copy"])
def test_make_recall_data_states_the_key_and_answers_it(tmp_path, kind):
    import json
    import re

    out = str(tmp_path / f"{kind}.jsonl")
    assert main(["make-recall-data", "--kind", kind, "--out", out, "--documents", "20", "--filler", "3", "6"]) == 0
    with open(out) as f:
        docs = [json.loads(line) for line in f]
    assert len(docs) == 20
    for doc in docs:
        text = doc["text"]
        if kind in ("recall", "passkey"):
            key = doc["key"]
            assert re.fullmatch(r"\d{5}", key)
            # stated early, asked at the end, answered with the same key
            assert text.index(f"The pass key is {key}.") < text.rindex("What is the pass key?")
            assert text.endswith(f"The pass key is {key}.")
        else:
            run = re.search(r"(\d{5,12})\.", text).group(1)
            assert text.count(run) == 2
    if kind == "passkey":  # the filler between is the repeated classic sentences, 3..6 times
        from uio_ds.data.generators.synthetic import PASSKEY_FILLER

        assert all(3 <= d["text"].count(PASSKEY_FILLER) <= 6 for d in docs)


def test_make_fact_data_writes_varied_records(tiny_dirs, tmp_path, capsys):
    import json

    out = str(tmp_path / "facts.jsonl")
    assert main(["make-fact-data", "--out", out, "--tokenizer", tiny_dirs["llama"], "--tokens", "300",
                 "--documents", "12", "--haystacks", "story", "code", "--templates", "held_out"]) == 0
    with open(out) as f:
        records = [json.loads(line) for line in f]
    assert len(records) == 12 and "wrote 12 fact documents" in capsys.readouterr().out
    assert all(r["prompt"].endswith(r["questions"][0]) for r in records)
    assert main(["make-fact-data", "--out", out, "--tokenizer", tiny_dirs["llama"], "--tokens", "300",
                 "--haystacks", "books"]) == 2
    assert "haystack 'books' reads a text source" in capsys.readouterr().err
