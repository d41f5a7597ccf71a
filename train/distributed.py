"""Multi-process training under torchrun: DDP with NCCL on GPUs, gloo on CPUs.

Without torchrun's environment everything here is a no-op, so one code path serves both.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def init(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (if any); each rank gets its own GPU."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World(), device
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return world, device


def all_reduce_sum(tensor: torch.Tensor, world: World, device: torch.device) -> torch.Tensor:
    """Sum over ranks (NCCL needs the tensor on the rank's GPU)."""
    if not world.distributed:
        return tensor
    t = tensor.to(device if device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.to(tensor.device)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
