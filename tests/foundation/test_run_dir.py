"""A run owns its output directory: the lock names its holder, a dead holder's lock is taken
over and reported, an earlier run's outputs are found and (only they) removed on request."""

import json
import os
import socket
import subprocess

import pytest

from uio_ds.train import checkpoint as ckpt
from uio_ds.train.checkpoint import RunLock, clear_run, existing_run


def _lock_file(folder, pid: int) -> None:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, ".lock"), "w") as f:
        json.dump({"host": socket.gethostname(), "pid": pid, "started": 0}, f)


def test_lock_is_exclusive_and_released(tmp_path):
    first, second = RunLock(str(tmp_path)), RunLock(str(tmp_path))
    first.acquire()
    assert first.held and second.holder()["pid"] == os.getpid()
    # the holder is this live process: a second run is refused with who holds it
    with pytest.raises(RuntimeError, match=rf"in use by pid {os.getpid()} on {socket.gethostname()}"):
        second.acquire()
    first.release()
    assert not os.path.exists(tmp_path / ".lock") and second.holder() is None
    second.acquire()
    assert second.held and second.note is None


def test_a_dead_holders_lock_is_taken_over_and_reported(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    _lock_file(tmp_path, gone.pid)
    lock = RunLock(str(tmp_path))
    assert lock.holder() is None
    lock.acquire()
    assert lock.held and "stale lock" in lock.note and str(gone.pid) in lock.note
    _lock_file(tmp_path / "live", os.getppid())  # a live process that is not us
    with pytest.raises(RuntimeError, match=f"pid {os.getppid()}"):
        RunLock(str(tmp_path / "live")).acquire()


def test_earlier_run_outputs_are_found_and_only_they_removed(tmp_path):
    assert existing_run(str(tmp_path)) is None
    root = tmp_path / "checkpoints"
    (root / ckpt.step_tag(4)).mkdir(parents=True)
    ckpt.mark_complete(str(root), ckpt.step_tag(4), {"step": 4, "world_size": 1})
    (tmp_path / "final").mkdir()
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    (tmp_path / "notes.txt").write_text("mine")
    assert existing_run(str(tmp_path)) == "checkpoints up to step 4, exported parts (final/), metrics.jsonl"
    assert clear_run(str(tmp_path)) == ["checkpoints", "final", "metrics.jsonl"]
    assert existing_run(str(tmp_path)) is None and (tmp_path / "notes.txt").read_text() == "mine"
