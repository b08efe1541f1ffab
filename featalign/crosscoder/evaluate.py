"""Final evaluation of a crosscoder: per-model FVU, L0, dead fraction (raw space)."""

from __future__ import annotations

import torch
from torch import Tensor

from featalign.crosscoder.data import check_finite

RULES = ("inference", "training")


@torch.no_grad()
def evaluate(crosscoder, x_NMHD: Tensor, batch: int = 4096, rule: str = "inference") -> dict:
    """FVU per model (over its hooks and dims), mean L0, and latents that never fire on `x_NMHD`.

    `rule="inference"` (default) uses `encode`, the per-token rule (BatchTopK's EMA threshold): the
    numbers a user encoding one token at a time gets. `rule="training"` uses the variant's training
    forward on batches of `batch` tokens (BatchTopK's batch top-k): the numbers the training log
    reports, comparable with them when `batch` is the training batch size; the gap between the two
    shows how well the inference rule stands in for the training one.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {RULES}, got {rule!r}")
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
    was_training = crosscoder.training
    crosscoder.eval()
    try:
        for i in range(0, x_NMHD.shape[0], batch):
            x = x_NMHD[i : i + batch].float()
            if rule == "inference":
                f = crosscoder.encode(x)
                x_hat = crosscoder.decode(f)
                active = f > 0
                fired_b, l0_b = active.any(0), active.sum().item()
            else:
                out = crosscoder.training_forward(crosscoder.normalise(x))
                x_hat = (out.x_hat_BK.float() / crosscoder._scale_K()).view_as(x)
                fired_b = (out.fired_L() if callable(out.fired_L) else out.fired_L).cpu()
                l0_b = float(out.l0() if callable(out.l0) else out.l0) * x.shape[0]
            xv = x.reshape(x.shape[0], M, -1).double()
            err += (x_hat.reshape_as(xv).double() - xv).pow(2).sum((0, 2))
            sq += xv.pow(2).sum((0, 2))
            s += xv.sum(0)
            fired |= fired_b
            l0_sum += l0_b
            n += x.shape[0]
    finally:
        crosscoder.train(was_training)
    var = sq - s.pow(2).sum(-1) / n  # total variance around the per-dim mean
    fvu = (err / var).tolist()
    dead_eval = 1 - fired.float().mean().item()
    out = {
        "rule": rule,
        "l0": l0_sum / n,
        "dead_frac": dead_eval,
        "dead_frac_train": crosscoder.dead_mask().float().mean().item(),
        "n_tokens": n,
        "per_model": {name: {"fvu": fvu[m]} for m, name in enumerate(cfg.models)},
    }
    return out
