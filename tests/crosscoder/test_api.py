"""The trainer's public API as a script drives it: in-memory runs, 0 = never for log/checkpoint
intervals, the step callback, warmup as a fraction, 3-D in-memory activations, the training-rule
evaluation, the raw-space decoder, and help text on every config field."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from featalign.crosscoder import (
    VARIANTS, Crosscoder, CrosscoderConfig, InMemoryActivations, Trainer, TrainerConfig, evaluate,
)
from featalign.crosscoder.train import lr_factor
from featalign.crosscoder.variants import field_help

MODELS, HOOKS = ("a", "b"), ("h",)


def _cfg(variant="batchtopk") -> CrosscoderConfig:
    return CrosscoderConfig(models=MODELS, hooks=HOOKS, d_model=8, n_latents=32, variant=variant,
                            variant_cfg={"k": 4} if variant == "batchtopk" else None, dead_tokens=500)


def _x(n=1024):
    return torch.randn(n, 2, 8, generator=torch.Generator().manual_seed(0))  # [N, M, D]: one hook


def test_in_memory_run_with_zero_intervals_writes_nothing_and_calls_back(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    seen = []
    tc = TrainerConfig(steps=7, batch_size=64, log_every=0, checkpoint_every=0, warmup_steps=0.3)
    m = Trainer(_cfg(), tc, InMemoryActivations(_x(), 64), None, progress=False,
                on_step=lambda s, model, metrics: seen.append((s, model, metrics))).train()
    assert list(tmp_path.iterdir()) == []
    assert [s for s, _, _ in seen] == list(range(1, 8)) and all(mod is m for _, mod, _ in seen)
    assert {"loss", "recon", "aux"} <= set(seen[0][2]) and isinstance(seen[0][2]["loss"], float)
    assert {"fvu/a", "fvu/b", "l0", "dead_frac", "threshold"} <= set(seen[-1][2])  # the last step is logged
    assert m.variant.threshold.item() > 0


def test_zero_intervals_on_disk_log_and_checkpoint_only_at_the_end(tmp_path):
    tc = TrainerConfig(steps=5, batch_size=64, log_every=0, checkpoint_every=0)
    Trainer(_cfg("l1"), tc, InMemoryActivations(_x(), 64), tmp_path, progress=False).train()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 1
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=False)["step"] == 5
    with pytest.raises(ValueError, match="log_every must be >= 0"):
        TrainerConfig(log_every=-1)


def test_warmup_fraction_of_steps():
    tc = TrainerConfig(steps=300, warmup_steps=0.1, decay_frac=0.0)
    assert tc.warmup == 30 and lr_factor(14, tc) == pytest.approx(0.5) and lr_factor(29, tc) == 1.0
    assert TrainerConfig(steps=300, warmup_steps=100).warmup == 100
    with pytest.raises(ValueError, match="warmup_steps"):
        TrainerConfig(warmup_steps=2.5)


def test_three_d_in_memory_activations_are_one_hook():
    x = _x(256)
    src3, src4 = InMemoryActivations(x, 64, seed=1), InMemoryActivations(x[:, :, None], 64, seed=1)
    a, b = next(src3), next(src4)
    assert a.shape == (64, 2, 1, 8) and torch.equal(a, b)
    with pytest.raises(ValueError, match=r"\[N, M, D\]"):
        InMemoryActivations(x[:, 0], 64)


def test_evaluate_training_rule_matches_the_training_forward():
    tc = TrainerConfig(steps=20, batch_size=128, log_every=0, checkpoint_every=0)
    m = Trainer(_cfg(), tc, InMemoryActivations(_x(), 128), None, progress=False).train()
    x = _x(512)[:, :, None]
    inf, tr = evaluate(m, x, batch=128), evaluate(m, x, batch=128, rule="training")
    assert inf["rule"] == "inference" and tr["rule"] == "training"
    assert tr["l0"] == pytest.approx(4.0)  # the batch top-k keeps exactly k per token on average
    with torch.no_grad():  # the training rule by hand: the training forward's reconstruction, in raw space
        err = torch.zeros(2, dtype=torch.float64)
        for i in range(0, 512, 128):
            xb = x[i : i + 128]
            out = m.training_forward(m.normalise(xb))
            x_hat = out.x_hat_BK.view(-1, 2, 1, 8) / m.norm_scale[None, :, :, None]
            err += (x_hat - xb).double().pow(2).sum((0, 2, 3))
        var = (x.double() - x.double().mean(0)).pow(2).sum((0, 2, 3))
    assert [tr["per_model"][k]["fvu"] for k in MODELS] == pytest.approx((err / var).tolist(), rel=1e-6)
    with pytest.raises(ValueError, match="rule must be one of"):
        evaluate(m, x, rule="nope")


def test_raw_space_decoder_is_decode_minus_bias():
    m = Crosscoder(_cfg("l1"))
    with torch.no_grad():
        m.norm_scale.copy_(torch.tensor([[0.5], [3.0]]))
        m.b_dec.normal_()
    f = torch.zeros(1, 32)
    f[0, 7] = 1.0
    torch.testing.assert_close(m.decode(f)[0] - m.decode(torch.zeros(1, 32))[0], m.W_dec_raw_LMHD[7])
    torch.testing.assert_close(m.decode(torch.zeros(1, 32))[0], m.b_dec_raw_MHD)


def test_every_config_field_has_help_text():
    classes = [CrosscoderConfig, TrainerConfig] + [v.Config for v in VARIANTS.values()]
    missing = [f"{c.__name__}.{f.name}" for c in classes for f in dataclasses.fields(c) if not field_help(f)]
    assert missing == []


def test_sparsity_default_is_the_documented_one():
    from pathlib import Path

    doc = " ".join((Path(__file__).parents[2] / "docs" / "crosscoder.md").read_text().replace("**", "").split())
    assert TrainerConfig.sparsity_coef == 1.0 and "sparsity coefficient defaults to 1.0" in doc
