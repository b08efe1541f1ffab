"""The sae_lens export: for every variant, the SAE that `sae_lens.SAE.load_from_disk` reads back encodes like
`Crosscoder.encode_as` (featalign's one rule for a model's latents) and decodes like `Crosscoder.decode` at that
model and hook, on random raw activations; and the CLI's refusals."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from sae_lens import SAE

from featalign.crosscoder import Crosscoder, CrosscoderConfig
from featalign.crosscoder.export import PROG, export_sae_lens, main
from featalign.cli import run_cli

VARIANTS = {"l1": None, "batchtopk": {"k": 4}, "jumprelu": None, "matryoshka": {"k": 4}}
MODELS, HOOKS, D, L = ("base", "rl", "sft"), ("blocks.0.hook_resid_post", "blocks.1.hook_resid_post"), 8, 24


def _crosscoder(variant: str) -> Crosscoder:
    """Every parameter random (a fresh crosscoder's encoder is the decoder's transpose and its biases are zero, which
    would hide a wrong slice or a forgotten bias), unequal norm scales, and an inference threshold that cuts."""
    cc = Crosscoder(CrosscoderConfig(models=MODELS, hooks=HOOKS, d_model=D, n_latents=L, variant=variant,
                                     variant_cfg=VARIANTS[variant], seed=1))
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in (cc.W_enc, cc.b_enc, cc.W_dec, cc.b_dec):
            p.copy_(torch.randn(p.shape, generator=g) * 0.3)
        cc.norm_scale.copy_(torch.rand(cc.norm_scale.shape, generator=g) * 0.4 + 0.05)
        if variant in ("batchtopk", "matryoshka"):
            cc.W_dec.view(L, -1)[3] = 0.0  # a latent without decoder never passes the threshold
            cc.variant.threshold.fill_(4.0)
        if variant == "jumprelu":
            cc.variant.log_threshold.copy_(torch.randn(L, generator=g) * 0.5 - 0.5)
    return cc


def _x(n: int = 256, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed)) * 6.0  # raw scale, not normalised


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_loaded_sae_encodes_as_encode_as_and_decodes_as_the_models_decoder(variant, tmp_path):
    cc = _crosscoder(variant)
    cc.save(tmp_path / "cc")
    for model in ("rl", "sft"):
        for h, hook in enumerate(HOOKS):
            out = export_sae_lens(tmp_path / "cc", model, tmp_path / f"sae_{model}_{h}", hook=hook)
            sae = SAE.load_from_disk(out)
            assert sae.cfg.architecture() == ("standard" if variant == "l1" else "jumprelu")
            assert (sae.cfg.metadata.model_name, sae.cfg.metadata.hook_name) == (model, hook)
            x = _x(seed=h)
            f_ref = cc.encode_as(x, model, hook=hook)
            fired = (f_ref > 0).float().mean().item()
            assert 0.05 < fired < 0.7, fired  # a test where nothing or everything fires would prove little
            with torch.no_grad():
                f = sae.encode(x)
                torch.testing.assert_close(f, f_ref, rtol=1e-5, atol=1e-5)
                m, f_any = MODELS.index(model), torch.rand(32, L, generator=torch.Generator().manual_seed(3))
                torch.testing.assert_close(sae.decode(f_any), cc.decode(f_any)[:, m, h], rtol=1e-5, atol=1e-5)
                torch.testing.assert_close(sae(x), cc.decode(f_ref)[:, m, h], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("variant", ["batchtopk", "jumprelu"])
def test_the_threshold_is_what_cuts(variant, tmp_path):
    """The exported threshold matters: without it (threshold 0) the same crosscoder fires more, and the SAE
    follows the crosscoder in both cases (so a threshold dropped by the export would fail the test above)."""
    cc = _crosscoder(variant)
    x = _x()
    cut = cc.encode_as(x, "rl", hook=HOOKS[0])
    with torch.no_grad():
        if variant == "batchtopk":
            cc.variant.threshold.fill_(0.0)
        else:
            cc.variant.log_threshold.fill_(-30.0)
    uncut = cc.encode_as(x, "rl", hook=HOOKS[0])
    assert (cut > 0).sum() < 0.8 * (uncut > 0).sum()
    sae = SAE.load_from_disk(export_sae_lens(cc, "rl", tmp_path / "sae", hook=HOOKS[0]))
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), uncut, rtol=1e-5, atol=1e-5)


def test_one_hook_crosscoder_needs_no_hook_and_takes_an_index(tmp_path):
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl"), hooks=("h",), d_model=D, n_latents=L, seed=3))
    with torch.no_grad():
        cc.b_enc.normal_(generator=torch.Generator().manual_seed(1))
        cc.norm_scale.copy_(torch.tensor([[0.5], [0.2]]))
    sae = SAE.load_from_disk(export_sae_lens(cc, 0, tmp_path / "sae", model_id="org/base-model"))
    assert sae.cfg.metadata.model_name == "org/base-model"
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(sae.encode(x), cc.encode_as(x, "base"), rtol=1e-5, atol=1e-5)


def test_cli_writes_a_loadable_sae_and_refuses_bad_arguments(tmp_path, capsys):
    cc = _crosscoder("batchtopk")
    cc.save(tmp_path / "cc")
    out = tmp_path / "sae"
    assert run_cli(main, PROG, [str(tmp_path / "cc"), "--model", "sft", "--hook", HOOKS[1], "--out", str(out)]) == 0
    assert "load_from_disk" in capsys.readouterr().out
    x = _x()
    with torch.no_grad():
        torch.testing.assert_close(SAE.load_from_disk(out).encode(x), cc.encode_as(x, "sft", hook=HOOKS[1]),
                                   rtol=1e-5, atol=1e-5)
    for argv, said in [
        ([str(tmp_path / "cc"), "--model", "sft", "--out", str(tmp_path / "a")], "several hooks"),
        ([str(tmp_path / "cc"), "--model", "chat", "--hook", HOOKS[0], "--out", str(tmp_path / "b")], "'chat'"),
        ([str(tmp_path / "cc"), "--model", "rl", "--hook", "blocks.9", "--out", str(tmp_path / "c")], "blocks.9"),
        ([str(tmp_path / "none"), "--model", "rl", "--out", str(tmp_path / "d")], "does not exist"),
    ]:
        assert run_cli(main, PROG, argv) == 2
        err = capsys.readouterr().err.strip()
        assert said in err and len(err.splitlines()) == 1 and err.startswith(f"{PROG}: error: "), err
    assert not any((tmp_path / n).exists() for n in "abcd")  # nothing half-written on a refusal


def test_cli_help_runs_as_a_module():
    done = subprocess.run([sys.executable, "-m", "featalign.crosscoder.export", "--help"], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "--model" in done.stdout and "--hook" in done.stdout and "load_from_disk" in done.stdout


@pytest.mark.parametrize("variant", ["l1", "batchtopk"])
def test_fold_W_dec_norm_keeps_the_firings_and_scales_by_the_raw_decoder_norm(variant, tmp_path):
    """What sae-dashboard's quickstart does to an SAE first (`fold_W_dec_norm`): the same latents fire, each
    activation times its raw decoder norm at that model and hook, and the reconstruction is unchanged."""
    cc = _crosscoder(variant)
    sae = SAE.load_from_disk(export_sae_lens(cc, "rl", tmp_path / "sae", hook=HOOKS[1]), fold_W_dec_norm=True)
    x = _x()
    with torch.no_grad():
        f_ref = cc.encode_as(x, "rl", hook=HOOKS[1])
        norm_L = cc.W_dec_raw_LMHD[:, 1, 1].norm(dim=-1)
        f = sae.encode(x)
        assert torch.equal(f > 0, f_ref > 0)
        torch.testing.assert_close(f, f_ref * norm_L, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(sae.decode(f), cc.decode(f_ref)[:, 1, 1], rtol=1e-5, atol=1e-5)
