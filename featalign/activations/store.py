"""The on-disk activation store: raw numpy-memmap shards, per-shard stats, and a JSON manifest.

Layout of a store folder::

    manifest.json               merged view that readers use (shards of every rank, stats summary)
    manifest.r000.json          rank 0's own progress: its shards and where each token source stopped
    stats.npz                   merged mean / var / mean norm / normalisation scalar per (model, hook)
    shards/r000-000000.bin      rows [n, n_models, n_hooks, d] in the store dtype (bf16 as raw uint16)
    shards/r000-000000.stats.npz  that shard's count, mean, M2 and norm sum (Chan/Welford merge)

Every file is written atomically and the rank manifest is replaced only after its shard is on disk,
so a kill or a full disk at any moment leaves a valid store of whole shards; files not named by a
manifest are leftovers of an interrupted write and are deleted when a writer reopens the store.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import io
import os
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from featalign.activations.loader import ActivationLoader
from featalign.activations.normalization import norm_scales_from_mean, norm_sums
from featalign.config import JsonConfig
from featalign.io import atomic_write_bytes, atomic_write_json, provenance, read_json

FORMAT = "featalign.activations/1"
MANIFEST = "manifest.json"
STATS = "stats.npz"
STORE_DTYPES = {
    "float32": (torch.float32, np.float32),
    "float16": (torch.float16, np.float16),
    "bfloat16": (torch.bfloat16, np.uint16),
}  # numpy has no bf16: keep its raw bits


class StoreError(RuntimeError):
    """Base class of every activation-store error."""


class IncompatibleStoreError(StoreError):
    """The store on disk was written with other models, hooks, dtype or options."""


class ChecksumError(StoreError):
    """A shard's bytes do not match the checksum in the manifest."""


class StoreLockedError(StoreError):
    """Another writer holds the store's lock."""


class NonFiniteActivationError(FloatingPointError):
    """A model produced NaN or Inf activations."""


@dataclass
class StoreLayout(JsonConfig):
    """What every row of a store means; appending requires an identical layout."""

    models: list[dict]  # ModelSpec dicts, in row order
    hooks: list[str]
    d: int
    dtype: str = "float32"
    drop_bos: bool = True
    context_size: int = 512

    def __post_init__(self) -> None:
        if self.dtype not in STORE_DTYPES:
            raise ValueError(f"store dtype must be one of {sorted(STORE_DTYPES)}, got {self.dtype!r}")
        self.models = [dict(m) for m in self.models]
        self.hooks = list(self.hooks)

    @property
    def model_names(self) -> list[str]:
        return [m["name"] for m in self.models]

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return (len(self.models), len(self.hooks), self.d)

    @property
    def row_bytes(self) -> int:
        return int(np.prod(self.row_shape)) * np.dtype(STORE_DTYPES[self.dtype][1]).itemsize


# --- streaming statistics -------------------------------------------------------------------------


@dataclass
class Moments:
    """Count, mean, M2 (sum of squared deviations) and norm sum per (model, hook): merged exactly
    across batches, shards and ranks with Chan et al.'s parallel Welford update."""

    count: int
    mean_MHD: np.ndarray
    m2_MHD: np.ndarray
    norm_sum_MH: np.ndarray

    @classmethod
    def empty(cls, shape: tuple[int, int, int]) -> Moments:
        return cls(0, np.zeros(shape), np.zeros(shape), np.zeros(shape[:2]))

    @classmethod
    def of(cls, x_NMHD: Tensor) -> Moments:
        x = x_NMHD.double()
        mean = x.mean(0)
        return cls(x.shape[0], mean.numpy(), ((x - mean) ** 2).sum(0).numpy(), norm_sums(x).numpy())

    def merge(self, o: Moments) -> Moments:
        if o.count == 0:
            return self
        if self.count == 0:
            return o
        n = self.count + o.count
        delta = o.mean_MHD - self.mean_MHD
        return Moments(
            n,
            self.mean_MHD + delta * (o.count / n),
            self.m2_MHD + o.m2_MHD + delta**2 * (self.count * o.count / n),
            self.norm_sum_MH + o.norm_sum_MH,
        )

    @property
    def var_MHD(self) -> np.ndarray:
        return self.m2_MHD / max(self.count, 1)

    @property
    def mean_norm_MH(self) -> np.ndarray:
        return self.norm_sum_MH / max(self.count, 1)

    def norm_scalar_MH(self) -> np.ndarray:
        """sqrt(d) / E||x|| (`norm_scales_from_mean`): multiplying by it gives every (model, hook) mean norm sqrt(d)."""
        return norm_scales_from_mean(torch.from_numpy(self.mean_norm_MH), self.mean_MHD.shape[-1]).numpy()

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(
            buf,
            count=np.int64(self.count),
            mean=self.mean_MHD,
            m2=self.m2_MHD,
            norm_sum=self.norm_sum_MH,
            var=self.var_MHD,
            mean_norm=self.mean_norm_MH,
            norm_scalar=self.norm_scalar_MH(),
        )
        return buf.getvalue()

    @classmethod
    def from_file(cls, path: Path) -> Moments:
        with np.load(path) as z:
            return cls(int(z["count"]), z["mean"], z["m2"], z["norm_sum"])


# --- helpers --------------------------------------------------------------------------------------


def sha256_file(path: Path, chunk: int = 1 << 24) -> str:
    """Streaming SHA-256 of a shard, recorded in the manifest so a corrupted shard is detected on read."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while b := f.read(chunk):
            h.update(b)
    return h.hexdigest()


def verify_shard(root: Path, entry: dict) -> None:
    """Refuse a shard whose bytes do not match the SHA-256 its manifest entry recorded, naming the file."""
    got = sha256_file(root / entry["file"])
    if got != entry["sha256"]:
        raise ChecksumError(
            f"shard {entry['file']} of {root} is corrupted (sha256 {got[:12]}… != manifest {entry['sha256'][:12]}…); "
            "delete the store and re-cache, or restore the file from a backup"
        )


def rank_manifest_name(rank: int) -> str:
    """File name of one rank's manifest (`manifest.rNNN.json`): each rank commits its own, rank 0 merges them."""
    return f"manifest.r{rank:03d}.json"


def to_store_array(x: Tensor, dtype: str) -> np.ndarray:
    """Numpy array to write to a shard; bfloat16 has no numpy dtype, so it is stored as its raw uint16 bits."""
    tdt, _ = STORE_DTYPES[dtype]
    y = x.to(tdt).contiguous()
    return y.view(torch.int16).numpy().view(np.uint16) if dtype == "bfloat16" else y.numpy()


def from_store_array(a: np.ndarray, dtype: str) -> Float[Tensor, ...]:
    """float32 tensor from a (memmapped) store array."""
    if dtype == "bfloat16":
        return torch.from_numpy(np.array(a, copy=True).view(np.int16)).view(torch.bfloat16).float()
    return torch.from_numpy(np.array(a, dtype=np.float32, copy=True))


def _layout_diff(a: StoreLayout, b: StoreLayout) -> str:
    return "; ".join(f"{k}: store has {x!r}, asked {y!r}" for k, (x, y) in a.diff(b).items())


# --- writer ---------------------------------------------------------------------------------------


class StoreWriter:
    """Appends rows of one rank to a store; commits whole shards at batch boundaries.

    Holds an exclusive lock (flock, released by the OS even on SIGKILL) on the rank's lock file,
    so two writers can never interleave shards of one rank.
    """

    def __init__(
        self,
        root: str | Path,
        layout: StoreLayout,
        rank: int = 0,
        world_size: int = 1,
        shard_mb: float = 64.0,
        on_commit: Callable[[dict], None] | None = None,
    ):
        self.root, self.layout, self.rank, self.world_size = Path(root), layout, rank, world_size
        self.shard_rows = max(1, int(shard_mb * 2**20) // layout.row_bytes)
        self.on_commit = on_commit
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "shards").mkdir(exist_ok=True)
        self._lock_fd: int | None = self._lock()  # None once closed
        try:
            self._check_compatible()
            self.part = self._load_part()
            self._remove_orphans()
            for entry in self.part["shards"]:  # never append to (or report as healthy) a corrupted store
                verify_shard(self.root, entry)
        except BaseException:
            self.close()
            raise
        self._buf: np.ndarray = np.empty((self.shard_rows, *layout.row_shape), STORE_DTYPES[layout.dtype][1])
        self._n = 0
        self._moments = Moments.empty(layout.row_shape)
        self._rank_moments = Moments.empty(layout.row_shape)  # of committed shards: merges stay O(1) per commit
        for s in self.part["shards"]:
            self._rank_moments = self._rank_moments.merge(Moments.from_file(self.root / s["stats_file"]))

    # -- opening --
    def _lock(self) -> int:
        path = self.root / f".lock.r{self.rank:03d}"
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = Path(path).read_text().strip() or "?"
            os.close(fd)
            raise StoreLockedError(
                f"{self.root} is being written by another process (pid {holder}, rank {self.rank}); wait for it to "
                "finish or stop it — two writers would interleave shards. Use another out_dir for a separate store."
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
        return fd

    def _check_compatible(self) -> None:
        for p in [self.root / MANIFEST, *sorted(self.root.glob("manifest.r*.json"))]:
            if p.exists():
                have = StoreLayout.from_dict(read_json(p)["layout"])
                if have != self.layout:
                    raise IncompatibleStoreError(
                        f"{self.root} holds a store with a different layout ({_layout_diff(have, self.layout)}). "
                        "Use another out_dir, or delete this store to start over."
                    )

    def _load_part(self) -> dict:
        p = self.root / rank_manifest_name(self.rank)
        if p.exists():
            return read_json(p)
        return {"format": FORMAT, "rank": self.rank, "layout": self.layout.to_dict(), "shards": [], "progress": {}}

    def _remove_orphans(self) -> None:
        """Shards of this rank not in its manifest are from an interrupted write: delete them."""
        listed = {f for s in self.part["shards"] for f in (s["file"], s["stats_file"])}
        pat = re.compile(rf"^\.?r{self.rank:03d}-\d+\.")
        for f in (self.root / "shards").iterdir():
            if pat.match(f.name) and f"shards/{f.name}" not in listed:
                f.unlink()

    # -- state --
    @property
    def rows(self) -> int:
        """Rows of this rank: committed plus buffered."""
        return sum(s["rows"] for s in self.part["shards"]) + self._n

    def next_batch(self, source_fp: str) -> int:
        """Global batch index this rank resumes at for `source_fp` (0 for a new source)."""
        prog = self.part["progress"].get(source_fp)
        if prog is None:
            return self.rank
        if prog["world_size"] != self.world_size:
            raise IncompatibleStoreError(
                f"{self.root}: this source was cached with {prog['world_size']} rank(s); resume it with the same "
                f"number of ranks (now {self.world_size}), or cache into another out_dir"
            )
        return int(prog["next_batch"])

    # -- writing --
    def add(self, rows_NMHD: Float[Tensor, "N M H D"], batch_idx: int, source_fp: str) -> None:
        """Buffer one batch's rows; commit the buffer first if they would not fit in the shard."""
        x = to_store_array(rows_NMHD, self.layout.dtype)
        stored = from_store_array(x, self.layout.dtype) if self.layout.dtype != "float32" else rows_NMHD.float()
        self._check_finite(stored, batch_idx)
        n = x.shape[0]
        if self._n and self._n + n > self.shard_rows:
            self.commit(next_batch=batch_idx, source_fp=source_fp)
        if n > self._buf.shape[0]:
            self._buf = np.empty((n, *self.layout.row_shape), self._buf.dtype)
        self._buf[self._n : self._n + n] = x
        self._n += n
        self._moments = self._moments.merge(Moments.of(stored))

    def _check_finite(self, x_NMHD: Tensor, batch_idx: int) -> None:
        bad_MH = (~torch.isfinite(x_NMHD)).any(-1).any(0) if x_NMHD.numel() else None
        if bad_MH is None or not bad_MH.any():
            return
        m, h = (int(i) for i in bad_MH.nonzero()[0])
        hint = (
            " (float16 overflows above 65504: use --dtype bfloat16 or float32)"
            if self.layout.dtype == "float16"
            else ""
        )
        raise NonFiniteActivationError(
            f"non-finite activations (NaN/Inf) from model {self.layout.model_names[m]!r} at hook "
            f"{self.layout.hooks[h]!r} in batch {batch_idx}{hint}; nothing from this batch was written and the "
            f"store at {self.root} is intact"
        )

    def commit(self, next_batch: int, source_fp: str) -> None:
        """Write the buffer as one shard, then the rank manifest (the commit point), then merge."""
        idx = len(self.part["shards"])
        name = f"shards/r{self.rank:03d}-{idx:06d}"
        if self._n:
            data = self._buf[: self._n].data.cast("B")
            stats = self._moments.to_bytes()
            try:
                atomic_write_bytes(self.root / f"{name}.bin", data)
                atomic_write_bytes(self.root / f"{name}.stats.npz", stats)
            except OSError as e:
                rows = sum(s["rows"] for s in self.part["shards"])
                raise OSError(
                    e.errno or errno.EIO,
                    f"writing shard {name}.bin failed ({e}). The store at {self.root} is intact up to its last "
                    f"shard ({rows} rows of rank {self.rank}); free disk space and re-run the same command to resume",
                ) from e
            entry = {
                "file": f"{name}.bin",
                "rows": self._n,
                "sha256": hashlib.sha256(data).hexdigest(),
                "stats_file": f"{name}.stats.npz",
                "stats_sha256": hashlib.sha256(stats).hexdigest(),
            }
            self.part["shards"].append(entry)
            self._rank_moments = self._rank_moments.merge(self._moments)
        else:
            entry = None
        self.part["progress"][source_fp] = {"next_batch": int(next_batch), "world_size": self.world_size}
        self.part["provenance"] = provenance()
        atomic_write_json(self.root / rank_manifest_name(self.rank), self.part)
        self._n, self._moments = 0, Moments.empty(self.layout.row_shape)
        if self.world_size == 1:
            merge_manifests(self.root, self._rank_moments)
        if entry is not None and self.on_commit is not None:
            self.on_commit(entry)

    def close(self) -> None:
        fd = getattr(self, "_lock_fd", None)  # absent when __init__ failed before taking the lock
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
            self._lock_fd = None

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def merge_manifests(root: str | Path, moments: Moments | None = None) -> dict:
    """Combine every rank manifest into `manifest.json` + `stats.npz` (run by rank 0 after a barrier).

    `moments`: the already-merged stats of all shards (a single writer passes its running total).
    """
    root = Path(root)
    parts = [read_json(p) for p in sorted(root.glob("manifest.r*.json"))]
    if not parts:
        raise StoreError(f"{root} has no rank manifests (manifest.rNNN.json); nothing was cached there yet")
    layout = StoreLayout.from_dict(parts[0]["layout"])
    for p in parts[1:]:
        other = StoreLayout.from_dict(p["layout"])
        if other != layout:
            raise IncompatibleStoreError(
                f"rank {p['rank']} of {root} has another layout: {_layout_diff(layout, other)}"
            )
    shards = [s for p in parts for s in p["shards"]]
    if moments is None or len(parts) > 1:
        moments = Moments.empty(layout.row_shape)
        for s in shards:
            moments = moments.merge(Moments.from_file(root / s["stats_file"]))
    stats = moments.to_bytes()
    atomic_write_bytes(root / STATS, stats)
    manifest = {
        "format": FORMAT,
        "layout": layout.to_dict(),
        "row_shape": list(layout.row_shape),
        "dtype": layout.dtype,
        "models": layout.model_names,
        "hooks": layout.hooks,
        "n_rows": int(sum(s["rows"] for s in shards)),
        "ranks": [p["rank"] for p in parts],
        "shards": shards,
        "stats_sha256": hashlib.sha256(stats).hexdigest(),
        "stats": {"mean_norm": moments.mean_norm_MH.tolist(), "norm_scalar": moments.norm_scalar_MH().tolist()},
        **provenance(),
    }
    atomic_write_json(root / MANIFEST, manifest)
    return manifest


# --- reader ---------------------------------------------------------------------------------------


@dataclass
class StoreStats:
    """Per-(model, hook) moments of the stored rows: count, mean, population variance, mean norm and the
    normalisation scalar sqrt(d) / E||x|| that the crosscoder uses."""

    count: int
    mean_MHD: Tensor
    var_MHD: Tensor
    mean_norm_MH: Tensor
    norm_scalar_MH: Tensor


@dataclass
class ActivationStore:
    """Read side of a store: memmapped shards, stats, and shuffled loaders."""

    root: Path
    verify: bool = True  # check each shard's sha256 the first time this object opens it
    manifest: dict = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        if not (self.root / MANIFEST).exists():
            raise FileNotFoundError(
                f"{self.root} is not an activation store (no {MANIFEST}); create one with "
                "featalign.activations.cache_activations or `python -m featalign.cache`"
            )
        self.manifest = read_json(self.root / MANIFEST)
        if self.manifest.get("format") != FORMAT:
            raise StoreError(f"{self.root}: unknown store format {self.manifest.get('format')!r}, expected {FORMAT}")
        self.layout = StoreLayout.from_dict(self.manifest["layout"])
        self.shards: list[dict] = self.manifest["shards"]
        self.offsets = np.concatenate([[0], np.cumsum([s["rows"] for s in self.shards])]).astype(np.int64)
        self._verified: set[int] = set()

    def __len__(self) -> int:
        return int(self.offsets[-1])

    @property
    def models(self) -> tuple[str, ...]:
        return tuple(self.layout.model_names)

    @property
    def hooks(self) -> tuple[str, ...]:
        return tuple(self.layout.hooks)

    @property
    def row_shape(self) -> tuple[int, int, int]:
        return self.layout.row_shape

    def check_shard(self, i: int) -> None:
        verify_shard(self.root, self.shards[i])
        self._verified.add(i)

    def check(self) -> None:
        """Verify every shard and the stats file against the manifest's checksums."""
        for i in range(len(self.shards)):
            self.check_shard(i)
        if sha256_file(self.root / STATS) != self.manifest["stats_sha256"]:
            raise ChecksumError(f"{STATS} of {self.root} is corrupted; run featalign.activations.merge_manifests on it")

    def shard(self, i: int) -> np.memmap:
        """Shard i as a read-only memmap `[rows, M, H, d]` in the store dtype."""
        if self.verify and i not in self._verified:
            self.check_shard(i)
        s = self.shards[i]
        return np.memmap(
            self.root / s["file"],
            dtype=STORE_DTYPES[self.layout.dtype][1],
            mode="r",
            shape=(s["rows"], *self.row_shape),
        )

    def shard_tensor(self, i: int) -> Float[Tensor, "N M H D"]:
        return from_store_array(self.shard(i), self.layout.dtype)

    def read(self, start: int = 0, stop: int | None = None) -> Float[Tensor, "N M H D"]:
        """Rows [start, stop) as float32 (for analysis of small ranges; loaders stream)."""
        stop = len(self) if stop is None else min(stop, len(self))
        out = []
        for i in range(len(self.shards)):
            a, b = int(self.offsets[i]), int(self.offsets[i + 1])
            if b <= start or a >= stop:
                continue
            out.append(from_store_array(self.shard(i)[max(start - a, 0) : min(stop, b) - a], self.layout.dtype))
        return torch.cat(out) if out else torch.empty(0, *self.row_shape)

    def stats(self) -> StoreStats:
        with np.load(self.root / STATS) as z:
            t = lambda k: torch.from_numpy(z[k]).float()  # noqa: E731
            return StoreStats(int(z["count"]), t("mean"), t("var"), t("mean_norm"), t("norm_scalar"))

    def norm_scales(self) -> Float[Tensor, "M H"]:
        """sqrt(d)/E||x|| per (model, hook), the crosscoder's training normalisation
        (featalign.activations.normalization), as recorded when the store was written."""
        return self.stats().norm_scalar_MH

    def loader(self, batch_size: int, seed: int = 0, **kw: Any) -> ActivationLoader:
        """Shuffled `[B, M, H, D]` batches of this store (`ActivationLoader`), for training."""
        return ActivationLoader(self, batch_size, seed=seed, **kw)
