"""``uio-ds launch ARGS``: DeepSpeed's runner (``deepspeed ARGS``, the same arguments), quiet on Ctrl-C.

Ctrl-C reaches every process of the run. The ranks stop at the next step boundary and save
(``uio_ds.train.stopping``) and say so in one line; DeepSpeed's launch process ends them. The
``deepspeed`` runner itself has no handler and prints a ``KeyboardInterrupt`` traceback over
that line. Here the runner starts with SIGINT ignored (inherited across exec; the launch process
and the ranks install handlers of their own), and this process waits for it, so a stopped run
ends with the ranks' line alone. Exit status: the runner's.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.strip() + "\n\nexample: uio-ds launch --num_gpus 2 launch/train.py --deepspeed zero2 --config tiny")
        return 0 if argv else 2
    runner = shutil.which("deepspeed") or os.path.join(os.path.dirname(sys.executable), "deepspeed")
    if not os.path.isfile(runner):
        print("error: the deepspeed runner is not installed here (pip install deepspeed)", file=sys.stderr)
        return 2
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)  # the runner inherits it; so does this wait
    try:
        return subprocess.run([runner, *argv]).returncode
    finally:
        signal.signal(signal.SIGINT, previous)
