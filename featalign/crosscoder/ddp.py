"""Data parallelism for the crosscoder trainer (`torchrun --nproc_per_node=N`): gloo on CPU, nccl on GPU.

Every rank holds the full crosscoder and a slice of the global batch; gradients are averaged with
one flat all-reduce, so the update equals the single-process update on the global batch (the loss
is a mean over tokens). BatchTopK selects top-k·B_local per rank (documented in docs/crosscoder.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def init_distributed() -> DistInfo:
    """Join the process group torchrun set up (RANK/WORLD_SIZE in the environment); no-op otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


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


def average_gradients(params: list[torch.Tensor], world_size: int) -> None:
    """One flat all-reduce of every gradient, then divide by the world size."""
    grads = [p.grad for p in params if p.grad is not None]
    flat = _flatten_dense_tensors(grads)
    dist.all_reduce(flat)
    flat /= world_size
    for g, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        g.copy_(synced)


def all_reduce(t: torch.Tensor, op: str = "sum") -> torch.Tensor:
    ops = {"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX, "min": dist.ReduceOp.MIN}
    dist.all_reduce(t, op=ops[op])
    return t
