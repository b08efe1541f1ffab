"""Final evaluation of a crosscoder: per-model FVU, L0, dead fraction (inference encoding, raw space)."""

from __future__ import annotations

import torch
from torch import Tensor

from featalign.crosscoder.data import check_finite


@torch.no_grad()
def evaluate(crosscoder, x_NMHD: Tensor, batch: int = 4096) -> dict:
    """FVU per model (over its hooks and dims), mean L0, and latents that never fire on `x_NMHD`.

    Uses `encode` (the inference rule: BatchTopK's EMA threshold, not the batch top-k), so the
    numbers are what a single-token user gets.
    """
    cfg = crosscoder.cfg
    check_finite(x_NMHD, cfg.models, cfg.hooks, "evaluation activations")
    if len(x_NMHD) == 0:
        raise ValueError("no evaluation rows: pass at least one row of activations")
    M = cfg.n_models
    err = torch.zeros(M, dtype=torch.float64)
    sq = torch.zeros(M, dtype=torch.float64)
    s = torch.zeros(M, x_NMHD.shape[2] * x_NMHD.shape[3], dtype=torch.float64)
    fired = torch.zeros(cfg.n_latents, dtype=torch.bool)
    l0_sum, n = 0.0, 0
    for i in range(0, x_NMHD.shape[0], batch):
        x = x_NMHD[i : i + batch].float()
        f = crosscoder.encode(x)
        x_hat = crosscoder.decode(f)
        xv = x.reshape(x.shape[0], M, -1).double()
        err += (x_hat.reshape_as(xv).double() - xv).pow(2).sum((0, 2))
        sq += xv.pow(2).sum((0, 2))
        s += xv.sum(0)
        active = f > 0
        fired |= active.any(0)
        l0_sum += active.sum().item()
        n += x.shape[0]
    var = sq - s.pow(2).sum(-1) / n  # total variance around the per-dim mean
    fvu = (err / var).tolist()
    dead_eval = 1 - fired.float().mean().item()
    out = {
        "l0": l0_sum / n,
        "dead_frac": dead_eval,
        "dead_frac_train": crosscoder.dead_mask().float().mean().item(),
        "n_tokens": n,
        "per_model": {name: {"fvu": fvu[m]} for m, name in enumerate(cfg.models)},
    }
    return out
