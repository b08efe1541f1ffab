"""Planted ground truth: sparse directions shared by both models, only in A, only in B, in superposition.

The crosscoder must recover >= 90% of them (cosine > 0.9 between the planted concatenated direction
and the best decoder row, in raw space) and attribute each to the right model(s) by decoder norms.
"""

from __future__ import annotations

import pytest
import torch

from featalign.crosscoder import CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig, planted_data


def recovery(model, truth) -> tuple[torch.Tensor, torch.Tensor]:
    """(best cosine per planted feature, attribution correct per planted feature)."""
    W_LMD = (model.W_dec_LMHD[:, :, 0, :] / model.norm_scale[None, :, 0, None]).detach()
    W = W_LMD.reshape(W_LMD.shape[0], -1)
    T = truth.directions_FMD.reshape(truth.directions_FMD.shape[0], -1)
    cos = (T / T.norm(dim=-1, keepdim=True)) @ (W / W.norm(dim=-1, keepdim=True)).T
    best, idx = cos.max(1)
    share_FM = W_LMD.norm(dim=-1)[idx]
    share_FM = share_FM / share_FM.sum(-1, keepdim=True)  # 2-model attribution score
    shared = truth.present_FM.all(1)
    correct = torch.where(shared, share_FM.min(1).values > 0.2, (share_FM * truth.present_FM).sum(1) > 0.9)
    return best, correct


@pytest.mark.parametrize("variant,steps,coef", [("l1", 600, 1.0), ("batchtopk", 1200, 0.0), ("jumprelu", 1000, 0.3)])
def test_planted_directions_recovered_and_attributed(tmp_path, variant, steps, coef):
    x, truth = planted_data(n_tokens=40_000, d_model=32, n_shared=48, n_specific=24, seed=0)
    assert truth.present_FM.sum(0).tolist() == [72, 72]  # 72 features per model in 32 dims: superposition
    cc = CrosscoderConfig(models=("A", "B"), hooks=("h",), d_model=32, n_latents=256, variant=variant,
                          variant_cfg={"k": 4, "aux_k": 16} if variant == "batchtopk" else None, dead_tokens=20_000)
    tc = TrainerConfig(steps=steps, batch_size=512, lr=3e-3, warmup_steps=50, sparsity_coef=coef,
                       checkpoint_every=10**9, log_every=100)
    model = Trainer(cc, tc, InMemoryActivations(x, 512, models=("A", "B"), hooks=("h",)), tmp_path, progress=False).train()
    best, correct = recovery(model, truth)
    recovered = best > 0.9
    assert recovered.float().mean() >= 0.9, f"recovered {recovered.float().mean():.3f}"
    for kind in ("shared", "only:0", "only:1"):
        sel = torch.tensor([k == kind for k in truth.kind])
        assert (recovered & correct)[sel].float().mean() >= 0.85, kind
    assert (recovered & correct).float().mean() >= 0.9
