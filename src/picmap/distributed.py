"""Data-parallel training on PyTorch's own engine: processes started by ``torchrun``.

``torchrun`` sets ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` for each process; picmap joins
them into one process group (NCCL on GPUs, gloo on CPUs) for the length of a fit. Every
process trains on its own share of each batch; the loss gathers all embeddings
(:mod:`picmap.loss`) and DistributedDataParallel averages the gradients.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence

import torch
import torch.distributed as dist


def launched_processes() -> int:
    """How many processes ``torchrun`` started together (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True in a process that ``torchrun`` started as one of several."""
    return launched_processes() > 1


def active() -> bool:
    """True while this process belongs to a process group (training takes the parallel path)."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """This process's rank: 0 for the process that writes files (also outside a group)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    """The number of processes training together (1 when not distributed)."""
    return dist.get_world_size() if active() else 1


def process_device(device: torch.device) -> torch.device:
    """The device of this process: with several processes on CUDA, the GPU ``LOCAL_RANK``."""
    if device.type == "cuda" and launched():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


@contextlib.contextmanager
def process_group(device: torch.device) -> Iterator[None]:
    """Join the processes ``torchrun`` started (if it did and no group exists yet).

    The group is left again at the end, unless the caller had set one up already.
    """
    if not launched() or (dist.is_available() and dist.is_initialized()):
        yield
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, device_id=_device_id(device))
    try:
        yield
    finally:
        dist.destroy_process_group()


def _device_id(device: torch.device) -> torch.device | None:
    return device if device.type == "cuda" else None


def agree(value: float, device: torch.device, op: str = "max") -> float:
    """The largest (``op="max"``), smallest or summed ``value`` over all processes."""
    return agree_all([value], device, op)[0]


def agree_all(values: Sequence[float], device: torch.device, op: str = "max") -> list[float]:
    """:func:`agree` for several values in one all-reduce (one wait for the device, not many)."""
    if not active():
        return [float(v) for v in values]
    ops = {"max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN, "sum": dist.ReduceOp.SUM}
    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor, ops[op])
    return tensor.tolist()


def same_everywhere(value: int, device: torch.device) -> int:
    """Rank 0's ``value``, in every process."""
    if not active():
        return value
    tensor = torch.tensor([value], dtype=torch.int64, device=device)
    dist.broadcast(tensor, src=0)
    return int(tensor)
