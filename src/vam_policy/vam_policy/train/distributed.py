"""Process-group set-up for `torchrun`: one process per device, gloo on CPU, nccl on GPU.

Without torchrun's environment (WORLD_SIZE unset or 1) everything runs in this process and
the collective helpers are no-ops, so single-process code paths need no special cases.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as torch_dist

# Rank 0 may build a large latent cache or write a 4 GB checkpoint while the others wait at a
# barrier: the default 30 min would kill long preparations.
PROCESS_GROUP_TIMEOUT = timedelta(hours=4)


@dataclass(frozen=True)
class Dist:
    """This process's place in the job and its device."""

    rank: int
    world: int
    local_rank: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that logs, validates and writes checkpoints."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            torch_dist.barrier()

    def sum(self, value: float) -> float:
        """Sum of `value` over all processes."""
        if self.world == 1:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        torch_dist.all_reduce(tensor)
        return float(tensor.item())

    def mean(self, value: float) -> float:
        return self.sum(value) / self.world

    def close(self) -> None:
        if self.owns_group and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(name)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", local_rank)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: expected a CUDA device, but CUDA is not available")
    return device


def init_distributed(device: str = "auto") -> Dist:
    """Join the torchrun job described by RANK / WORLD_SIZE / LOCAL_RANK, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    dev = _device(device, local_rank)
    owns = False
    if world > 1:
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        if not torch_dist.is_initialized():
            backend = "nccl" if dev.type == "cuda" else "gloo"
            torch_dist.init_process_group(backend, timeout=PROCESS_GROUP_TIMEOUT)
            owns = True
    return Dist(rank=rank, world=world, local_rank=local_rank, device=dev, owns_group=owns)
