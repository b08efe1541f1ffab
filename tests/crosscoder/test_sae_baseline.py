"""sae_lens baseline: trained by sae_lens on model A only, saved in sae_lens format, applied to every model."""

from __future__ import annotations

import torch

from featalign.crosscoder import InMemoryActivations, planted_data
from featalign.crosscoder.sae_baseline import apply_sae, sae_baseline_eval, train_base_sae


def test_base_sae_trains_saves_and_applies_to_every_model(tmp_path):
    from sae_lens import SAE

    x, _ = planted_data(n_tokens=20_000, seed=0)
    src = InMemoryActivations(x, 256, models=("A", "B"), hooks=("h",))
    sae = train_base_sae(src, tmp_path / "sae", steps=200, k=4, d_sae=128, lr=3e-3, warmup_steps=20)
    assert {p.name for p in (tmp_path / "sae").iterdir()} >= {"cfg.json", "sae_weights.safetensors"}
    again = SAE.load_from_disk(tmp_path / "sae")
    assert again.cfg.metadata.model_name == "A" and again.cfg.d_sae == 128

    xs = x[:2000]
    f_BML, x_hat_BMD = apply_sae(sae, xs)
    for m in range(2):  # reference: the SAE on each model separately
        torch.testing.assert_close(f_BML[:, m], sae.encode(xs[:, m, 0]))
        torch.testing.assert_close(x_hat_BMD[:, m], sae.decode(sae.encode(xs[:, m, 0])))
    ev = sae_baseline_eval(sae, xs, ("A", "B"), batch=512)
    xa = xs[:, 0, 0].double()
    fvu_a = (x_hat_BMD[:, 0].double() - xa).pow(2).sum() / (xa - xa.mean(0)).pow(2).sum()
    assert abs(ev["A"]["fvu"] - fvu_a.item()) < 1e-6
    # trained on A: it explains A well and misses B's own features
    assert ev["A"]["fvu"] < 0.3 < ev["B"]["fvu"]
