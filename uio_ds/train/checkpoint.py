"""Checkpoints and the run's output directory.

Checkpoint directory protocol: complete markers, an atomic ``latest`` pointer, keep-last-N.

A checkpoint ``<root>/step00000042/`` is written by every rank (DeepSpeed's sharded files).
Only after all ranks have finished does rank 0 write ``COMPLETE`` inside it and then
replace ``<root>/latest`` atomically (write a temporary file, ``os.replace``). A save that
is interrupted at any point therefore leaves ``latest`` naming the previous complete
checkpoint; incomplete directories are ignored on resume and deleted by the next prune.
``Checkpoints`` saves and restores a run's state (the engine's shards, every rank's trainer
state, the config) in that protocol.

A training run owns its output directory:

* ``existing_run(output_dir)`` says what an earlier run left there (checkpoints, exported parts,
  metrics), so that a fresh run refuses to write over it unless asked to resume or overwrite;
* ``RunLock`` is a lock file holding the owner's host and pid: a second run on the same
  directory is refused with who holds it, and a lock left by a process that no longer runs
  (on this host) is reported and taken over.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import time

import torch

from uio_ds.train.stopping import TrainingStopped

COMPLETE = "COMPLETE"
LATEST = "latest"
CONFIG = "train_config.json"
"""The training config a checkpoint was written with (rank 0 writes it before COMPLETE)."""
_TAG = re.compile(r"^step(\d{8})$")


def step_tag(step: int) -> str:
    return f"step{step:08d}"


def tag_step(tag: str) -> int:
    m = _TAG.match(tag)
    if not m:
        raise ValueError(f"{tag!r} is not a uio_ds checkpoint tag (stepNNNNNNNN)")
    return int(m.group(1))


def is_complete(root: str, tag: str) -> bool:
    return os.path.isfile(os.path.join(root, tag, COMPLETE))


def complete_tags(root: str) -> list[str]:
    """Complete checkpoints under ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    return sorted(t for t in os.listdir(root) if _TAG.match(t) and is_complete(root, t))


def latest_tag(root: str) -> str | None:
    """The checkpoint to resume from: ``latest`` if it names a complete one, else the newest complete."""
    path = os.path.join(root, LATEST)
    if os.path.isfile(path):
        with open(path) as f:
            tag = f.read().strip()
        if _TAG.match(tag) and is_complete(root, tag):
            return tag
    tags = complete_tags(root)
    return tags[-1] if tags else None


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def mark_complete(root: str, tag: str, info: dict) -> None:
    """Rank 0, after every rank finished writing ``tag``: mark it complete, then point ``latest`` at it."""
    _atomic_write(os.path.join(root, tag, COMPLETE), json.dumps({**info, "time": time.time()}))
    _atomic_write(os.path.join(root, LATEST), tag)


def prune(root: str, keep_last: int) -> list[str]:
    """Delete complete checkpoints beyond the newest ``keep_last`` and incomplete leftovers older than
    the newest complete one (a save still running is never older). Returns what was deleted."""
    tags = complete_tags(root)
    removed = tags[:-keep_last] if keep_last > 0 else []
    if tags:
        newest = tag_step(tags[-1])
        removed += [t for t in os.listdir(root) if _TAG.match(t) and not is_complete(root, t) and tag_step(t) < newest]
    for tag in removed:
        shutil.rmtree(os.path.join(root, tag), ignore_errors=True)
    return removed


_READ_CHECKS: dict[tuple[str, str], str | None] = {}


def unreadable(root: str, tag: str) -> str | None:
    """The first file of checkpoint ``tag`` that cannot be read back (``path: error``), or None
    when every file loads. A marker says the ranks finished writing; this finds a file damaged
    since (truncated, overwritten, a disk error). Each state of the files is read once per process."""
    folder = os.path.join(root, tag)
    files = sorted(f for f in os.listdir(folder) if f.endswith(".pt"))
    stats = [os.stat(os.path.join(folder, f)) for f in files]
    key = (os.path.abspath(folder), tuple((f, s.st_size, s.st_mtime_ns) for f, s in zip(files, stats)))
    if key not in _READ_CHECKS:
        _READ_CHECKS[key] = None
        for name in files:
            try:
                # mapped, not read: a damaged archive fails on opening, without loading every tensor
                torch.load(os.path.join(folder, name), map_location="cpu", weights_only=False, mmap=True)
            except Exception as err:  # noqa: BLE001 - whatever the damage, the file is unusable
                _READ_CHECKS[key] = f"{os.path.join(folder, name)}: {type(err).__name__}: {str(err).splitlines()[0][:200]}"
                break
    return _READ_CHECKS[key]


def resume_target(resume: str, checkpoint_dir: str, skipped: list[str] | None = None) -> tuple[str, str] | None:
    """Where ``--resume`` points: (root, tag) of a complete checkpoint, or None for a fresh start.

    'auto': the run's latest complete checkpoint if any, else None; 'latest': it must exist;
    a path: a checkpoint root (its latest) or one checkpoint directory. A checkpoint with a file
    that cannot be read is passed over for the previous complete one (each such one is described
    in ``skipped``), except one named by its directory, which is refused naming the file."""
    root, tag = (checkpoint_dir if resume in ("auto", "latest") else resume), None
    if os.path.isfile(os.path.join(root, COMPLETE)):
        root, tag = os.path.split(os.path.normpath(root))
        problem = unreadable(root, tag)
        if problem:
            raise ValueError(f"checkpoint {os.path.join(root, tag)} cannot be loaded ({problem}): resume from "
                             "another checkpoint")
        return root, tag
    latest = latest_tag(root)
    candidates = ([latest] if latest else []) + [t for t in reversed(complete_tags(root)) if t != latest]
    for tag in candidates:
        problem = unreadable(root, tag)
        if problem is None:
            return root, tag
        if skipped is not None:
            skipped.append(f"checkpoint {os.path.join(root, tag)} cannot be loaded ({problem})")
    if candidates:
        raise ValueError(f"no checkpoint in {root} can be loaded: {unreadable(root, candidates[0])}"
                         + (" (and every older one)" if len(candidates) > 1 else "")
                         + "; start a new run (init_from=<exported parts>) or repair the files")
    if resume == "auto":
        return None
    raise FileNotFoundError(f"no complete checkpoint to resume from in {root}")


def check_world_size(root: str, tag: str, world_size: int) -> None:
    """Refuse to resume a checkpoint written by another number of ranks."""
    saved = marker(root, tag)["world_size"]
    if saved != world_size:
        raise RuntimeError(
            f"checkpoint {os.path.join(root, tag)} was written by {saved} rank(s) and this run has {world_size}: "
            "ZeRO optimizer partitions and the data order depend on the number of ranks; resume with "
            f"{saved} rank(s), or start a new run with init_from=<the run's exported final/ parts>"
        )


def marker(root: str, tag: str) -> dict:
    """What rank 0 wrote into checkpoint ``tag``'s COMPLETE marker: step, world size, and (since
    they are recorded) the ZeRO stage and each data source's digest."""
    with open(os.path.join(root, tag, COMPLETE)) as f:
        return json.load(f)


def resume_problems(root: str, tag: str, zero_stage: int, digests: dict[str, str]) -> tuple[list[str], list[str]]:
    """What a resume of checkpoint ``root/tag`` under ``zero_stage`` over data of ``digests`` cannot
    show in its config: (refusals, changes of the run's trajectory). DeepSpeed cannot load a
    checkpoint written under another ZeRO stage; data whose content changed makes the saved stream
    position point at other documents."""
    saved = marker(root, tag)
    refusals, changed = [], []
    stage = saved.get("zero_stage")
    if stage is not None and stage != zero_stage:
        refusals.append(f"checkpoint {os.path.join(root, tag)} was written under ZeRO stage {stage} and this run "
                        f"uses stage {zero_stage}: DeepSpeed stores each stage's partitions its own way; resume with "
                        f"--deepspeed zero{stage}, or start a new run from the parts (init_from=OUTPUT_DIR/final)")
    for name, digest in sorted(saved.get("data", {}).items()):
        if name in digests and digests[name] != digest:
            changed.append(f"data source {name}: its files changed since the checkpoint (content {digest} -> "
                           f"{digests[name]}), so the saved position would point at other documents")
    return refusals, changed


def saved_config(root: str, tag: str) -> dict | None:
    """The training config that wrote checkpoint ``tag`` (``TrainConfig.to_dict()``): its own
    copy, else the run's ``run_config.json`` next to the checkpoint root; None when neither exists."""
    for path, key in ((os.path.join(root, tag, CONFIG), None),
                      (os.path.join(os.path.dirname(os.path.normpath(root)), "run_config.json"), "train")):
        if os.path.isfile(path):
            with open(path) as f:
                data = json.load(f)
            return data[key] if key else data
    return None


def write_failure(err: BaseException, root: str, what: str) -> str:
    """One line on ``what`` (a checkpoint, exported parts) that could not be written under the
    checkpoint root ``root``, saying so when the disk is full."""
    try:
        free = shutil.disk_usage(root).free
    except OSError:
        free = None
    full = getattr(err, "errno", None) == errno.ENOSPC or "No space left" in str(err) or (
        free is not None and free < 64 * 2**20)
    cause = ("the disk is full (No space left on device" + (f", {free // 2**20} MiB free" if free is not None else "")
             + ")") if full else f"{type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''}"
    last = latest_tag(root)
    return (f"could not write {what}: {cause}. An incomplete checkpoint is ignored on resume; {'the last complete checkpoint is ' + os.path.join(root, last) if last else 'no checkpoint is complete'}"
            "; free space (or fix the cause) and continue with --resume auto")


LOCK_FILE = ".lock"
# What a run writes into its output directory (``overwrite`` removes exactly these)
RUN_OUTPUTS = ("checkpoints", "final", "tensorboard", "metrics.jsonl", "run_config.json")


def existing_run(output_dir: str) -> str | None:
    """A short description of the run outputs already in ``output_dir``, or None if there are none."""
    found = []
    tags = complete_tags(os.path.join(output_dir, "checkpoints"))
    if tags:
        found.append(f"checkpoints up to step {tag_step(tags[-1])}")
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


STATE_FILE = "trainer_state_rank{rank}.pt"
"""Each rank's trainer state in a checkpoint (step, data position, random generators)."""


class CheckpointWriteError(TrainingStopped):
    """This rank could not write its part of a checkpoint or the exported parts (a full disk, an
    I/O error); the message names what was written and what is left."""

    local = True
    """Raised on one rank only: the others learn of it when the launcher stops them."""


class Checkpoints:
    """A run's checkpoints under ``root``: each rank saves its engine shards and trainer state, rank 0
    the config and then the COMPLETE marker; a restore reads them back in the same order."""

    def __init__(self, root: str, rank: int, world_size: int, keep_last: int):
        self.root, self.rank, self.world_size, self.keep_last = root, rank, world_size, keep_last

    def save(self, step: int, state: dict, engine, config: dict, record: dict | None = None) -> tuple[str, list[str]]:
        """Write the checkpoint of ``step``; returns (its tag, the older checkpoints pruned on rank 0).
        Every rank must call it (the engine's save ends with a barrier). ``record``: what else the
        COMPLETE marker holds (the ZeRO stage, the data digests: what a resume depends on)."""
        tag = step_tag(step)
        path = os.path.join(self.root, tag)
        try:
            os.makedirs(path, exist_ok=True)
            torch.save(state, os.path.join(path, STATE_FILE.format(rank=self.rank)))
            engine.save(self.root, tag, {"step": step})  # ends with a barrier
            if self.rank == 0:
                with open(os.path.join(path, CONFIG), "w") as f:
                    json.dump(config, f, indent=2)
                mark_complete(self.root, tag, {"step": step, "world_size": self.world_size, **(record or {})})
        except (OSError, RuntimeError) as err:  # torch reports a failed write as a RuntimeError
            raise CheckpointWriteError(write_failure(err, self.root, f"checkpoint {path}")) from None
        removed = prune(self.root, self.keep_last) if self.rank == 0 else []
        return tag, removed

    def restore(self, root: str, tag: str, engine) -> dict:
        """Load the engine's shards of checkpoint ``root/tag`` and return this rank's trainer state."""
        check_world_size(root, tag, self.world_size)
        engine.load(root, tag)
        return torch.load(os.path.join(root, tag, STATE_FILE.format(rank=self.rank)), weights_only=False)

    def last_good(self) -> str:
        """Where the last complete checkpoint is, as a sentence's end."""
        tag = latest_tag(self.root)
        return f"the last checkpoint is {os.path.join(self.root, tag)}" if tag else "no checkpoint was saved"
