"""The process group as training uses it: a one-process group without a launcher, the device of
this rank, barriers and small all-reduces of Python numbers. ``torch.distributed`` only: the
group itself is joined by ``uio_ds.train.engine.init_distributed`` (DeepSpeed's)."""

from __future__ import annotations

import os

import torch
import torch.distributed as dist


def single_process_env() -> None:
    """Started without a launcher (``uio-ds train``): a process group of one, on a free local port."""
    if "RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ:
        return
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", LOCAL_WORLD_SIZE="1",
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def set_cpu_threads(world_size: int) -> None:
    """CPU ranks share the machine's cores; more threads than cores slows every rank down. Each
    rank takes its share unless OMP_NUM_THREADS says otherwise."""
    if torch.cuda.is_available() or "OMP_NUM_THREADS" in os.environ:
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))


def device() -> torch.device:
    if torch.cuda.is_available():
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    dist.barrier()


def shutdown() -> None:
    """Wait for every rank, then leave the process group: a rank that exits while another still
    talks to it can be killed in gloo's teardown ("terminate called without an active exception")."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def all_reduce_sum(values: list[float]) -> list[float]:
    """Sum of ``values`` over ranks (float64 on the communication device)."""
    t = torch.tensor(values, dtype=torch.float64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def all_reduce_max_float(value: float) -> float:
    t = torch.tensor([value], dtype=torch.float64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return float(t.item())


def all_reduce_min(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return int(t.item())


def all_reduce_max(value: int) -> int:
    t = torch.tensor([value], dtype=torch.int64, device=device())
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


PEER_LOST = ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted",
             "Socket Timeout", "timed out in call to")
"""What gloo and NCCL say when another rank of the group is gone."""


def peer_lost(err: BaseException) -> bool:
    """Whether ``err`` (raised inside a collective) means another rank is gone."""
    return any(marker in str(err) for marker in PEER_LOST)
