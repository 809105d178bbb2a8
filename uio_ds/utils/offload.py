"""Activation offload: tensors that autograd saves for backward are kept off the accelerator.

``offload_saved_tensors(host)`` is ``torch.autograd.graph.save_on_cpu`` with two differences:
weights and broadcast views stay where they are, and the place offloaded copies go is an
argument (the CPU by default; a tool that runs the step on CPU tensors standing for the
accelerator, like the memory planner, points it elsewhere to tell the two apart).
"""

from __future__ import annotations

from functools import partial

import torch

CPU = torch.device("cpu")


def _resident(t: torch.Tensor) -> bool:
    """Tensors not worth moving: weights (and views of them), which stay on the device anyway,
    and broadcast views (a frozen weight expanded for a batched matmul), whose copy would
    materialise every repetition."""
    return (isinstance(t, torch.nn.Parameter) or isinstance(t._base, torch.nn.Parameter)
            or t.untyped_storage().nbytes() < t.numel() * t.element_size())


def pack_saved(t: torch.Tensor, host: torch.device = CPU):
    """Saved-tensor pack hook: a copy of ``t`` on ``host`` (or ``t`` itself when it is resident)."""
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


def offload_saved_tensors(host: str | torch.device = CPU):
    """A context under which tensors saved for backward are copied to ``host`` and copied back
    when backward needs them (pinned host memory when CUDA is present). Unlike torch's
    ``save_on_cpu``, weights and broadcast views stay where they are (``_resident``)."""
    return torch.autograd.graph.saved_tensors_hooks(partial(pack_saved, host=torch.device(host)), unpack_saved)
