"""Data-parallel training on torch.distributed: gloo on CPU, NCCL on CUDA.

Launched by ``torchrun --nproc_per_node=N -m bnlab train ...`` (which sets RANK, WORLD_SIZE,
MASTER_ADDR and MASTER_PORT), or inside an already initialized process group. Every rank walks
the same seeded permutation and takes its share of each *global* batch (``torch.tensor_split``:
shares differ by at most one example), so the global batch is the single-process batch. Each
rank's loss is its sum of per-example losses divided by the global batch size, times the world
size: DDP's gradient averaging then yields exactly the gradient of the global mean loss. With
``--sync-bn`` the BatchNorm layers see the global batch too, and the run reproduces the
single-process run up to float rounding. Rank 0 alone logs, evaluates and writes the run
directory. Collectives time out after ``timeout`` seconds, so a rank that dies makes the others
fail with an error instead of hanging.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["Dist", "setup"]


@dataclass
class Dist:
    """This process's place in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    group: Any = None
    owns_group: bool = False  # initialized here, so destroyed here

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        """Element-wise sum over ranks (float64)."""
        if not self.active:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.SUM, group=self.group)
        return t.tolist()

    def broadcast(self, value: float, device: torch.device) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64, device=device)
        dist.broadcast(t, src=0, group=self.group)
        return float(t)

    def barrier(self) -> None:
        if self.active:
            dist.barrier(group=self.group)

    def close(self) -> None:
        if self.owns_group and dist.is_initialized():
            dist.destroy_process_group()


def setup(device: torch.device, timeout: float) -> Dist:
    """Join the process group torchrun describes, reuse an initialized one, or run alone."""
    if dist.is_available() and dist.is_initialized():
        return Dist(dist.get_rank(), dist.get_world_size())
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout))
    return Dist(dist.get_rank(), dist.get_world_size(), owns_group=True)
