"""Distributed helpers. A single process never needs (or creates) a process group.

Launched by ``torchrun`` (``WORLD_SIZE``/``RANK``/``LOCAL_RANK`` in the environment),
:func:`init_distributed` starts NCCL on GPUs or gloo on CPU; otherwise it returns the
single-process context and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

__all__ = [
    "DistContext",
    "all_reduce_sum",
    "barrier",
    "broadcast_buffers",
    "cleanup_distributed",
    "init_distributed",
    "is_distributed",
]


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    #: whether init_distributed started the process group (and cleanup should end it)
    owns_group: bool = False
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def is_main(self) -> bool:
        """Global rank 0: the only process that writes files."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def _select_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            # a ValueError: the user's setting, not a run-time failure (CLI exit code 2)
            raise ValueError("device cuda requested (train.device / --device) but CUDA is not "
                             "available on this machine; use cpu (or auto)")
        return torch.device("cuda", local_rank)
    return torch.device(device)


def init_distributed(device: str = "auto") -> DistContext:
    """Start the process group when launched by torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _select_device(device, local_rank)
    owns = False
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not is_distributed():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            kwargs = {"device_id": dev} if dev.type == "cuda" else {}
            dist.init_process_group(backend=backend, **kwargs)
            owns = True
    return DistContext(rank=rank, local_rank=local_rank, world_size=world, owns_group=owns,
                       device=dev)


def cleanup_distributed(ctx: DistContext | None = None) -> None:
    """End the process group if ``ctx`` started it (or, without ``ctx``, if any)."""
    if is_distributed() and (ctx is None or ctx.owns_group):
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum ``t`` over ranks in place (identity without a process group)."""
    if is_distributed():
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm statistics, temperature) to every rank.

    DDP broadcasts them at the start of each forward, so after the last training step
    every rank still holds its own running statistics; evaluation and checkpoints need
    the replicas identical.
    """
    if is_distributed():
        for buf in module.buffers():
            dist.broadcast(buf, src)
