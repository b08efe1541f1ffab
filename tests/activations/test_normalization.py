"""The one normalisation rule: the store, the trainer and `estimate_norm_scales` give the same scalars."""

from __future__ import annotations

import numpy as np
import torch

from featalign.activations.normalization import NORM_EPS, estimate_norm_scales, norm_scales_from_mean, norm_sums
from featalign.activations.store import Moments
from featalign.crosscoder import CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig


def _x(n: int = 2048, d: int = 96) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, 3, 2, d, generator=g) * torch.logspace(-2, 3, 6).view(1, 3, 2, 1)


def test_scaled_rows_have_mean_norm_sqrt_d():
    x = _x()
    s_MH = estimate_norm_scales(x)
    assert s_MH.dtype == torch.float32 and s_MH.shape == (3, 2)
    mean_MH = (x.double() * s_MH.double()[None, :, :, None]).norm(dim=-1).mean(0)
    torch.testing.assert_close(mean_MH, torch.full((3, 2), 96**0.5, dtype=torch.float64), rtol=1e-6, atol=0)


def test_store_moments_and_estimate_agree():
    """The store merges per-batch norm sums; the in-memory estimate sums in chunks: same float32 scalars."""
    x = _x()
    m = Moments.empty((3, 2, x.shape[-1]))
    for b in x.split(300):
        m = m.merge(Moments.of(b))
    assert torch.equal(torch.from_numpy(m.norm_scalar_MH()).float(), estimate_norm_scales(x))
    # a true division, so numpy's formula gives the same float64 bits
    np.testing.assert_array_equal(m.norm_scalar_MH(), np.sqrt(x.shape[-1]) / m.mean_norm_MH)


def test_trainer_estimate_equals_the_rule(tmp_path):
    """A source without scalars: the trainer's estimate over its first batches equals the rule on them."""
    x = _x(1024, 16)
    cc = CrosscoderConfig(models=("a", "b", "c"), hooks=("h0", "h1"), d_model=16, n_latents=32, variant="l1")
    tc = TrainerConfig(steps=1, batch_size=128, norm_batches=4, warmup_steps=1)
    m = Trainer(cc, tc, InMemoryActivations(x, 128), None, progress=False).train()
    src = InMemoryActivations(x, 128)
    torch.testing.assert_close(m.norm_scale, estimate_norm_scales(torch.cat([next(src) for _ in range(4)])),
                               rtol=0, atol=0)


def test_zero_block_gets_a_finite_scale():
    x = _x(64, 8)
    x[:, 1, 0] = 0
    s_MH = estimate_norm_scales(x)
    assert torch.isfinite(s_MH).all() and s_MH[1, 0] == np.float32(8**0.5 / NORM_EPS)
    assert norm_sums(x)[1, 0] == 0 and norm_scales_from_mean(torch.zeros(1), 4).item() == 2 / NORM_EPS
