"""Stop requests of a training rank: SIGTERM, SIGINT, and the loss of the launcher.

A signal does not stop a rank where it stands (a rank killed inside a step or a collective
loses the step and can hang the others); it records a request that the trainer reads at the
next step boundary, where all ranks agree, save a checkpoint and exit together.

The launcher matters because ``deepspeed`` (the runner) does not pass SIGTERM on: killing it
leaves its ``deepspeed.launcher.launch`` child and the ranks running. Each rank therefore
watches the deepspeed processes above it and, when one is gone, asks to stop in the same way.
The launch process itself gives ranks 30 s between its SIGTERM and a SIGKILL: a step longer
than that is lost, and the run resumes from its last checkpoint.
"""

from __future__ import annotations

import os
import signal
import threading

import psutil

# What a rank's exit status says about why it stopped: 128 + the signal, as a shell reports it
LAUNCHER_GONE = 1


def _gone(process: psutil.Process) -> bool:
    """Exited (a zombie that its parent has not reaped yet counts as exited)."""
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.Error:
        return True


def _deepspeed_ancestors() -> list[psutil.Process]:
    """The deepspeed launch process and runner above this rank (none when run without them)."""
    found = []
    try:
        process = psutil.Process().parent()
        for _ in range(2):
            if process is None or not any("deepspeed" in part for part in process.cmdline()):
                break
            found.append(process)
            process = process.parent()
    except psutil.Error:
        pass
    return found


class StopRequest:
    """Turns SIGTERM/SIGINT (and a vanished launcher) into ``code``: 0 while nothing asked to stop,
    else the signal number (``LAUNCHER_GONE`` for the launcher). ``install`` / ``uninstall`` around
    the step loop; signals outside it keep their usual effect (nothing is lost before training)."""

    def __init__(self, poll_seconds: float = 1.0):
        self.code = 0
        self._previous: dict[int, object] = {}
        self._poll = poll_seconds
        self._done = threading.Event()
        self._watcher: threading.Thread | None = None

    def _handle(self, signum, frame) -> None:
        self.code = self.code or signum

    def install(self) -> "StopRequest":
        for sig in (signal.SIGTERM, signal.SIGINT):
            self._previous[sig] = signal.signal(sig, self._handle)
        ancestors = _deepspeed_ancestors()
        if ancestors:
            self._done.clear()
            self._watcher = threading.Thread(target=self._watch, args=(ancestors,), daemon=True,
                                             name="uio-ds-launcher-watch")
            self._watcher.start()
        return self

    def _watch(self, ancestors: list[psutil.Process]) -> None:
        parent = os.getppid()
        while not self._done.wait(self._poll):
            if os.getppid() != parent or any(_gone(p) for p in ancestors):
                self.code = self.code or LAUNCHER_GONE
                return

    def uninstall(self) -> None:
        self._done.set()
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    @staticmethod
    def describe(code: int) -> str:
        if code == LAUNCHER_GONE:
            return "the deepspeed launcher exited"
        return signal.Signals(code).name

    @staticmethod
    def exit_status(code: int) -> int:
        return 1 if code == LAUNCHER_GONE else 128 + code


class TrainingStopped(RuntimeError):
    """The run stopped itself (non-finite steps, nothing trained, non-finite parts): nothing exported."""

    status = 1
    """The process's exit status."""
    local = False
    """True when only this rank stopped (the others did not agree to)."""


class TrainingInterrupted(TrainingStopped):
    """A signal or the launcher's exit stopped the run at a step boundary, after a checkpoint."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status
