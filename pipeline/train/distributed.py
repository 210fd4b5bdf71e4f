"""Where training runs: one process, or one rank of ``torchrun --nproc_per_node N`` (DDP)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch

from pipeline.errors import TrainError


@dataclass
class Dist:
    """This process's rank, the world size, its device, and whether it set up the process group."""

    rank: int = 0
    world: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    initialized_here: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_choice: str) -> Dist:
    """DDP when launched by torchrun (RANK/WORLD_SIZE set): nccl on CUDA, gloo on CPU."""
    use_cuda = device_choice == "cuda" or (device_choice == "auto" and torch.cuda.is_available())
    if device_choice == "cuda" and not torch.cuda.is_available():
        raise TrainError("config key 'train.device': cuda requested but no GPU is visible")
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist(device=torch.device("cuda" if use_cuda else "cpu"))
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    device = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    here = False
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world)
        here = True
    return Dist(rank, world, device, here)


def barrier(d: Dist) -> None:
    if d.world > 1 or d.initialized_here:
        torch.distributed.barrier()
