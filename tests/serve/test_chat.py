"""``uio-ds chat`` driven by a scripted session on its standard input."""

import os
import subprocess
import sys

from helpers import REPO


def test_scripted_chat_session(tiny_dirs, tmp_path):
    doc = tmp_path / "doc.txt"
    doc.write_text(" ".join(["The pass key is 4711, keep it in mind."] * 20))
    script = "\n".join(["/memory", f"/load {doc}", "What is the pass key?", "/memory", "Say it again.",
                        "/load nope.txt", "/bogus", "/reset", "/memory", "/quit", "never read"]) + "\n"
    env = dict(os.environ, PYTHONPATH=REPO, OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    done = subprocess.run([sys.executable, "-m", "uio_ds", "chat", "--model", tiny_dirs["llama"], "--segment-length",
                           "16", "--compression-ratio", "4", "--max-tokens", "6", "--device", "cpu"],
                          input=script, capture_output=True, text=True, timeout=300, env=env, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0].startswith("chatting with") and lines[1] == "memory: empty (nothing asked yet)"
    assert lines[2].startswith(f"(loaded {doc}: ") and "tokens" in lines[2]
    reports = [line for line in lines if line.startswith("[memory: ")]
    assert len(reports) == 2  # one after each answer
    first_new = int(reports[0].split("last turn read ")[1].split()[0])
    second_new = int(reports[1].split("last turn read ")[1].split()[0])
    assert first_new > 200 and second_new < 40  # the document was read once; the follow-up costs its own length
    assert int(reports[1].split("[memory: ")[1].split()[0]) > 0
    assert "(no file 'nope.txt')" in lines and any(line.startswith("(unknown command /bogus") for line in lines)
    assert "(new conversation)" in lines and lines[-1] == "memory: empty (nothing asked yet)"
