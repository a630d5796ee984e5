"""Minimal distributed helpers for detection (torchrun environment, optional DDP).

TEMPORARY home: the training engine (branch ``engine``) owns these; detection switches
to its helpers when they are merged. Single-process runs never touch torch.distributed.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["all_gather_object", "barrier", "get_rank", "get_world_size", "init_distributed",
           "is_main_process"]


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def init_distributed(device: str) -> tuple[torch.device, bool]:
    """Start a process group when launched by torchrun (``WORLD_SIZE`` > 1).

    ``device`` is ``"auto"``, ``"cpu"``, ``"cuda"`` or ``"cuda:N"``; under torchrun each
    process takes ``cuda:LOCAL_RANK``. Returns ``(device, distributed)``.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if device.startswith("cuda"):
            torch.cuda.set_device(local_rank)
            dev = torch.device("cuda", local_rank)
            backend = "nccl"
        else:
            dev = torch.device(device)
            backend = "gloo"
        if not is_dist():
            dist.init_process_group(backend=backend)
        return dev, True
    return torch.device(device), False


def barrier() -> None:
    if is_dist():
        dist.barrier()


def all_gather_object(obj: Any) -> list[Any]:
    """Every process's ``obj``, in rank order (``[obj]`` without a process group)."""
    if not is_dist():
        return [obj]
    out: list[Any] = [None] * get_world_size()
    dist.all_gather_object(out, obj)
    return out
