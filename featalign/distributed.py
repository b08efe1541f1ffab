"""Data parallelism under `torchrun --nproc_per_node=N`, for every featalign command that runs on several
ranks (the cache CLI and the crosscoder trainer): gloo on CPU, nccl on GPU.

The one place that reads torchrun's environment (`WORLD_SIZE`, `LOCAL_RANK`), joins and leaves the
process group, and picks a rank's device. For the crosscoder every rank holds the full model and a slice
of the global batch; gradients are averaged with one flat all-reduce, so the update equals the
single-process update on the global batch (the loss is a mean over tokens). BatchTopK selects top-k·B_local
per rank (documented in docs/crosscoder.md).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

__all__ = [
    "DistInfo",
    "all_reduce",
    "average_gradients",
    "cleanup",
    "current",
    "init_distributed",
    "torchrun_world_size",
]


@dataclass
class DistInfo:
    """Where this process sits: its rank, the world size and its rank on this node (its GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the rank that writes shared files and prints."""
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        """More than one rank, so collectives are needed."""
        return self.world_size > 1

    def rank_device(self, device: str) -> str:
        """One GPU per rank: a cuda device becomes `cuda:<local rank>` on several ranks; others are kept."""
        return f"cuda:{self.local_rank}" if self.enabled and device.startswith("cuda") else device


def torchrun_world_size() -> int:
    """The world size torchrun announces in the environment (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def current(rank: int | None = None, world_size: int | None = None) -> DistInfo:
    """Explicit `rank` and `world_size` when both are given, else the joined process group, else torchrun's
    environment (a process that has not joined yet), else a single process."""
    if rank is not None and world_size is not None:
        return DistInfo(rank, world_size, _local_rank())
    if dist.is_available() and dist.is_initialized():
        return DistInfo(dist.get_rank(), dist.get_world_size(), _local_rank())
    return DistInfo(int(os.environ.get("RANK", "0")), torchrun_world_size(), _local_rank())


def init_distributed(device: str = "cpu") -> DistInfo:
    """Join the process group torchrun set up, with nccl for a cuda `device` and gloo otherwise (nccl
    cannot reduce CPU tensors); a no-op outside torchrun. Leave it with `cleanup`."""
    if torchrun_world_size() <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.startswith("cuda") else "gloo")
    return current()


def cleanup(barrier: bool = True) -> None:
    """Leave the process group together: a rank that tears gloo down while its peer is still
    inside a collective or writing files can abort ("terminate called without an active exception").
    After an error, skip the barrier (the peer may never reach it)."""
    if dist.is_available() and dist.is_initialized():
        try:
            if barrier:
                dist.barrier()
        finally:
            dist.destroy_process_group()


def average_gradients(params: Sequence[torch.Tensor], world_size: int) -> None:
    """One flat all-reduce of every gradient, then divide by the world size."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    """All-reduce `t` in place across the ranks (`op`: sum, max or min) and return it."""
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t
