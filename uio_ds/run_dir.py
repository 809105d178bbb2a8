"""A training run owns its output directory.

* ``existing_run(output_dir)`` says what an earlier run left there (checkpoints, exported parts,
  metrics), so that a fresh run refuses to write over it unless asked to resume or overwrite;
* ``RunLock`` is a lock file holding the owner's host and pid: a second run on the same
  directory is refused with who holds it, and a lock left by a process that no longer runs
  (on this host) is reported and taken over.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import time

from uio_ds import checkpoint as ckpt

LOCK_FILE = ".lock"
# What a run writes into its output directory (``overwrite`` removes exactly these)
RUN_OUTPUTS = ("checkpoints", "final", "tensorboard", "metrics.jsonl", "run_config.json")


def existing_run(output_dir: str) -> str | None:
    """A short description of the run outputs already in ``output_dir``, or None if there are none."""
    found = []
    tags = ckpt.complete_tags(os.path.join(output_dir, "checkpoints"))
    if tags:
        found.append(f"checkpoints up to step {ckpt.tag_step(tags[-1])}")
    if os.path.isdir(os.path.join(output_dir, "final")):
        found.append("exported parts (final/)")
    if os.path.isfile(os.path.join(output_dir, "metrics.jsonl")):
        found.append("metrics.jsonl")
    return ", ".join(found) or None


def clear_run(output_dir: str) -> list[str]:
    """Remove an earlier run's outputs from ``output_dir`` (nothing else); returns what was removed."""
    removed = []
    for name in RUN_OUTPUTS:
        path = os.path.join(output_dir, name)
        if os.path.isdir(path):
            shutil.rmtree(path)
        elif os.path.exists(path):
            os.remove(path)
        else:
            continue
        removed.append(name)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class RunLock:
    """``output_dir/.lock`` with {host, pid, started}; ``acquire`` raises RuntimeError when another
    live process holds it."""

    def __init__(self, output_dir: str):
        self.path = os.path.join(output_dir, LOCK_FILE)
        self.held = False
        self.note: str | None = None  # set when a stale lock was taken over

    def holder(self) -> dict | None:
        """The lock's owner, or None when the directory is free (no lock, or a stale one)."""
        try:
            with open(self.path) as f:
                owner = json.load(f)
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {"host": "?", "pid": -1, "started": 0, "unreadable": True}
        if owner.get("host") == socket.gethostname() and not _alive(int(owner.get("pid", -1))):
            return None
        return owner

    def describe(self, owner: dict) -> str:
        if owner.get("unreadable"):
            return f"{self.path} exists but cannot be read; delete it if no run uses this directory"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(owner.get("started", 0)))
        return (f"{os.path.dirname(self.path)} is in use by pid {owner.get('pid')} on {owner.get('host')} "
                f"(since {started}): wait for it, or choose another output_dir; if that run is gone, delete "
                f"{self.path}")

    def acquire(self) -> None:
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.holder()
                if owner is not None:
                    raise RuntimeError(self.describe(owner)) from None
                with open(self.path) as f:
                    stale = f.read().strip()
                os.remove(self.path)  # stale: its process is gone
                self.note = f"removed a stale lock of a process that no longer runs ({stale})"
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return
        raise RuntimeError(f"could not take the lock {self.path}: another run took it at the same moment")

    def release(self) -> None:
        if self.held:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
            self.held = False
