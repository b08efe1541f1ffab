"""Controls that calibrate "model-specific": base-vs-base crosscoders and bootstrap intervals for counts.

A crosscoder over the same model twice (identical inputs) should find no specific latents; the base
against itself on disjoint token halves (the two sides uncorrelated) finds many. A base-vs-tuned
count means something only next to these two (the calibration of the 2026 crosscoder workshop result;
docs/analysis.md).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

CONTROL_KINDS = ("same", "disjoint")


def control_activations(x_N1HD: Tensor, kind: str, seed: int = 0) -> Tensor:
    """Two-'model' activations `[N', 2, H, D]` from one model's `[N, 1, H, D]`.

    'same': the model twice on the same tokens (the null of zero difference).
    'disjoint': the model on one random half of the tokens vs the other half (rows unpaired;
    N' = N // 2), i.e. the same model "with another data half / seed" on each side.
    """
    if x_N1HD.ndim != 4 or x_N1HD.shape[1] != 1:
        raise ValueError(f"expected one model's activations [N, 1, H, D], got {list(x_N1HD.shape)}")
    if kind == "same":
        return torch.cat([x_N1HD, x_N1HD], dim=1)
    if kind == "disjoint":
        perm = torch.randperm(len(x_N1HD), generator=torch.Generator().manual_seed(seed))
        h = len(x_N1HD) // 2
        return torch.cat([x_N1HD[perm[:h]], x_N1HD[perm[h : 2 * h]]], dim=1)
    raise ValueError(f"control kind must be one of {CONTROL_KINDS}, got {kind!r}")


@dataclass
class CountInterval:
    """A latent count with its interval and how it was obtained (`bootstrap` or `clopper-pearson`), so no count is
    reported without its uncertainty."""

    count: int
    low: float
    high: float
    n: int  # latents counted over
    method: str

    def as_dict(self) -> dict:
        return vars(self).copy()

    def __str__(self) -> str:
        return f"{self.count} [{self.low:.0f}, {self.high:.0f}]"


def count_interval(
    mask_L: Tensor | np.ndarray, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> CountInterval:
    """Count of True entries with a percentile bootstrap interval (resampling latents).

    The latents of a dictionary are treated as a sample of the model's features. A count of 0 or
    n (no variation to resample) gets the exact Clopper-Pearson interval instead, scaled to n.
    """
    m = np.asarray(mask_L, dtype=float)
    n, k = len(m), int(m.sum())
    if n == 0:
        raise ValueError("no latents to count over (all dead?); train longer or lower min_firing_rate")
    if k in (0, n):
        from statsmodels.stats.proportion import proportion_confint

        lo, hi = proportion_confint(k, n, alpha=1 - confidence, method="beta")
        return CountInterval(k, float(lo * n), float(hi * n), n, "clopper-pearson")
    from scipy.stats import bootstrap

    res = bootstrap(
        (m,),
        np.sum,
        n_resamples=n_resamples,
        confidence_level=confidence,
        method="percentile",
        random_state=np.random.default_rng(seed),
        vectorized=True,
    )
    return CountInterval(k, float(res.confidence_interval.low), float(res.confidence_interval.high), n, "bootstrap")


def difference_interval(
    mask_a: Tensor | np.ndarray,
    mask_b: Tensor | np.ndarray,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> dict:
    """count(a) - count(b) over the same latents, paired percentile bootstrap; p = share of resamples <= 0."""
    a, b = np.asarray(mask_a, float), np.asarray(mask_b, float)
    d = a - b
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(d), size=(n_resamples, len(d)))
    boots = d[idx].sum(1)
    alpha = 1 - confidence
    lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {
        "difference": float(d.sum()),
        "low": float(lo),
        "high": float(hi),
        "p_le_0": float((boots <= 0).mean()),
        "p_ge_0": float((boots >= 0).mean()),
        "n": len(d),
    }


def independent_difference_interval(
    mask_a, mask_b, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> dict:
    """count(a) - count(b) for masks over *different* dictionaries (resampled independently)."""
    a, b = np.asarray(mask_a, float), np.asarray(mask_b, float)
    rng = np.random.default_rng(seed)
    boots = a[rng.integers(0, len(a), (n_resamples, len(a)))].sum(1) - b[
        rng.integers(0, len(b), (n_resamples, len(b)))
    ].sum(1)
    alpha = 1 - confidence
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        lo, hi = np.quantile(boots, [alpha / 2, 1 - alpha / 2])
    return {
        "difference": float(a.sum() - b.sum()),
        "low": float(lo),
        "high": float(hi),
        "p_le_0": float((boots <= 0).mean()),
        "n_a": len(a),
        "n_b": len(b),
    }


def specific_masks(
    nrn_L: Tensor, alive_L: Tensor | None = None, threshold: float = 0.9, lean: float = 0.6
) -> dict[str, Tensor]:
    """Pairwise classes by NRN = n_t/(n_o+n_t): 't_only' NRN >= threshold, 'o_only' <= 1 - threshold,
    'shared' in [0.4, 0.6]; the graded 't_lean' / 'o_lean' use `lean` (NRN >= lean / <= 1 - lean);
    dead latents (alive_L False) are in none."""
    alive = torch.ones_like(nrn_L, dtype=torch.bool) if alive_L is None else alive_L.bool()
    return {
        "t_only": (nrn_L >= threshold) & alive,
        "o_only": (nrn_L <= 1 - threshold) & alive,
        "shared": (nrn_L >= 0.4) & (nrn_L <= 0.6) & alive,
        "t_lean": (nrn_L >= lean) & alive,
        "o_lean": (nrn_L <= 1 - lean) & alive,
        "alive": alive,
    }
