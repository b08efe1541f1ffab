"""Run N models on the same token batches and stream their activations to a store (or straight to training).

Batches are formed deterministically from the token source (batch k = sequences k*B .. k*B+B-1),
and under torchrun rank r takes batches r, r+W, r+2W, ...; the store records, per source, the next
batch each rank must run, so a resumed run recomputes exactly the batches it had not committed.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from jaxtyping import Float, Int
from torch import Tensor
from tqdm.auto import tqdm

from featalign import distributed
from featalign.activations.sources import TokenSource, as_source
from featalign.activations.store import (
    STORE_DTYPES,
    ActivationStore,
    IncompatibleStoreError,
    StoreError,
    StoreLayout,
    StoreWriter,
    merge_manifests,
)
from featalign.config import JsonConfig
from featalign.generation import pad_batch
from featalign.models import ModelGroup, ModelSpec
from featalign.models.hooks import capture, default_hook, resolve_hooks


@dataclass
class CacheConfig(JsonConfig):
    """How to cache. `hooks=None` picks the middle residual layer (`default_hook`)."""

    hooks: tuple[str, ...] | None = None
    n_tokens: int = 1_000_000  # rows in the store when done (all ranks, all sources)
    batch_size: int = 128  # sequences per forward pass
    context_size: int | None = None  # longer sequences are truncated; None: the model's n_ctx
    dtype: str = "float32"  # store dtype: float32 | bfloat16 | float16
    drop_bos: bool = True  # BOS rows are identical for every sequence (and huge-norm in real LMs)
    shard_mb: float = 64.0

    def __post_init__(self) -> None:
        """Sizes that would hang (batch 0), write an empty store (0 tokens) or silently mean another value
        (context 0 used to fall back to n_ctx) are refused here, before any model is loaded."""
        for name in ("n_tokens", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.context_size is not None and self.context_size < 1:
            raise ValueError(f"context_size must be >= 1 (or None for the model's n_ctx), got {self.context_size}")
        if not self.shard_mb > 0:
            raise ValueError(f"shard_mb must be > 0, got {self.shard_mb}")
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"dtype must be one of {sorted(STORE_DTYPES)}, got {self.dtype!r}")


def as_group(models: Any) -> ModelGroup:
    """Accept a ModelGroup, a list of ModelSpec or a {name: path} dict, so every entry point takes the same model
    arguments."""
    if isinstance(models, ModelGroup):
        return models
    if isinstance(models, dict):
        return ModelGroup.from_paths(models)
    if isinstance(models, (list, tuple)) and all(isinstance(m, ModelSpec) for m in models):
        return ModelGroup.load(models)
    raise TypeError("models must be a ModelGroup, a list of ModelSpec, or a {name: path} dict")


def token_batches(
    source: TokenSource, tokenizer, batch_size: int, context_size: int, start: int = 0, step: int = 1
) -> Iterator[tuple[int, Int[Tensor, "B T"], Int[Tensor, "B T"]]]:
    """(batch index, right-padded ids, attention mask) for batches start, start+step, ..."""
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    seqs: list[list[int]] = []
    k = 0
    for ids in source.sequences(tokenizer):
        seqs.append(ids[:context_size])
        if len(seqs) == batch_size:
            if k >= start and (k - start) % step == 0:
                yield (k, *pad_batch(seqs, pad, side="right"))
            seqs, k = [], k + 1
    if seqs and k >= start and (k - start) % step == 0:
        yield (k, *pad_batch(seqs, pad, side="right"))


def batch_rows(
    group: ModelGroup, tokens_BT: Tensor, mask_BT: Tensor, hooks: Sequence[str], drop_bos: bool
) -> Float[Tensor, "N M H D"]:
    """Rows of one batch: real tokens only (padding and, optionally, BOS left out), in (sequence, position) order."""
    keep_BT = mask_BT.bool()
    bos = group.tokenizer.bos_token_id
    if drop_bos and bos is not None:
        keep_BT[:, 0] &= tokens_BT[:, 0] != bos
    per_model = []
    for m in group.models:
        dev = m.cfg.device
        acts = capture(m, tokens_BT.to(dev), mask_BT.to(dev), hooks)
        per_model.append(torch.stack([acts[h][keep_BT.to(dev)].float().cpu() for h in hooks], dim=1))
    return torch.stack(per_model, dim=1)


def store_layout(group: ModelGroup, cfg: CacheConfig) -> StoreLayout:
    """The store's layout for `group` under `cfg`: hooks resolved on every model (default: the middle layer),
    their one width, and the context size (`cfg.context_size`, else the shortest model context)."""
    hooks = list(cfg.hooks or [default_hook(group.models[0].cfg.n_layers)])
    for m in group.models:
        resolve_hooks(m, hooks)
    d = next(iter(group.check_widths(hooks).values()))
    context = cfg.context_size or int(min(m.cfg.n_ctx for m in group.models))
    return StoreLayout([s.to_dict() for s in group.specs], hooks, d, cfg.dtype, cfg.drop_bos, context)


def check_one_source(w: StoreWriter, fp: str, out_dir: str | Path) -> None:
    """Refuse to append rows of source `fp` to a store that holds rows of other sources only."""
    others = [k for k in w.part["progress"] if k != fp]
    if others and fp not in w.part["progress"] and w.rows:
        raise IncompatibleStoreError(
            f"{out_dir} already holds {w.rows} rows from another token source ({', '.join(others)}; this run's is "
            f"{fp}: another --seed, --domains, --text-file or --dataset?). Appending would mix two sources in one "
            "store: cache into a new --out, or pass --allow-new-source (allow_new_source=True) to append on purpose"
        )


def cache_activations(
    models: Any,
    token_source: Any = None,
    hooks: Sequence[str] | None = None,
    out_dir: str | Path = "activations",
    n_tokens: int | None = None,
    config: CacheConfig | None = None,
    *,
    rank: int | None = None,
    world_size: int | None = None,
    on_commit: Callable[[dict], None] | None = None,
    progress: bool = True,
    allow_new_source: bool = False,
) -> ActivationStore | None:
    """Cache activations of every model in `models` at `hooks` on `token_source` into `out_dir`.

    Resumes where an interrupted run with the same source stopped, appends to a compatible store
    (refuses an incompatible one), and stops when the store holds `n_tokens` rows. A store that holds
    rows of another token source (another seed, domains or text) is refused unless `allow_new_source`,
    so two sources are never mixed by accident. The shards appended to are verified against their
    checksums first. Under torchrun each rank writes its own shards and rank 0 merges the manifests.
    Returns the store (None on ranks other than 0 under torchrun).
    """
    cfg = config or CacheConfig()
    overrides = {
        "hooks": None if hooks is None else tuple(hooks),
        "n_tokens": None if n_tokens is None else int(n_tokens),
    }
    cfg = CacheConfig.from_dict({**cfg.to_dict(), **{k: v for k, v in overrides.items() if v is not None}})
    group = as_group(models)
    source = as_source(token_source)
    layout = store_layout(group, cfg)
    hooks, context = list(layout.hooks), layout.context_size
    where = distributed.current(rank, world_size)
    rank, world = where.rank, where.world_size
    target = cfg.n_tokens // world + (rank < cfg.n_tokens % world)
    fp = source.fingerprint()

    with StoreWriter(out_dir, layout, rank, world, cfg.shard_mb, on_commit) as w:
        if not allow_new_source:
            check_one_source(w, fp, out_dir)
        start = w.next_batch(fp)
        next_batch = start
        bar = tqdm(
            total=target,
            initial=min(w.rows, target),
            unit="tok",
            unit_scale=True,
            desc=f"caching {len(group)} models" + (f" (rank {rank})" if world > 1 else ""),
            disable=not progress,
        )
        for k, ids, mask in token_batches(source, group.tokenizer, cfg.batch_size, context, start, world):
            if w.rows >= target:
                break
            rows = batch_rows(group, ids, mask, hooks, cfg.drop_bos)[: target - w.rows]
            w.add(rows, k, fp)
            bar.update(rows.shape[0])
            next_batch = k + world
        else:
            if w.rows == 0:
                raise StoreError(
                    f"the token source gave no tokens to cache (rank {rank}): pass a source with text "
                    "(a non-empty --text-file / dataset); nothing was written"
                )
            if w.rows < target:
                warnings.warn(
                    f"token source ran out after {w.rows} rows of the {target} asked (rank {rank})", stacklevel=2
                )
        w.commit(next_batch, fp)
        bar.close()

    if world > 1 and torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()
    if rank == 0:
        if world > 1:
            merge_manifests(out_dir)
        return ActivationStore(Path(out_dir))
    return None


class StreamingActivations:
    """Shuffled float32 `[B, M, H, D]` batches straight from the models, no store (for small runs).

    Rows pass through a shuffle buffer of `buffer_rows`; the stream is deterministic for a seed and
    `load_state_dict` resumes by replaying (it recomputes the skipped forwards).
    """

    def __init__(
        self,
        models: Any,
        token_source: Any = None,
        hooks: Sequence[str] | None = None,
        batch_size: int = 1024,
        seed: int = 0,
        buffer_rows: int = 65_536,
        config: CacheConfig | None = None,
    ):
        self.group, self.source = as_group(models), as_source(token_source)
        self.cfg = config or CacheConfig()
        m0 = self.group.models[0]
        self.hooks = tuple(hooks or self.cfg.hooks or [default_hook(m0.cfg.n_layers)])
        for m in self.group.models:
            resolve_hooks(m, self.hooks)
        self.group.check_widths(self.hooks)
        self.context = self.cfg.context_size or int(m0.cfg.n_ctx)
        self.batch_size, self.seed, self.buffer_rows = batch_size, seed, max(buffer_rows, batch_size)
        self.pos = 0
        self._it: Iterator[Tensor] | None = None

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.group.names)

    def norm_scales(self) -> None:
        return None

    def _stream(self) -> Iterator[Tensor]:
        g = torch.Generator().manual_seed(self.seed)
        buf: Tensor | None = None
        for _, ids, mask in token_batches(self.source, self.group.tokenizer, self.cfg.batch_size, self.context):
            rows = batch_rows(self.group, ids, mask, self.hooks, self.cfg.drop_bos)
            buf = rows if buf is None else torch.cat([buf, rows])
            if buf.shape[0] >= self.buffer_rows:
                buf = buf[torch.randperm(buf.shape[0], generator=g)]
                while buf.shape[0] >= self.buffer_rows // 2 + self.batch_size:
                    yield buf[: self.batch_size]
                    buf = buf[self.batch_size :]
        if buf is not None:  # source exhausted: drain
            buf = buf[torch.randperm(buf.shape[0], generator=g)]
            while buf.shape[0] >= self.batch_size:
                yield buf[: self.batch_size]
                buf = buf[self.batch_size :]

    def __iter__(self) -> StreamingActivations:
        return self

    def __next__(self) -> Float[Tensor, "B M H D"]:
        if self._it is None:
            self._it = self._stream()
            for _ in range(self.pos):
                next(self._it)
        self.pos += 1
        return next(self._it).contiguous()

    def state_dict(self) -> dict[str, Any]:
        return {"pos": self.pos, "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.pos, self.seed, self._it = int(state["pos"]), int(state["seed"]), None
