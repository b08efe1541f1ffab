"""The crosscoder's input normalisation, defined once: scale every (model, hook) block by sqrt(D) / E||x||.

After scaling, each block's rows have mean norm sqrt(D) (Anthropic's crosscoder convention), so one
sparsity coefficient and one learning rate suit models whose residual streams differ in scale by orders
of magnitude. The store records the scalars when it caches (`stats.npz`), the trainer estimates them
from a few batches when its source has none, and `estimate_norm_scales` does it for an in-memory tensor:
all three go through `norm_sums` and `norm_scales_from_mean` below, so they agree to the last bit up to
summation order (float64 accumulation everywhere).
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float
from torch import Tensor

#: Floor on a block's mean norm: an all-zero block gets a large finite scale rather than inf/NaN.
NORM_EPS = 1e-8

#: Rows per chunk in `estimate_norm_scales`: bounds the float64 copy to [chunk, M, H, D].
_CHUNK_ROWS = 65_536

__all__ = ["NORM_EPS", "estimate_norm_scales", "norm_scales_from_mean", "norm_sums"]


def norm_sums(x_NMHD: Float[Tensor, "N M H D"]) -> Float[Tensor, "M H"]:
    """Sum of the rows' L2 norms per (model, hook), in float64 (sums of many batches or shards add exactly
    enough that the order they are merged in does not show in float32)."""
    return x_NMHD.double().norm(dim=-1).sum(0)


def norm_scales_from_mean(mean_norm_MH: Tensor, d_model: int) -> Float[Tensor, "M H"]:
    """sqrt(D) / max(E||x||, NORM_EPS) in float64: multiplying raw activations by it gives mean norm sqrt(D).

    A true division by a float64 tensor (not `scalar / tensor`, which torch computes as a reciprocal
    times the scalar and rounds twice), so it equals numpy's `np.sqrt(D) / mean` bit for bit."""
    mean = torch.as_tensor(mean_norm_MH, dtype=torch.float64).clamp_min(NORM_EPS)
    return torch.full_like(mean, math.sqrt(d_model)) / mean


def estimate_norm_scales(x_NMHD: Float[Tensor, "N M H D"]) -> Float[Tensor, "M H"]:
    """The normalisation scalars of an in-memory `[N, M, H, D]` tensor (or `[N, M, D]`: then `[M]`), float32
    as the crosscoder stores them. Chunked, so the float64 accumulation never copies the whole tensor."""
    if x_NMHD.ndim < 2 or x_NMHD.shape[0] == 0:
        raise ValueError(f"expected activations [N, M, H, D] with N > 0, got shape {list(x_NMHD.shape)}")
    total_MH = torch.zeros(x_NMHD.shape[1:-1], dtype=torch.float64, device=x_NMHD.device)
    for i in range(0, x_NMHD.shape[0], _CHUNK_ROWS):
        total_MH += norm_sums(x_NMHD[i : i + _CHUNK_ROWS])
    return norm_scales_from_mean(total_MH / x_NMHD.shape[0], x_NMHD.shape[-1]).float()
