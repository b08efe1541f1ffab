"""End to end on the tiny organisms: CLI default path (cache -> train -> eval with splice-in), and
splice-in loss checked against crosscoders whose reconstruction is known exactly."""

from __future__ import annotations

import json

import pytest
import torch

from featalign.crosscoder import Crosscoder, CrosscoderConfig
from featalign.crosscoder.evaluate import splice_in_loss
from featalign.crosscoder.cli import main


def test_cli_on_tiny_organisms_end_to_end(tmp_path, tiny_organisms):
    out = tmp_path / "cc"
    args = ["--organisms-preset", "tiny", "--organisms-dir", str(tiny_organisms.root), "--out", str(out),
            "--n-tokens", "6000", "--eval-tokens", "1000", "--steps", "40", "--batch-size", "128",
            "--n-latents", "128", "--splice-seqs", "32", "--threads", "1"]
    rep = main(args)
    cfg = json.loads((out / "cfg.json").read_text())
    assert cfg["models"] == ["base", "rl", "sft"] and cfg["hooks"] == ["blocks.0.hook_resid_post"]
    assert cfg["d_model"] == tiny_organisms.config.d_model
    ev = json.loads((out / "eval.json").read_text())
    for name in ("base", "rl", "sft"):
        s = ev["per_model"][name]["splice"]
        assert s["zero"] > s["clean"] and 0 < ev["per_model"][name]["fvu"] < 1
    assert rep["eval"]["n_tokens"] == 1000
    # rerun: everything reused, nothing retrained (the checkpoint is at the last step)
    before = (out / "metrics.jsonl").read_text()
    main(args + ["--no-eval"])
    assert (out / "metrics.jsonl").read_text() == before
    # the cached store trains directly with --store; models/hooks come from its manifest
    common = ["--steps", "3", "--batch-size", "64", "--n-latents", "64", "--variant", "batchtopk", "--k", "4", "--no-eval", "--threads", "1"]
    main(["--store", str(out / "activations"), "--out", str(tmp_path / "s")] + common)
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["models"] == ["base", "rl", "sft"]
    # evaluation with --store: the held-out --eval-store, or (with a warning) the training store's last rows
    ev_args = ["--steps", "3", "--batch-size", "64", "--n-latents", "64", "--threads", "1",
               "--splice-seqs", "0", "--eval-tokens", "500"]
    held = main(["--store", str(out / "activations"), "--eval-store", str(out / "eval_activations"),
                 "--out", str(tmp_path / "h")] + ev_args)["eval"]
    assert held["in_sample"] is False and held["n_tokens"] == 500
    with pytest.warns(UserWarning, match="in-sample"):
        ins = main(["--store", str(out / "activations"), "--out", str(tmp_path / "i")] + ev_args)["eval"]
    assert ins["in_sample"] is True
    assert held["per_model"]["base"]["fvu"] != ins["per_model"]["base"]["fvu"]  # other rows were scored
    from featalign.activations import TaskSuiteSource, cache_activations

    two = {k: str(v) for k, v in tiny_organisms.default_trio().items() if k != "sft"}
    cache_activations(two, TaskSuiteSource(split="eval", seed=1), hooks=("blocks.0.hook_resid_post",),
                      out_dir=tmp_path / "two", n_tokens=300)
    with pytest.raises(ValueError, match="--eval-store holds models"):
        main(["--store", str(out / "activations"), "--eval-store", str(tmp_path / "two"),
              "--out", str(tmp_path / "bad")] + ev_args)
    with pytest.raises(ValueError, match=r"activation source has models \('base', 'rl', 'sft'\)"):
        main(["--store", str(out / "activations"), "--out", str(tmp_path / "s2"), "--models", "base,rl"] + common)


def _cc(models, hooks, d):
    cfg = CrosscoderConfig(models=tuple(models), hooks=tuple(hooks), d_model=d, variant="l1",
                           n_latents=2 * len(models) * len(hooks) * d)
    return Crosscoder(cfg)


def test_splice_in_exact_reconstruction_equals_clean_and_zero_decoder_equals_ablation(tiny_organisms):
    dirs = {k: str(v) for k, v in tiny_organisms.default_trio().items()}
    hooks, d = ("blocks.0.hook_resid_post",), tiny_organisms.config.d_model
    cc = _cc(dirs, hooks, d)
    K = cc.cfg.d_in
    with torch.no_grad():  # relu(x) - relu(-x) = x: a crosscoder that reconstructs exactly
        eye = torch.eye(K)
        cc.W_enc.copy_(torch.cat([eye, -eye], 1))
        cc.W_dec.copy_(torch.cat([eye, -eye], 0))
        cc.norm_scale.fill_(0.37)  # normalisation must cancel out (raw in, raw out)
    r = splice_in_loss(cc, dirs, n_seqs=24)
    for name in dirs:
        assert r[name]["spliced"] == pytest.approx(r[name]["clean"], abs=1e-5)
        assert r[name]["loss_recovered"] == pytest.approx(1.0, abs=1e-3)
    with torch.no_grad():
        cc.W_dec.zero_()
    r0 = splice_in_loss(cc, dirs, n_seqs=24)
    for name in dirs:
        assert r0[name]["spliced"] == pytest.approx(r0[name]["zero"], abs=1e-6)
        assert r0[name]["zero"] > r0[name]["clean"]
