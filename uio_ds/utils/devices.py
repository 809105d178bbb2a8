"""Device names as users give them (``--device auto``, ``cpu``, ``cuda:1``), checked against this
machine before any weights are read."""

from __future__ import annotations

import os

import torch


def default_device() -> torch.device:
    """Where a model runs when no device is named: this process's CUDA device when there is one
    (``LOCAL_RANK``'s under a launcher), the CPU otherwise."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> :func:`default_device`; any other name as ``torch.device`` reads it, checked
    here so a device this machine lacks fails before the weights are read."""
    if device == "auto":
        return default_device()
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise ValueError(f"device {device!r} is not a device name ({err}): use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {str(device)!r}: this machine has no CUDA device (torch "
                             f"{torch.__version__} sees none); use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device
