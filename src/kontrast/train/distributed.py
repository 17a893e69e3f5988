"""Process-group setup from torchrun's environment and explicit gradient averaging.

``torchrun --nproc-per-node N -m kontrast.train ...`` sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the
rendezvous address; :func:`init_distributed` reads them and starts ``gloo`` on CPU or ``nccl`` on GPU.
Gradients are averaged with one flat ``all_reduce`` per optimiser step (what DDP does, without its
wrapper, so that gradient accumulation and a cached text tower need no special handling).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: str = "cpu"
    backend: str | None = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group if torchrun launched us (``WORLD_SIZE`` > 1); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        device = f"cuda:{local_rank}" if world > 1 else device
        if torch.cuda.is_available():
            torch.cuda.set_device(torch.device(device))
    if world <= 1:
        return DistInfo(device=device)
    backend = "nccl" if device.startswith("cuda") else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, rank=rank, world_size=world)
    return DistInfo(rank, world, local_rank, device, backend)


def average_gradients(params: list[torch.nn.Parameter], world_size: int) -> None:
    """Average ``.grad`` over ranks with one flattened ``all_reduce`` (a no-op for one process)."""
    if world_size <= 1:
        return
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return
    flat = torch.cat([g.reshape(-1) for g in grads])  # every grad -> one [total] vector
    dist.all_reduce(flat, op=dist.ReduceOp.SUM)
    flat.div_(world_size)
    offset = 0
    for g in grads:
        n = g.numel()
        g.copy_(flat[offset: offset + n].view_as(g))  # [n] -> grad's shape
        offset += n


def barrier(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.barrier()


def broadcast_object(obj, info: DistInfo):
    """Rank 0's Python object on every rank."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def cleanup(info: DistInfo) -> None:
    if info.distributed and dist.is_initialized():
        dist.destroy_process_group()
