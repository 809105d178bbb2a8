"""Activation offload: tensors that autograd saves for backward are kept off the accelerator.

``offload_saved_tensors()`` is ``torch.autograd.graph.save_on_cpu`` with one difference: the
place offloaded tensors go is a setting (``host_device``) rather than always "cpu". Training
never changes it. The memory planner (``uio_ds.memory_plan``) runs the training step on fake
tensors on the CPU standing for the accelerator, and points offloaded copies at the meta device,
so that what stays on the accelerator and what was offloaded can be told apart.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch

_HOST = [torch.device("cpu")]


@contextlib.contextmanager
def host_device(device: str | torch.device) -> Iterator[None]:
    """Send tensors offloaded inside this block to ``device`` instead of the CPU."""
    _HOST.append(torch.device(device))
    try:
        yield
    finally:
        _HOST.pop()


def offload_saved_tensors():
    """A context under which every tensor saved for backward is copied to the host and copied
    back when backward needs it (pinned host memory when CUDA is present)."""
    host = _HOST[-1]
    pin = torch.cuda.is_available() and host.type == "cpu"

    def pack(t: torch.Tensor):
        if t.device == host:
            return t.device, t
        copy = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, device=host, pin_memory=pin)
        copy.copy_(t)
        return t.device, copy

    def unpack(packed):
        device, t = packed
        return t if t.device == device else t.to(device, non_blocking=pin)

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)
