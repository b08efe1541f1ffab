"""CLI and DDP: `torchrun --nproc_per_node=2` equals one process with the same global batch;
the CLI resumes, writes its files, and refuses mismatched activations."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from featalign.crosscoder import Crosscoder
from featalign.crosscoder.cli import build_parser, main, resolve_configs

COMMON = ["--models", "a,b", "--hooks", "h", "--n-latents", "64", "--steps", "20", "--batch-size", "64",
          "--lr", "3e-3", "--warmup-steps", "2", "--log-every", "5", "--checkpoint-every", "10", "--threads", "1"]


@pytest.fixture()
def acts_file(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 2, 1, 16, generator=g)
    path = tmp_path / "acts.safetensors"
    save_file({"acts": x, "eval_acts": x[:256].clone()}, str(path))
    return path


def test_ddp_two_processes_match_single_process(tmp_path, acts_file):
    # fp32 (the CLI defaults to bf16): the two global-batch sums are compared to fp32 tolerance
    args = ["--activations", str(acts_file), "--variant", "l1", "--sparsity-coef", "0.5", "--no-eval",
            "--bf16", "false"] + COMMON
    main(args + ["--out", str(tmp_path / "single")])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
         "-m", "featalign.train_crosscoder", *args, "--out", str(tmp_path / "ddp")],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
    )
    try:
        _, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the workers too, not only torchrun
        raise
    assert proc.returncode == 0, err[-3000:]
    a, b = Crosscoder.load(tmp_path / "single"), Crosscoder.load(tmp_path / "ddp")
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5, msg=k)
    assert not torch.equal(a.W_dec, Crosscoder(a.cfg).W_dec)  # it trained
    la = [json.loads(x) for x in (tmp_path / "single" / "metrics.jsonl").read_text().splitlines()]
    lb = [json.loads(x) for x in (tmp_path / "ddp" / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in la] == [x["step"] for x in lb]
    for x, y in zip(la, lb):
        assert y["loss"] == pytest.approx(x["loss"], rel=1e-4)


def test_cli_writes_outputs_evaluates_and_resumes(tmp_path, acts_file):
    out = tmp_path / "run"
    rep = main(["--activations", str(acts_file), "--out", str(out), "--sae-k", "4", "--sae-baseline"] + COMMON)
    assert {p.name for p in out.iterdir()} >= {"cfg.json", "crosscoder.safetensors", "metrics.jsonl",
                                                 "checkpoint.pt", "trainer_cfg.json", "eval.json", "sae_baseline"}
    assert set(rep["eval"]["per_model"]) == {"a", "b"}
    assert (out / "sae_baseline" / "sae_weights.safetensors").exists()
    assert set(rep["sae_baseline"]["eval"]) == {"a", "b"}
    m = Crosscoder.load(out)
    assert m.cfg.models == ("a", "b") and m.cfg.variant == "l1"
    # rerun with more steps and a changed trainer field -> refused with the field named
    with pytest.raises(ValueError, match=r"trainer\.steps: checkpoint 20 vs now 30"):
        main(["--activations", str(acts_file), "--out", str(out)] + COMMON + ["--steps", "30"])
    with pytest.raises(ValueError, match=r"config expects \[N, 3, 1, 16\]"):
        main(["--activations", str(acts_file), "--out", str(tmp_path / "x"), "--models", "a,b,c", "--hooks", "h"])


def test_config_file_and_flags(tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("crosscoder:\n  n_latents: 99\n  variant: l1\ntrainer:\n  lr: 0.01\n  steps: 7\nrun:\n  out: here\n")
    cc, tr, run = resolve_configs(["--config", str(cfg), "--steps", "8", "--train-seed", "3"])
    assert cc == {"n_latents": 99, "variant": "l1"}
    assert tr == {"lr": 0.01, "steps": 8, "seed": 3}
    assert run.out == "here"


def test_help_documents_every_option():
    p = build_parser()
    for action in p._actions:
        assert action.help and action.help != "==SUPPRESS==", action.dest


def test_activations_without_eval_rows_is_in_sample_and_names_come_from_the_file(tmp_path, capsys):
    x = torch.randn(1024, 2, 1, 16, generator=torch.Generator().manual_seed(1))
    plain, named = tmp_path / "plain.safetensors", tmp_path / "named.safetensors"
    save_file({"acts": x}, str(plain))
    save_file({"acts": x}, str(named), metadata={"models": "base,rl", "hooks": "blocks.3.hook_resid_post"})
    small = ["--n-latents", "32", "--steps", "10", "--batch-size", "64", "--threads", "1", "--eval-tokens", "300"]
    # no names in the file and none given: refused (it used to invent model0/model1 and hook0)
    with pytest.raises(ValueError, match="does not name its models.*pass --models"):
        main(["--activations", str(plain), "--out", str(tmp_path / "a")] + small)
    assert not (tmp_path / "a").exists()
    with pytest.warns(UserWarning, match="last 300 rows"):
        rep = main(["--activations", str(named), "--out", str(tmp_path / "b")] + small)
    cc = Crosscoder.load(tmp_path / "b")
    assert cc.cfg.models == ("base", "rl") and cc.cfg.hooks == ("blocks.3.hook_resid_post",)
    ev = json.loads((tmp_path / "b" / "eval.json").read_text())
    assert ev["in_sample"] is True and ev["n_tokens"] == 300 and rep["eval"]["in_sample"] is True
    assert "300 in-sample tokens" in capsys.readouterr().out
    # flags win over the file's names
    main(["--activations", str(named), "--out", str(tmp_path / "c"), "--models", "p,q", "--hooks", "h"] + small)
    assert Crosscoder.load(tmp_path / "c").cfg.models == ("p", "q")


def test_store_eval_warning_states_the_rows_it_really_uses(tmp_path, ref_store_small):
    with pytest.warns(UserWarning, match=f"last {len(ref_store_small)} rows of the training store"):
        rep = main(["--store", str(ref_store_small.root), "--out", str(tmp_path / "r"), "--n-latents", "32",
                    "--steps", "5", "--batch-size", "64", "--eval-tokens", "100000", "--threads", "1"])
    assert rep["eval"]["in_sample"] is True and rep["eval"]["n_tokens"] == len(ref_store_small)


@pytest.fixture()
def ref_store_small(tmp_path):
    """A 500-row store written by the store writer itself (no models needed)."""
    from featalign.activations import ActivationStore, StoreLayout, StoreWriter

    layout = StoreLayout([{"name": "a", "path": "a"}, {"name": "b", "path": "b"}], ["h"], 16)
    with StoreWriter(tmp_path / "store", layout) as w:
        w.add(torch.randn(500, 2, 1, 16, generator=torch.Generator().manual_seed(2)), 0, "test")
        w.commit(1, "test")
    return ActivationStore(tmp_path / "store")


def test_help_says_which_defaults_are_resolved_at_run_time():
    text = " ".join(build_parser().format_help().split())
    assert "activation width (default: the activations' width)" in text
    assert "(default: 128)" not in text and "default: blocks.1.hook_resid_post" not in text
    helps = {a.dest: a.help for a in build_parser()._actions}
    assert helps["seed"] != helps["train_seed"] and "data order" in helps["train_seed"]


@pytest.mark.parametrize("fast", [True, False])
def test_bf16_default_follows_the_device_measurement_and_a_flag_overrides_it(tmp_path, acts_file, monkeypatch, fast):
    import featalign.crosscoder.train as train_mod

    calls = []

    def probe(device):
        calls.append(str(device))
        return fast

    monkeypatch.setattr(train_mod, "bf16_matmul_is_fast", probe)
    out = tmp_path / "run"
    main(["--activations", str(acts_file), "--out", str(out), "--no-eval"] + COMMON)
    assert calls == ["cpu"]
    assert json.loads((out / "trainer_cfg.json").read_text())["bf16"] is fast
    main(["--activations", str(acts_file), "--out", str(tmp_path / "flag"), "--no-eval", "--bf16", str(not fast).lower()]
         + COMMON)
    assert calls == ["cpu"]  # an explicit flag is not second-guessed
    assert json.loads((tmp_path / "flag" / "trainer_cfg.json").read_text())["bf16"] is (not fast)


def test_bf16_probe_agrees_with_a_larger_timing_where_the_two_dtypes_differ_clearly():
    import time

    from featalign.crosscoder.train import bf16_matmul_is_fast

    def best(dtype):
        a = torch.randn(384, 384).to(dtype)
        torch.mm(a, a)
        ts = []
        for _ in range(3):
            t = time.perf_counter()
            torch.mm(a, a)
            ts.append(time.perf_counter() - t)
        return min(ts)

    ratio = best(torch.float32) / best(torch.bfloat16)  # > 1: bf16 faster
    if 1 / 1.5 < ratio < 1.5:
        pytest.skip(f"bf16 and fp32 within 1.5x of each other here ({ratio:.2f}): no clear answer to check")
    assert bf16_matmul_is_fast("cpu") == (ratio > 1)
