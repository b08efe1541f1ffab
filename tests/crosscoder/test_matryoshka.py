"""The Matryoshka BatchTopK variant: its loss against a slow explicit loop, its gradients against plain
autograd, recovery of a planted dictionary, and the plug-in path (config, CLI flag, save/load, resume)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from featalign.crosscoder import Crosscoder, CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig, planted_data
from featalign.crosscoder.variants.matryoshka import MatryoshkaConfig


def _cc(L=32, k=3, fracs=(0.25, 0.5, 1.0)) -> Crosscoder:
    m = Crosscoder(CrosscoderConfig(models=("a", "b"), hooks=("h",), d_model=6, n_latents=L, seed=2,
                                    variant="matryoshka", variant_cfg=MatryoshkaConfig(k=k, prefix_fracs=fracs)))
    with torch.no_grad():  # unequal decoder norms: the selection is on norm-weighted activations
        m.W_dec.mul_(torch.linspace(0.3, 2.0, L)[:, None])
        m.b_dec.normal_(generator=torch.Generator().manual_seed(0))
    return m


def test_loss_is_mean_over_prefixes_of_the_prefix_reconstruction_error():
    m = _cc()
    x = torch.randn(5, m.cfg.d_in, generator=torch.Generator().manual_seed(1))
    out = m.training_forward(x)
    with torch.no_grad():
        pre = x @ m.W_enc + m.b_enc
        w = m.W_dec.view(32, 2, 6).norm(dim=-1).sum(-1)
        ranked = sorted(((float(F.relu(pre[b, l]) * w[l]), b, l) for b in range(5) for l in range(32)), reverse=True)
        chosen = [(b, l) for s, b, l in ranked[:15] if s > 0]
        total = 0.0
        for p in (8, 16, 32):
            for b in range(5):
                x_hat = m.b_dec.clone()
                for bb, l in chosen:
                    if bb == b and l < p:
                        x_hat += F.relu(pre[b, l]) * m.W_dec[l]
                total += float((x_hat - x[b]).pow(2).sum()) / 5
    assert out.loss.item() == pytest.approx(total / 3, rel=1e-5)
    assert out.l0.item() == len(chosen) / 5
    assert set(out.parts) == {"recon", "recon_prefix0", "recon_prefix1", "aux"}


def test_gradients_match_autograd_through_prefix_masks():
    m = _cc()
    m.tokens_since_fired[-6:] = 10**9  # dead latents: the aux-k loss contributes too
    x = torch.randn(16, m.cfg.d_in, generator=torch.Generator().manual_seed(3))
    m.training_forward(x).loss.backward()
    got = [p.grad.clone() for p in (m.W_enc, m.b_enc, m.W_dec, m.b_dec)]
    W_enc, b_enc, W_dec, b_dec = (p.detach().double().requires_grad_() for p in (m.W_enc, m.b_enc, m.W_dec, m.b_dec))
    xx = x.double()
    pre = xx @ W_enc + b_enc
    act = F.relu(pre)
    w = m.W_dec.detach().view(32, 2, 6).norm(dim=-1).sum(-1).double()
    keep = torch.zeros(16 * 32, dtype=torch.float64)
    keep[(act.detach() * w).view(-1).topk(3 * 16).indices] = 1
    f = act * keep.view(16, 32)
    loss = sum(((f[:, :p] @ W_dec[:p] + b_dec) - xx).pow(2).sum(-1).mean() for p in (8, 16, 32)) / 3
    dead = torch.arange(26, 32)  # aux-k: the top dead pre-activations (no ReLU) reconstruct the residual
    top = pre.detach()[:, dead].topk(6, dim=-1).indices
    sel = torch.zeros(16, 32, dtype=torch.float64).scatter_(1, dead[top], 1.0)
    e = (xx - (f @ W_dec + b_dec)).detach()
    loss = loss + min(6 / m.cfg.variant_cfg.aux_k, 1.0) * (((pre * sel) @ W_dec) - e).pow(2).sum(-1).mean()
    loss.backward()
    for name, g, r in zip(("W_enc", "b_enc", "W_dec", "b_dec"), got, (W_enc.grad, b_enc.grad, W_dec.grad, b_dec.grad)):
        torch.testing.assert_close(g.double(), r, rtol=1e-4, atol=1e-6, msg=name)


def test_bad_prefixes_are_refused():
    for fracs in ((0.5, 0.25, 1.0), (0.5,), (0.5, 1.0, 1.0)):
        with pytest.raises(ValueError, match="prefix_fracs"):
            _cc(fracs=fracs)


def test_planted_directions_recovered_and_attributed(tmp_path):
    from tests.crosscoder.test_planted import recovery

    x, truth = planted_data(n_tokens=40_000, d_model=32, n_shared=48, n_specific=24, seed=0)
    cc = CrosscoderConfig(models=("A", "B"), hooks=("h",), d_model=32, n_latents=256, variant="matryoshka",
                          variant_cfg={"k": 4, "aux_k": 16}, dead_tokens=20_000)
    tc = TrainerConfig(steps=1200, batch_size=512, lr=3e-3, warmup_steps=50, checkpoint_every=0, log_every=0)
    model = Trainer(cc, tc, InMemoryActivations(x, 512, models=("A", "B"), hooks=("h",)), None, progress=False).train()
    best, correct = recovery(model, truth)
    recovered = best > 0.9
    assert recovered.float().mean() >= 0.9, f"recovered {recovered.float().mean():.3f}"
    assert (recovered & correct).float().mean() >= 0.85


def test_plug_in_path_config_cli_save_load_and_resume(tmp_path):
    from featalign.crosscoder.cli import build_parser, resolve_configs

    assert "--prefix-fracs" in build_parser().format_help()
    cc_d, _, _ = resolve_configs(["--variant", "matryoshka", "--k", "2", "--prefix-fracs", "0.5,1"])
    cfg = CrosscoderConfig.from_dict({**cc_d, "models": ("a", "b"), "hooks": ("h",), "d_model": 6, "n_latents": 16})
    assert cfg.variant_cfg == MatryoshkaConfig(k=2, prefix_fracs=(0.5, 1.0))
    x = torch.randn(512, 2, 1, 6, generator=torch.Generator().manual_seed(0))
    tc = TrainerConfig(steps=12, batch_size=64, warmup_steps=0.25, checkpoint_every=4, log_every=4)
    ref = Trainer(cfg, tc, InMemoryActivations(x, 64), tmp_path / "ref", progress=False).train()

    class Kill(Exception):
        pass

    def kill(step, model, metrics):
        if step == 6:
            raise Kill

    with pytest.raises(Kill):
        Trainer(cfg, tc, InMemoryActivations(x, 64), tmp_path / "run", on_step=kill, progress=False).train()
    resumed = Trainer(cfg, tc, InMemoryActivations(x, 64), tmp_path / "run", progress=False).train()
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    loaded = Crosscoder.load(tmp_path / "run")
    assert loaded.cfg == cfg and loaded.variant.threshold.item() > 0
    torch.testing.assert_close(loaded.encode(x[:50]), ref.encode(x[:50]))
