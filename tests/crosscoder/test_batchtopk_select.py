"""BatchTopK's pruned selection against a full sort, whatever the threshold estimate (too low, near, too
high, zero), with ties, and the aux-k loss reaching latents that are quiet but not yet counted dead."""

from __future__ import annotations

import pytest
import torch

from featalign.crosscoder import Crosscoder, CrosscoderConfig
from featalign.crosscoder.variants.batchtopk import select_batch_topk


def _reference(P_BL, b_L, w_L, n):
    """The n largest relu(P + b)·w by a full sort, as a sorted list of flat indices."""
    v = ((P_BL + b_L).clamp_min(0) * w_L).reshape(-1)
    order = sorted(range(v.numel()), key=lambda i: -float(v[i]))
    return sorted(order[:n]), float(v[order[n - 1]])


@pytest.mark.parametrize("thr_scale", [0.0, 0.3, 0.9, 1.0, 1.3, 5.0])
def test_selection_is_the_exact_top_n_for_any_threshold_estimate(thr_scale):
    g = torch.Generator().manual_seed(0)
    P, b, w = torch.randn(16, 50, generator=g), 0.3 * torch.randn(50, generator=g), 0.5 + torch.rand(50, generator=g)
    n = 40
    ref, nth = _reference(P, b, w, n)
    got = select_batch_topk(P, b, w, n, thr_scale * nth)
    assert got.tolist() == ref  # exact set, row-major order


def test_selection_with_ties_at_the_nth_value_keeps_exactly_n():
    P = torch.tensor([[3.0, 2.0, 2.0, 1.0], [2.0, 2.0, 0.5, -1.0]])
    got = select_batch_topk(P, torch.zeros(4), torch.ones(4), 3, 1.9)
    assert got.numel() == 3 and got.tolist() == sorted(got.tolist())
    assert 0 in got.tolist()  # the 3.0
    assert all(float(P.view(-1)[i]) >= 2.0 for i in got)


def test_aux_reaches_quiet_latents_before_they_count_dead():
    cfg = dict(models=("a", "b"), hooks=("h",), d_model=8, n_latents=64, variant="batchtopk", dead_tokens=10**6)
    x = torch.randn(32, 16)
    for aux_dead, expect_aux in ((0, False), (100, True)):
        m = Crosscoder(CrosscoderConfig(**cfg, variant_cfg={"k": 2, "aux_k": 4, "aux_dead_tokens": aux_dead}))
        m.tokens_since_fired[:10] = 1000  # quiet for 1000 tokens: dead for aux only with aux_dead_tokens < 1000
        out = m.training_forward(x)
        assert (out.parts["aux"].item() > 0) == expect_aux
        out.loss.backward()
        assert (m.W_enc.grad[:, :10].abs().sum() > 0).item()  # selected or aux: some of them get gradient
        assert m.variant.aux_mask(m)[:10].all().item() == expect_aux


def test_planted_data_n_models_truth():
    """Three models: each model's noise-free activations lie in the span of exactly its present features,
    with each feature's planted direction; the chunked path (large N·F) draws the same way per chunk."""
    from featalign.crosscoder import planted_data

    x, t = planted_data(n_tokens=500, d_model=64, n_shared=8, n_specific=4, p_fire=0.2, noise=0.0, n_models=3)
    assert x.shape == (500, 3, 1, 64) and t.kind == ["shared"] * 8 + [f"only:{m}" for m in range(3) for _ in range(4)]
    assert t.present_FM.sum(0).tolist() == [12, 12, 12] and t.present_FM[:8].all()
    for m in range(3):
        D_FD = t.directions_FMD[t.present_FM[:, m], m]  # 12 directions in 64 dims: identifiable
        coef = torch.linalg.lstsq(D_FD.T, x[:, m, 0].T).solution
        assert (D_FD.T @ coef - x[:, m, 0].T).abs().max() < 1e-4
        assert ((coef.abs() > 1e-3) & (coef < 0.5 - 1e-4)).sum() == 0 and coef.max() <= 1.5 + 1e-4  # magnitudes U(0.5, 1.5)
        assert (t.directions_FMD[~t.present_FM[:, m], m] == 0).all()
    big, tb = planted_data(n_tokens=2**24 // 20 + 7, d_model=4, n_shared=10, n_specific=5, n_models=2)
    assert big.shape == (2**24 // 20 + 7, 2, 1, 4) and tb.present_FM.sum().item() == 30
    assert big.norm(dim=-1).mean().item() > 0.1  # drawn in every chunk, not zeros
    assert big[-1000:].norm(dim=-1).mean().item() > 0.1


@pytest.mark.parametrize("rows_sorted", [False, True])
def test_sampled_bound_selection_is_exact_even_when_rows_are_not_exchangeable(rows_sorted):
    """The default bound comes from a strided row sample; rows sorted by their scale (a batch that was not
    shuffled) make the sample unrepresentative, which may cost the fallback but never the exact answer."""
    g = torch.Generator().manual_seed(1)
    scale_B = torch.rand(256, 1, generator=g) * 3
    if rows_sorted:
        scale_B = scale_B.sort(dim=0).values
    P, b, w = torch.randn(256, 96, generator=g) * scale_B, 0.2 * torch.randn(96, generator=g), 0.5 + torch.rand(96, generator=g)
    n = 256 * 4
    ref, _ = _reference(P, b, w, n)
    assert select_batch_topk(P, b, w, n).tolist() == ref


def test_candidate_bound_lets_through_a_little_more_than_n_on_exchangeable_rows():
    from featalign.crosscoder.variants.batchtopk import candidate_bound

    g = torch.Generator().manual_seed(2)
    P, b, w = torch.randn(2048, 1024, generator=g), 0.1 * torch.randn(1024, generator=g), 0.5 + torch.rand(1024, generator=g)
    n = 2048 * 16
    c = candidate_bound(P, b, w, n)
    n_cand = int((((P + b).clamp_min(0) * w) > c).sum())
    assert n < n_cand < 2 * n  # a bound below the n-th value, yet no flood of candidates (the EMA's 0.8 t let ~5x through)


class _NoScratch:
    """A scratch that never keeps anything: every step allocates afresh (the reference)."""

    def take(self, key, make):
        return make()

    def give(self, key, bufs):
        pass


@pytest.mark.parametrize("variant", ["batchtopk", "matryoshka"])
@pytest.mark.parametrize("bf16", [False, True])
def test_kept_encoder_output_trains_bit_identically_to_fresh_ones(variant, bf16):
    """The encoder GEMM's output is kept between steps (`Variant.scratch`) and handed back only after the aux
    loss read it: training with it equals training where every step allocates its own, weights bit for bit,
    and the kept output is the same memory from step to step."""
    cfg = CrosscoderConfig(models=("a", "b"), hooks=("h",), d_model=16, n_latents=128, variant=variant,
                           dead_tokens=64, variant_cfg={"k": 4, "aux_dead_tokens": 16})
    x = torch.randn(6, 64, 32, generator=torch.Generator().manual_seed(3))
    models = []
    for keep in (True, False):
        torch.manual_seed(0)
        cc = Crosscoder(cfg)
        if not keep:
            cc.variant.scratch = _NoScratch()
        opt = torch.optim.Adam(cc.parameters(), lr=1e-2)
        ptrs = set()
        for x_BK in x:
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
                out = cc.training_forward(x_BK)
            opt.zero_grad()
            out.loss.backward()
            opt.step()
            cc.update_firing(out.fired_L, x_BK.shape[0])
            if keep:
                ptrs |= {bufs["P"].data_ptr() for bufs in cc.variant.scratch._free.values()}
        assert out.parts["aux"] > 0  # the aux loss read the kept output on these steps
        models.append(cc)
        if keep:
            assert len(ptrs) == 1  # one output, kept across all steps
    for (name, p), q in zip(models[0].state_dict().items(), models[1].state_dict().values()):
        assert torch.equal(p, q), name


def test_encoder_gemm_matches_autocast_mm():
    cc = Crosscoder(CrosscoderConfig(models=("a", "b"), hooks=("h",), d_model=16, n_latents=64, variant="batchtopk"))
    x = torch.randn(8, 32)
    for bf16 in (False, True):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16), torch.no_grad():
            ref, got = torch.mm(x, cc.W_enc), cc.variant._encoder_gemm(x, cc.W_enc)
        assert got.dtype == ref.dtype and torch.equal(got, ref)
