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


def _resident(t: torch.Tensor) -> bool:
    """Tensors not worth moving: weights (and views of them), which stay on the device anyway,
    and broadcast views (a frozen weight expanded for a batched matmul), whose copy would
    materialise every repetition."""
    return (isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)
            or t.untyped_storage().nbytes() < t.numel() * t.element_size())


def pack_saved(t: torch.Tensor):
    """Saved-tensor pack hook: a host copy of ``t`` (or ``t`` itself when it is resident)."""
    host = _HOST[-1]
    if t.device == host or _resident(t):
        return t.device, t
    pin = torch.cuda.is_available() and host.type == "cpu"
    copy = torch.empty(t.size(), dtype=t.dtype, layout=t.layout, device=host, pin_memory=pin)
    copy.copy_(t)
    return t.device, copy


def unpack_saved(packed) -> torch.Tensor:
    """Saved-tensor unpack hook: the tensor back on the device it was saved from."""
    device, t = packed
    return t if t.device == device else t.to(device, non_blocking=t.is_pinned())


def offload_saved_tensors():
    """A context under which tensors saved for backward are copied to the host and copied back
    when backward needs it (pinned host memory when CUDA is present). Unlike torch's
    ``save_on_cpu``, weights and broadcast views stay where they are (``_resident``)."""
    return torch.autograd.graph.saved_tensors_hooks(pack_saved, unpack_saved)
