"""Shuffled float32 batches `[B, n_models, n_hooks, d]` from a store, with bounded memory.

Epoch e's row order is fixed by (seed, e): shards are permuted, taken `buffer_shards` at a time,
and the rows of each group are permuted; batches are consecutive slices of that order (a batch may
straddle two groups). So a position (epoch, batch) names the same rows on every run, resuming only
loads the group that holds it, and at most two groups of shards are in memory.

The loader satisfies the crosscoder's `ActivationSource` protocol (featalign.crosscoder.data):
`__next__`, `state_dict`/`load_state_dict`, `models`, `hooks`, `norm_scales()`, and under DDP each
rank takes its slice of the same global batch.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from featalign.activations.store import ActivationStore


def _gen(*key: int) -> torch.Generator:
    seed = 0
    for k in key:
        seed = (seed * 1_000_003 + int(k)) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class ActivationLoader:
    """Endless shuffled float32 `[B, M, H, D]` batches from a store, resumable exactly through
    `state_dict()`, with memory bounded by `buffer_shards` (see the module docstring); it is the
    crosscoder trainer's `ActivationSource`, and under DDP each rank reads its slice of one global batch."""

    def __init__(
        self,
        store: ActivationStore,
        batch_size: int,
        seed: int = 0,
        buffer_shards: int = 4,
        drop_last: bool = True,
        normalize: bool = False,
        rank: int = 0,
        world_size: int = 1,
    ):
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} must be divisible by world size {world_size}")
        if drop_last and len(store) < batch_size:
            raise ValueError(
                f"the store holds {len(store)} rows, fewer than one batch of {batch_size}; cache more tokens"
            )
        self.store, self.batch_size, self.seed = store, batch_size, seed
        self.buffer_shards, self.drop_last, self.normalize = max(1, buffer_shards), drop_last, normalize
        self.rank, self.world_size = rank, world_size
        self._scales = store.norm_scales() if normalize else None
        self.epoch, self.pos = 0, 0
        self._it: Iterator[Tensor] | None = None

    # -- ActivationSource protocol --
    @property
    def models(self) -> tuple[str, ...]:
        return self.store.models

    @property
    def hooks(self) -> tuple[str, ...]:
        return self.store.hooks

    def norm_scales(self) -> Float[Tensor, "M H"]:
        return self.store.norm_scales()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos, "seed": self.seed, "batch_size": self.batch_size}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("batch_size", self.batch_size) != self.batch_size or state.get("seed", self.seed) != self.seed:
            raise ValueError(
                f"loader state was saved with batch_size/seed {state.get('batch_size')}/{state.get('seed')}, "
                f"this loader has {self.batch_size}/{self.seed}"
            )
        self.epoch, self.pos, self._it = int(state["epoch"]), int(state["pos"]), None

    def __iter__(self) -> ActivationLoader:
        return self

    def __next__(self) -> Float[Tensor, "B M H D"]:
        if self._it is None:
            self._it = self.epoch_batches(self.epoch, start_batch=self.pos)
        batch = next(self._it, None)
        if batch is None:
            self.epoch, self.pos = self.epoch + 1, 0
            self._it = self.epoch_batches(self.epoch)
            batch = next(self._it)
        self.pos += 1
        return batch

    # -- epoch order --
    def _groups(self, epoch: int) -> list[list[int]]:
        order = torch.randperm(len(self.store.shards), generator=_gen(self.seed, epoch)).tolist()
        return [order[i : i + self.buffer_shards] for i in range(0, len(order), self.buffer_shards)]

    def _load_group(self, epoch: int, g: int, shards: list[int]) -> Float[Tensor, "N M H D"]:
        x = torch.cat([self.store.shard_tensor(i) for i in shards])
        return x[torch.randperm(x.shape[0], generator=_gen(self.seed, epoch, g + 1))]

    def epoch_batches(self, epoch: int, start_batch: int = 0) -> Iterator[Float[Tensor, "B M H D"]]:
        """This rank's batches of one epoch, from `start_batch` on (every row once when drop_last=False)."""
        B = self.batch_size
        start = start_batch * B
        rows = self.store.offsets[1:] - self.store.offsets[:-1]
        pending: Tensor | None = None
        seen = 0  # rows of the epoch order before the current group
        for g, shards in enumerate(self._groups(epoch)):
            n_g = int(np.sum(rows[shards]))
            if seen + n_g <= start:
                seen += n_g
                continue
            x = self._load_group(epoch, g, shards)[max(start - seen, 0) :]
            seen += n_g
            pending = x if pending is None else torch.cat([pending, x])
            while pending.shape[0] >= B:
                yield self._local(pending[:B])
                pending = pending[B:]
        if pending is not None and pending.shape[0] and not self.drop_last:
            yield self._local(pending)

    def _local(self, batch: Tensor) -> Tensor:
        if self.world_size > 1:
            b = -(-batch.shape[0] // self.world_size)
            batch = batch[self.rank * b : (self.rank + 1) * b]
        if self._scales is not None:
            batch = batch * self._scales[None, :, :, None]
        return batch.contiguous()
