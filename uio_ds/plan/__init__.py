"""The memory planner: a training config's accelerator memory per rank, planned on fake tensors.

* ``cli``: ``uio-ds plan`` / ``python -m uio_ds.plan``;
* ``memory``: the planned step (the real strategy on fake tensors) and the ZeRO layouts.
"""

from uio_ds.plan.cli import main

__all__ = ["main"]
