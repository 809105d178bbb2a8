"""Stopping a run through the real ``deepspeed`` launcher: SIGTERM to the launcher alone, Ctrl-C
to the whole process group, SIGTERM to one rank. Every rank stops at the next step boundary, a
checkpoint of that step is saved, every process exits and the run resumes from it."""

import os
import signal
import subprocess
import threading
import time

import psutil
import pytest
from helpers import REPO, free_port, launcher_env

from uio_ds.train import checkpoint as ckpt

pytestmark = pytest.mark.slow


def _start(config: str, out: str, port: int, runner: tuple[str, ...] = ("deepspeed",)) -> subprocess.Popen:
    cmd = [*runner, "--num_gpus", "2", "--master_port", str(port), os.path.join(REPO, "launch", "train.py"),
           "--config", config, "--set", f"output_dir={out}", "steps=100000", "save_every=0"]
    return subprocess.Popen(cmd, env=launcher_env(), cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)


def _training(proc: subprocess.Popen, out: str) -> tuple[list[str], threading.Thread]:
    """Read the run's output in a thread, which ends at EOF: when every process that holds the pipe
    (launcher, ranks) is gone; return once the run has logged 3 steps."""
    output: list[str] = []
    reader = threading.Thread(target=lambda: output.append(proc.stdout.read()), daemon=True)
    reader.start()
    deadline = time.time() + 300
    while _steps_logged(out) < 3 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.1)
    assert _steps_logged(out) >= 3, "the run did not start training"
    return output, reader


def _steps_logged(out: str) -> int:
    try:
        with open(os.path.join(out, "metrics.jsonl")) as f:
            return sum(1 for _ in f)
    except FileNotFoundError:
        return 0


def _ranks(proc: subprocess.Popen) -> list[psutil.Process]:
    children = psutil.Process(proc.pid).children(recursive=True)
    return [p for p in children if any(part.startswith("--local_rank") for part in p.cmdline())]


@pytest.mark.parametrize("how", ["sigterm_to_launcher", "ctrl_c", "sigterm_to_rank"])
def test_a_stopped_run_saves_its_step_and_leaves_no_process(run_config, tmp_path, how):
    config, _ = run_config
    out = str(tmp_path / "run")
    port = free_port()
    proc = _start(config, out, port)
    output, reader = _training(proc, out)
    ranks = _ranks(proc)
    assert len(ranks) == 2
    if how == "sigterm_to_launcher":  # the launcher does not pass it on: the ranks must notice
        os.kill(proc.pid, signal.SIGTERM)
    elif how == "ctrl_c":
        os.killpg(proc.pid, signal.SIGINT)
    else:
        ranks[-1].send_signal(signal.SIGTERM)
    reader.join(timeout=120)
    assert not reader.is_alive(), "processes of the run survived the stop"
    proc.wait(timeout=30)
    text = output[0]
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in ranks), "a rank survived"
    cause = {"sigterm_to_launcher": "the deepspeed launcher exited", "ctrl_c": "SIG",
             "sigterm_to_rank": "SIGTERM"}[how]
    assert f"stopped by {cause}" in text and "continue with --resume auto" in text, text[-3000:]
    if how == "sigterm_to_rank":
        assert proc.returncode == 128 + signal.SIGTERM
    checkpoints = os.path.join(out, "checkpoints")
    saved = ckpt.tag_step(ckpt.latest_tag(checkpoints))
    assert saved == _steps_logged(out) >= 3  # the checkpoint holds the last step that ran
    assert not os.path.exists(os.path.join(out, "final")) and not os.path.exists(os.path.join(out, ".lock"))
    # no shared-memory all-reduce buffer of DeepSpeed's is left in /dev/shm (training builds no such op)
    if os.path.isdir("/dev/shm"):
        assert not [f for f in os.listdir("/dev/shm") if f.endswith((f"_{port}_0", f"_{port}_1"))]
    if how == "sigterm_to_launcher":  # the stop's checkpoint resumes
        cmd = ["deepspeed", "--num_gpus", "2", "--master_port", str(free_port()),
               os.path.join(REPO, "launch", "train.py"), "--config", config, "--set", f"output_dir={out}",
               f"steps={saved + 1}", "save_every=0", "--resume", "auto"]
        done = subprocess.run(cmd, env=launcher_env(), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert done.returncode == 0 and f"resumed from {os.path.join(checkpoints, ckpt.step_tag(saved))}" in done.stdout
        assert _steps_logged(out) == saved + 1 and os.path.isdir(os.path.join(out, "final"))


def test_a_killed_rank_leaves_one_line_on_the_other(run_config, tmp_path):
    """kill -9 of one rank: the other learns of it inside a collective and says so in one line (with
    the last checkpoint and --resume auto), not with gloo's traceback; the run resumes."""
    config, _ = run_config
    out = str(tmp_path / "run")
    proc = _start(config, out, free_port())
    output, reader = _training(proc, out)
    ranks = _ranks(proc)
    assert len(ranks) == 2
    ranks[-1].kill()
    reader.join(timeout=180)
    assert not reader.is_alive(), "processes of the run survived the kill"
    proc.wait(timeout=30)
    text = output[0]
    assert proc.returncode != 0 and "Traceback" not in text, text[-4000:]
    if "Connection closed by peer" in text:  # rank 0 got to say it before the launcher stopped it
        assert "error: rank 0 lost the other ranks (Connection closed by peer" in text, text[-4000:]
        assert "continue with --resume auto" in text


def test_ctrl_c_through_uio_ds_launch_ends_with_the_ranks_line_alone(run_config, tmp_path):
    """``uio-ds launch`` is the deepspeed runner with its arguments; on Ctrl-C the run stops and
    saves as under ``deepspeed``, and no traceback (the runner's KeyboardInterrupt) follows."""
    import sys

    config, _ = run_config
    out = str(tmp_path / "run")
    proc = _start(config, out, free_port(), runner=(sys.executable, "-m", "uio_ds", "launch"))
    output, reader = _training(proc, out)
    os.killpg(proc.pid, signal.SIGINT)
    reader.join(timeout=180)
    proc.wait(timeout=30)
    text = output[0]
    assert "stopped by SIGINT" in text and "continue with --resume auto" in text, text[-3000:]
    assert "Traceback" not in text and "KeyboardInterrupt" not in text, text[-3000:]
    assert ckpt.tag_step(ckpt.latest_tag(os.path.join(out, "checkpoints"))) == _steps_logged(out)
