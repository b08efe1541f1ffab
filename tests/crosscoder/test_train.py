"""Trainer: bitwise resume after a kill, refusal of changed configs / mismatched stores / newer
checkpoints, NaN handling, schedules, dead-latent tracking."""

from __future__ import annotations

import json
import re

import pytest
import torch

from featalign.crosscoder import Crosscoder, CrosscoderConfig, NaNLossError, InMemoryActivations, Trainer, TrainerConfig
from featalign.crosscoder.config import FORMAT_VERSION
from featalign.crosscoder.train import CHECKPOINT_FILE, METRICS_FILE, lr_factor, sparsity_coef_at

MODELS, HOOKS = ("a", "b"), ("h",)


def _data(n=2048, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 2, 1, d, generator=g) * torch.tensor([1.0, 5.0])[None, :, None, None]


def _cfgs(variant="batchtopk", **tr):
    cc = CrosscoderConfig(models=MODELS, hooks=HOOKS, d_model=16, n_latents=64, variant=variant, dead_tokens=500,
                          variant_cfg={"k": 4} if variant == "batchtopk" else None)
    t = dict(steps=24, batch_size=64, lr=3e-3, warmup_steps=3, checkpoint_every=8, log_every=4, sparsity_coef=0.5)
    return cc, TrainerConfig(**{**t, **tr})


class _Kill(Exception):
    pass


@pytest.mark.parametrize("variant", ["batchtopk", "l1", "jumprelu"])
def test_killed_then_resumed_run_is_bitwise_equal(tmp_path, variant):
    x = _data()
    cc, tc = _cfgs(variant, resample_every=6)  # resampling draws random numbers: must resume too
    ref = Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path / "ref", progress=False).train()

    def kill(step, model, metrics):
        if step == 13:  # between checkpoints (8, 16): steps 9-13 are lost and redone
            raise _Kill

    with pytest.raises(_Kill):
        Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path / "run", on_step=kill,
                progress=False).train()
    assert torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=False)["step"] == 8
    resumed = Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path / "run", progress=False).train()
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k
    assert (tmp_path / "ref" / METRICS_FILE).read_text() == (tmp_path / "run" / METRICS_FILE).read_text()
    loaded = Crosscoder.load(tmp_path / "run")
    assert torch.equal(loaded.W_dec, ref.W_dec)


def test_resume_with_changed_config_is_refused_naming_fields(tmp_path):
    x = _data()
    cc, tc = _cfgs(steps=8)
    Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()
    cc2, tc2 = _cfgs(steps=8, lr=1e-2, log_every=2)  # log_every may change, lr may not
    cc2.variant_cfg.k = 5
    with pytest.raises(ValueError, match=r"crosscoder\.variant_cfg: checkpoint \{'k': 4.*now \{'k': 5.*trainer\.lr") as e:
        Trainer(cc2, tc2, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()
    assert "log_every" not in str(e.value)


def test_newer_checkpoint_format_refused(tmp_path):
    x = _data()
    cc, tc = _cfgs(steps=8)
    Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    state["format_version"] = FORMAT_VERSION + 1
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    with pytest.raises(ValueError, match="newer than this featalign"):
        Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()


def test_store_with_other_models_or_hooks_is_refused(tmp_path):
    cc, tc = _cfgs()
    with pytest.raises(ValueError, match=r"models \('a', 'c'\).*expects \('a', 'b'\)"):
        Trainer(cc, tc, InMemoryActivations(_data(), 64, models=("a", "c"), hooks=HOOKS), tmp_path)
    with pytest.raises(ValueError, match=r"hooks \('h2',\)"):
        Trainer(cc, tc, InMemoryActivations(_data(), 64, models=MODELS, hooks=("h2",)), tmp_path)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    x = _data()
    # global batch 64 over an un-shuffled view: poison tokens that the 11th batch will contain
    src = InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS)
    src.load_state_dict({"epoch": 0, "pos": 0})
    perm = src._epoch_perm()
    x[perm[10 * 64 + 3]] = float("nan")
    cc, tc = _cfgs()
    with pytest.raises(NaNLossError, match="step 10.*last good checkpoint .*checkpoint.pt. is kept"):
        Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()
    state = torch.load(tmp_path / CHECKPOINT_FILE, weights_only=False)
    assert state["step"] == 8
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_schedules_by_hand():
    tc = TrainerConfig(steps=100, warmup_steps=10, decay_frac=0.2, sparsity_coef=2.0, sparsity_warmup_frac=0.05)
    assert [lr_factor(s, tc) for s in (0, 4, 9, 10, 79)] == [0.1, 0.5, 1.0, 1.0, 1.0]
    assert lr_factor(80, tc) == pytest.approx(1.0) and lr_factor(90, tc) == pytest.approx(0.5)
    assert lr_factor(99, tc) == pytest.approx(0.05)
    assert [sparsity_coef_at(s, tc) for s in (0, 4, 50)] == [pytest.approx(0.4), 2.0, 2.0]


def test_dead_latents_tracked_in_tokens(tmp_path):
    """A latent whose encoder can never fire (huge negative bias) is dead after dead_tokens tokens."""
    cc, tc = _cfgs(steps=10, lr=0.0, warmup_steps=1)
    tr = Trainer(cc, tc, InMemoryActivations(_data(), 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False)
    with torch.no_grad():
        tr.model.b_enc[:5] = -1e4
    m = tr.train()
    assert (m.tokens_since_fired[:5] == 640).all()
    assert m.dead_mask()[:5].all()
    rows = [json.loads(ln) for ln in (tmp_path / METRICS_FILE).read_text().splitlines()]
    assert rows[0]["dead_frac"] == 0.0  # after 4 steps = 256 tokens < 500
    assert rows[-1]["dead_frac"] == pytest.approx(m.dead_mask().float().mean().item())
    assert {"recon", "aux", "fvu/a", "fvu/b", "l0", "lr"} <= set(rows[-1])


def test_norm_scale_estimated_to_mean_norm_sqrt_d(tmp_path):
    cc, tc = _cfgs(steps=1)
    x = _data()
    m = Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()
    # 8 batches of 64 from the first epoch's permutation
    src = InMemoryActivations(x, 64)
    xs = torch.cat([next(src) for _ in range(8)])
    expected = 16**0.5 / xs.norm(dim=-1).mean(0)
    torch.testing.assert_close(m.norm_scale, expected)


def test_resample_dead_points_them_at_errors_and_resets_adam(tmp_path):
    cc, tc = _cfgs("l1", steps=12, resample_every=10, resample_until=1.0, lr=1e-3)
    tr = Trainer(cc, tc, InMemoryActivations(_data(), 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False)
    with torch.no_grad():
        tr.model.b_enc[:5] = -1e4  # never fire -> dead after 500 tokens (8 steps)
    seen = {}

    def spy(step, model, metrics):
        if step == 10:
            m = tr.model
            seen["b"] = m.b_enc[:5].clone()
            seen["since"] = m.tokens_since_fired[:5].clone()
            seen["m"] = tr.opt.state[m.W_dec]["exp_avg"][:5].clone()
            seen["dec"] = m.W_dec_LMHD[:5].norm(dim=-1).clone()
            seen["alive"] = m.W_dec_LMHD[5:].norm(dim=-1).mean(0)

    tr.on_step = spy
    tr.train()
    assert torch.equal(seen["b"], torch.zeros(5)) and torch.equal(seen["since"], torch.zeros(5, dtype=torch.long))
    assert torch.equal(seen["m"], torch.zeros_like(seen["m"]))
    torch.testing.assert_close(seen["dec"], seen["alive"].expand(5, -1, -1), rtol=0.05, atol=0)


def test_nan_loss_before_any_checkpoint_does_not_point_at_a_missing_file(tmp_path):
    x = _data()
    src = InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS)
    src.load_state_dict({"epoch": 0, "pos": 0})
    x[src._epoch_perm()[2 * 64]] = float("nan")  # in the 3rd batch, before the first checkpoint (step 8)
    cc, tc = _cfgs()
    with pytest.raises(NaNLossError, match=r"at step \d+; .*no checkpoint was written yet") as e:
        Trainer(cc, tc, InMemoryActivations(x, 64, models=MODELS, hooks=HOOKS), tmp_path, progress=False).train()
    assert "is kept" not in str(e.value) and not (tmp_path / CHECKPOINT_FILE).exists()


def test_full_disk_while_checkpointing_names_the_file_and_the_rerun_resumes(tmp_path, monkeypatch, capsys):
    """ENOSPC from the OS in the middle of a checkpoint write, through the CLI: one line with the path and
    "rerun the same command to resume"; the rerun ends with the uninterrupted run's crosscoder."""
    import errno
    import os

    import featalign.io as io_mod
    from featalign.cli import run_cli
    from featalign.crosscoder.cli import main
    from safetensors.torch import load_file, save_file

    acts = tmp_path / "acts.safetensors"
    save_file({"acts": _data(), "eval_acts": _data(256, seed=1)}, str(acts), metadata={"models": "a,b", "hooks": "h"})
    args = ["--activations", str(acts), "--n-latents", "64", "--variant", "batchtopk", "--k", "4", "--steps", "24", "--batch-size", "64",
            "--checkpoint-every", "8", "--threads", "1"]

    class FullDisk:  # featalign.io's view of `os`: fsync of the second checkpoint write fails like a full disk
        writes = 0

        def __getattr__(self, name):
            return getattr(os, name)

        def fsync(self, fd):
            if ".checkpoint.pt." in os.readlink(f"/proc/self/fd/{fd}"):
                FullDisk.writes += 1
                if FullDisk.writes == 2:
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            return os.fsync(fd)

    monkeypatch.setattr(io_mod, "os", FullDisk())
    assert run_cli(main, "train_crosscoder", args + ["--out", str(tmp_path / "run")]) == 1
    err = [ln for ln in re.split(r"[\r\n]", capsys.readouterr().err) if "error:" in ln][-1]  # after tqdm's bar
    assert f"no space left on device while writing {tmp_path / 'run' / CHECKPOINT_FILE}" in err
    assert "rerun the same command to resume" in err
    assert torch.load(tmp_path / "run" / CHECKPOINT_FILE, weights_only=False)["step"] == 8  # the last good one
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.endswith(".tmp")]
    monkeypatch.setattr(io_mod, "os", os)
    main(args + ["--out", str(tmp_path / "run")])
    main(args + ["--out", str(tmp_path / "ref")])
    a, b = (load_file(str(tmp_path / d / "crosscoder.safetensors")) for d in ("run", "ref"))
    assert all(torch.equal(a[k], b[k]) for k in b)
