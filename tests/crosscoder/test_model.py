"""Crosscoder module: each variant's loss against a hand computation, sparse == dense, raw in/raw out."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from featalign.crosscoder import FORMAT_VERSION, Crosscoder, CrosscoderConfig
from featalign.crosscoder.model import CFG_FILE, read_config, write_config


def _cc(**kw) -> Crosscoder:
    base = dict(models=("a", "b", "c"), hooks=("h0", "h1"), d_model=8, n_latents=64, seed=1)
    return Crosscoder(CrosscoderConfig.from_dict({**base, **kw}))  # variant fields at the top level are nested


def test_init_encoder_is_decoder_transpose_and_block_norms():
    m = _cc()
    assert torch.equal(m.W_enc, m.W_dec.t())
    torch.testing.assert_close(m.decoder_norms(), torch.full((64, 3, 2), 0.1))


def test_l1_loss_matches_explicit_loop():
    m = _cc(variant="l1", n_shared=5, shared_penalty=0.2)
    with torch.no_grad():
        m.b_enc.normal_()
        m.b_dec.normal_()
    x = torch.randn(6, m.cfg.d_in)
    out = m.training_forward(x, sparsity_coef=0.7)
    total = 0.0
    m.requires_grad_(False)
    for b in range(6):
        f = [max(0.0, float(x[b] @ m.W_enc[:, l] + m.b_enc[l])) for l in range(64)]
        x_hat = m.b_dec.clone()
        pen = 0.0
        for l in range(64):
            x_hat += f[l] * m.W_dec[l]
            norms = sum(float(m.W_dec[l].view(6, 8)[j].norm()) for j in range(6))
            pen += f[l] * norms * (0.2 if l < 5 else 1.0)
        total += float((x_hat - x[b]).pow(2).sum()) + 0.7 * pen
    assert out.loss.item() == pytest.approx(total / 6, rel=1e-5)


def test_batchtopk_selects_top_kB_on_norm_weighted_acts():
    m = _cc(variant="batchtopk", k=3)
    with torch.no_grad():  # unequal decoder norms so that weighting matters
        m.W_dec.mul_(torch.linspace(0.2, 3, 64)[:, None])
    x = torch.randn(5, m.cfg.d_in)
    m.variant.cfg.sparse_decode = False
    out = m.training_forward(x)
    pre = x @ m.W_enc + m.b_enc
    w = m.W_dec.view(64, 6, 8).norm(dim=-1).sum(-1)
    scores = sorted(((float(F.relu(pre[b, l]) * w[l]), b, l) for b in range(5) for l in range(64)), reverse=True)
    f = torch.zeros(5, 64)
    for _, b, l in scores[:15]:
        f[b, l] = F.relu(pre[b, l])
    torch.testing.assert_close(out.x_hat_BK, f @ m.W_dec + m.b_dec)
    assert out.stats["min_selected"].item() == pytest.approx(scores[14][0], rel=1e-6)


@pytest.mark.parametrize("bf16", [False, True])
def test_sparse_batchtopk_matches_dense_loss_and_grads(bf16):
    m = _cc(variant="batchtopk", k=4, n_latents=256)
    m.tokens_since_fired[:40] = 10**9  # some dead latents: the aux loss is exercised too
    x = torch.randn(128, m.cfg.d_in)
    res = {}
    for sparse in (True, False):
        m.zero_grad()
        m.variant.cfg.sparse_decode = sparse
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            out = m.training_forward(x)
        out.loss.backward()
        res[sparse] = (out.loss.item(), [p.grad.clone() for p in m.parameters()], out.l0.item())
    rel = abs(res[True][0] - res[False][0]) / abs(res[False][0])
    assert rel < (1e-4 if not bf16 else 1e-2)
    assert res[True][2] == res[False][2] == 4.0
    if not bf16:
        for gs, gd in zip(res[True][1], res[False][1]):
            torch.testing.assert_close(gs, gd, atol=1e-5, rtol=1e-4)


def test_jumprelu_straight_through_gradient_matches_formula():
    m = _cc(variant="jumprelu", init_threshold=0.05, bandwidth=0.5)
    x = torch.randn(32, m.cfg.d_in)
    out = m.training_forward(x, sparsity_coef=0.3)
    out.loss.backward()
    with torch.no_grad():
        pre = x @ m.W_enc + m.b_enc
        th = m.variant.log_threshold.exp()
        f = pre * (pre > th)
        g_f = 2 * ((f @ m.W_dec + m.b_dec) - x) @ m.W_dec.t() / 32  # d recon / d f
        k = ((pre - th).abs() / 0.5 < 0.5).float()
        g_th = (-(th / 0.5) * k * g_f).sum(0) + 0.3 * (-(1 / 0.5) * k / 32).sum(0)
        expected = g_th * th  # chain rule through exp(log_threshold)
    torch.testing.assert_close(m.variant.log_threshold.grad, expected, atol=1e-6, rtol=1e-4)
    assert out.parts["sparsity"].item() == pytest.approx((pre > th).float().sum(-1).mean().item())


def test_batchtopk_inference_is_batch_independent():
    m = _cc(variant="batchtopk", k=4)
    for _ in range(2):  # threshold from other batches, so no token of x sits exactly on it
        out = m.training_forward(m.normalise(torch.randn(64, 3, 2, 8)))
        m.variant.update(out.stats)
    x = torch.randn(64, 3, 2, 8)
    f_batch = m.encode(x)
    f_single = torch.cat([m.encode(x[i : i + 1]) for i in range(64)])
    torch.testing.assert_close(f_batch, f_single)
    w = m.dec_norm_sum()
    act = F.relu(m.normalise(x) @ m.W_enc + m.b_enc)
    assert torch.equal(f_batch > 0, act * w > m.variant.threshold.float())


def test_raw_in_raw_out_normalisation():
    """Scaling model b's activations by c (and its norm scalar by 1/c) scales only b's output by c."""
    m = _cc(variant="l1")
    x = torch.randn(10, 3, 2, 8)
    y = m(x)
    m.norm_scale[1] /= 7.0
    x2 = x.clone()
    x2[:, 1] *= 7.0
    y2 = m(x2)
    torch.testing.assert_close(y2[:, 1], 7.0 * y[:, 1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y2[:, [0, 2]], y[:, [0, 2]])


def test_wrong_input_shape_names_models_and_hooks():
    with pytest.raises(ValueError, match=r"models \('a', 'b', 'c'\)"):
        _cc().encode(torch.randn(4, 2, 2, 8))


def test_save_load_roundtrip_and_newer_format_refused(tmp_path):
    m = _cc(variant="jumprelu")
    with torch.no_grad():
        m.norm_scale.fill_(3.0)
        m.tokens_since_fired[3] = 11
    m.save(tmp_path)
    m2 = Crosscoder.load(tmp_path)
    assert m2.cfg == m.cfg
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    cfg["format_version"] = FORMAT_VERSION + 1
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="newer than this featalign"):
        Crosscoder.load(tmp_path)


def test_cfg_json_has_one_reader_and_writer(tmp_path):
    """`write_config` / `read_config`: what `Crosscoder.save` and the trainer both use for cfg.json."""
    m = _cc(variant="jumprelu")
    write_config(tmp_path, m.cfg)
    d = json.loads((tmp_path / CFG_FILE).read_text())
    assert d["format_version"] == FORMAT_VERSION and "featalign_version" in d["provenance"]
    assert read_config(tmp_path) == (m.cfg, FORMAT_VERSION)
