"""Checkpoint directory protocol: complete markers, an atomic ``latest`` pointer, keep-last-N.

A checkpoint ``<root>/step00000042/`` is written by every rank (DeepSpeed's sharded files).
Only after all ranks have finished does rank 0 write ``COMPLETE`` inside it and then
replace ``<root>/latest`` atomically (write a temporary file, ``os.replace``). A save that
is interrupted at any point therefore leaves ``latest`` naming the previous complete
checkpoint; incomplete directories are ignored on resume and deleted by the next prune.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import time

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
        import torch

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
    with open(os.path.join(root, tag, COMPLETE)) as f:
        saved = json.load(f)["world_size"]
    if saved != world_size:
        raise RuntimeError(
            f"checkpoint {os.path.join(root, tag)} was written by {saved} rank(s) and this run has {world_size}: "
            "ZeRO optimizer partitions and the data order depend on the number of ranks; resume with "
            f"{saved} rank(s), or start a new run with init_from=<the run's exported final/ parts>"
        )


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
