import numpy as np
import pytest
import torch

from featalign.analysis.attribution import attribute
from featalign.analysis.controls import (
    control_activations, count_interval, difference_interval, independent_difference_interval, specific_masks,
)
from featalign.crosscoder import CrosscoderConfig, InMemoryActivations, TrainerConfig, train_crosscoder, planted_data


def test_control_activations():
    x = torch.arange(10.0).reshape(10, 1, 1, 1)
    same = control_activations(x, "same")
    assert torch.equal(same[:, 0], same[:, 1]) and same.shape == (10, 2, 1, 1)
    dis = control_activations(x, "disjoint", seed=3)
    assert dis.shape == (5, 2, 1, 1)
    a, b = set(dis[:, 0].flatten().tolist()), set(dis[:, 1].flatten().tolist())
    assert not a & b and len(a | b) == 10
    with pytest.raises(ValueError, match="one model's activations"):
        control_activations(torch.zeros(4, 2, 1, 3), "same")
    with pytest.raises(ValueError, match="control kind"):
        control_activations(x, "other")


def test_count_interval():
    mask = np.zeros(400, bool)
    mask[:100] = True
    ci = count_interval(mask, seed=0)
    assert ci.count == 100 and ci.method == "bootstrap"
    # binomial sd = sqrt(400 * .25 * .75) ~ 8.7: the 95% interval is about +-17
    assert 100 - 25 < ci.low < 100 - 10 and 100 + 10 < ci.high < 100 + 25
    zero = count_interval(np.zeros(100, bool))
    assert zero.count == 0 and zero.low == 0 and zero.high == pytest.approx(3.62, abs=0.05)  # exact "rule of 3"
    d = difference_interval(mask, np.zeros(400, bool))
    assert d["difference"] == 100 and d["low"] > 50 and d["p_le_0"] == 0
    d2 = independent_difference_interval(mask, mask)
    assert d2["difference"] == 0 and d2["low"] < 0 < d2["high"]


def test_specific_masks():
    nrn = torch.tensor([0.95, 0.05, 0.5, 0.7, 0.92])
    m = specific_masks(nrn, torch.tensor([True, True, True, True, False]))
    assert m["t_only"].tolist() == [True, False, False, False, False]
    assert m["o_only"].tolist() == [False, True, False, False, False]
    assert m["shared"].tolist() == [False, False, True, False, False]
    assert m["t_lean"].tolist() == [True, False, False, True, False]


def _train(x, out, steps=300):
    cfg = CrosscoderConfig(models=("a", "b"), hooks=("h",), d_model=x.shape[-1], n_latents=64, variant="l1")
    tcfg = TrainerConfig(steps=steps, batch_size=512, lr=3e-3, warmup_steps=20, sparsity_coef=0.3,
                         checkpoint_every=10_000, log_every=10_000)
    return train_crosscoder(cfg, tcfg, InMemoryActivations(x, 512, seed=0), out, progress=False)


def test_base_vs_base_controls_calibrate(tmp_path):
    """Same model twice -> no specific latents; disjoint halves -> many (the null's two ends)."""
    x, _ = planted_data(n_tokens=6000, d_model=16, n_shared=24, n_specific=0, seed=1)
    base = x[:, :1]
    counts = {}
    for kind in ("same", "disjoint"):
        cc = _train(control_activations(base, kind), tmp_path / kind)
        att = attribute(cc, control_activations(base, kind)[:2000])
        m = specific_masks(att.nrn["a|b"], att.enc["firing_rate"] > 0)
        counts[kind] = int(m["t_only"].sum() + m["o_only"].sum())
        assert m["alive"].sum() > 10
    assert counts["same"] == 0
    assert counts["disjoint"] >= 10
