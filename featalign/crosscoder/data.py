"""Data sources for the crosscoder trainer: anything that yields `[B, M, H, D]` and can resume.

The on-disk `ActivationStore` loader (featalign.activations) satisfies `ActivationSource`;
`InMemoryActivations` is the in-memory equivalent used by tests, the planted-data benchmark and the
CLI's in-process path. `planted_data` builds synthetic activations with known ground truth.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from jaxtyping import Float
from torch import Tensor


def check_finite(
    x_NMHD: Tensor,
    models: tuple[str, ...] | None = None,
    hooks: tuple[str, ...] | None = None,
    what: str = "activations",
) -> None:
    """Refuse activations with NaN/inf entries, naming how many rows and the first (model, hook) holding them.

    One NaN row makes every statistic computed over the rows NaN (FVU, Latent Scaling betas, firing
    counts), and a NaN comparison is False, so thresholds would silently report "0 artifacts"."""
    if x_NMHD.ndim != 4:
        raise ValueError(f"expected {what} [N, M, H, D], got shape {list(x_NMHD.shape)}")
    bad_NMH = ~torch.isfinite(x_NMHD).all(-1)
    if not bad_NMH.any():
        return
    rows = int(bad_NMH.flatten(1).any(1).sum())
    m, h = (int(i) for i in bad_NMH.any(0).nonzero()[0])
    where = (f"model {models[m]!r}" if models else f"model slot {m}") + (
        f", hook {hooks[h]!r}" if hooks else f", hook slot {h}"
    )
    raise ValueError(
        f"{what} hold NaN/inf in {rows} of {x_NMHD.shape[0]} rows (first at {where}); drop those rows, e.g. "
        "x[torch.isfinite(x).flatten(1).all(1)], or re-cache them (a fp16 store overflows above 65504)"
    )


@runtime_checkable
class ActivationSource(Protocol):
    """Yields float32 batches `[B_local, M, H, D]`; `state_dict()` pins the position for bitwise resume.

    Optional attributes the trainer uses when present: `models`, `hooks` (checked against the
    crosscoder config) and `norm_scales()` -> `[M, H]` (multiply raw activations by these).
    """

    def __next__(self) -> Tensor: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class InMemoryActivations:
    """Shuffled epochs over an in-memory `[N, M, H, D]` tensor (or `[N, M, D]` for one hook);
    deterministic in (seed, epoch).

    With DDP each rank takes its slice of the same global batch, so the union over ranks equals
    the single-process batch.
    """

    def __init__(
        self,
        x_NMHD: Float[Tensor, "N M H D"] | Float[Tensor, "N M D"],
        batch_size: int,
        seed: int = 0,
        models: tuple[str, ...] | None = None,
        hooks: tuple[str, ...] | None = None,
        rank: int = 0,
        world_size: int = 1,
        scales_MH: Tensor | None = None,
    ):
        if x_NMHD.ndim == 3:  # one hook: the batches the trainer reads are still [B, M, 1, D]
            x_NMHD = x_NMHD[:, :, None, :]
        if x_NMHD.ndim != 4:
            raise ValueError(
                f"expected [N, M, H, D] (or [N, M, D] for one hook) activations, got shape {list(x_NMHD.shape)}"
            )
        if batch_size % world_size:
            raise ValueError(f"global batch {batch_size} must be divisible by world size {world_size}")
        if x_NMHD.shape[0] < batch_size:
            raise ValueError(f"{x_NMHD.shape[0]} tokens is fewer than one batch of {batch_size}; cache more tokens")
        self.x = x_NMHD
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.models = tuple(models) if models is not None else None
        self.hooks = tuple(hooks) if hooks is not None else None
        self._scales = scales_MH
        self.epoch, self.pos = 0, 0
        self._perm: Tensor | None = None

    def norm_scales(self) -> Tensor | None:
        return self._scales

    def _epoch_perm(self) -> Tensor:
        if self._perm is None:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            self._perm = torch.randperm(self.x.shape[0], generator=g)
        return self._perm

    def __iter__(self) -> InMemoryActivations:
        return self

    def __next__(self) -> Tensor:
        B = self.batch_size
        if (self.pos + 1) * B > self.x.shape[0]:
            self.epoch, self.pos, self._perm = self.epoch + 1, 0, None
        idx = self._epoch_perm()[self.pos * B : (self.pos + 1) * B]
        b = B // self.world_size
        self.pos += 1
        return self.x[idx[self.rank * b : (self.rank + 1) * b]].float()

    def state_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "pos": self.pos}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.epoch, self.pos, self._perm = int(state["epoch"]), int(state["pos"]), None


# --- planted ground truth ---------------------------------------------------------------------


@dataclass
class PlantedTruth:
    """Ground truth of `planted_data`: directions `[F, M, D]` (zero where a feature is absent)."""

    directions_FMD: Tensor
    present_FM: Tensor  # bool: which models carry each feature
    kind: list[str]  # "shared" or "only:<model index>"


def planted_data(
    n_tokens: int = 40_000,
    d_model: int = 32,
    n_shared: int = 48,
    n_specific: int = 24,
    p_fire: float = 0.03,
    noise: float = 0.01,
    seed: int = 0,
    n_models: int = 2,
) -> tuple[Float[Tensor, "N M 1 D"], PlantedTruth]:
    """`n_models` models' activations from known sparse features in superposition.

    `n_shared` features appear in every model (with an independent random direction in each), and
    `n_specific` appear only in model m, for each m; features per model (n_shared + n_specific)
    exceed d_model, so directions are in superposition. Each feature fires independently with
    probability `p_fire` with magnitude ~ U(0.5, 1.5) (the same magnitude in every model carrying it);
    each activation gets N(0, noise²) per dimension.

    Deterministic in the arguments. Tokens are drawn in chunks of ~2^24 (token, feature) entries so
    that the issue-13 size (600k tokens x 1,022 features) does not need a dense [N, F] tensor; below
    one chunk the draws are those of the original 2-model generator, so its data is unchanged.
    """
    if n_models < 1:
        raise ValueError(f"n_models must be >= 1, got {n_models}")
    M = n_models
    g = torch.Generator().manual_seed(seed)
    n_feat = n_shared + M * n_specific
    dirs_FMD = torch.randn(n_feat, M, d_model, generator=g)
    dirs_FMD /= dirs_FMD.norm(dim=-1, keepdim=True)
    present = torch.ones(n_feat, M, dtype=torch.bool)
    kind = ["shared"] * n_shared
    for m in range(M):  # block m of the model-only features lives in model m alone
        lo = n_shared + m * n_specific
        present[lo : lo + n_specific] = False
        present[lo : lo + n_specific, m] = True
        kind += [f"only:{m}"] * n_specific
    dirs_FMD = dirs_FMD * present[..., None]
    chunk = max(1, 2**24 // max(n_feat, 1))
    parts = []
    for s in range(0, n_tokens, chunk):
        n = min(chunk, n_tokens - s)
        fires_NF = torch.rand(n, n_feat, generator=g) < p_fire
        mags_NF = (0.5 + torch.rand(n, n_feat, generator=g)) * fires_NF
        x_NMD = (
            (mags_NF @ dirs_FMD.reshape(n_feat, -1)).view(n, M, d_model)
            if n_tokens > chunk
            else torch.einsum("nf,fmd->nmd", mags_NF, dirs_FMD)
        )
        x_NMD += noise * torch.randn(x_NMD.shape, generator=g)
        parts.append(x_NMD)
    x_NMD = parts[0] if len(parts) == 1 else torch.cat(parts)
    return x_NMD[:, :, None, :].contiguous(), PlantedTruth(dirs_FMD, present, kind)
