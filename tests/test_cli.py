"""Every CLI answers a bad input with one line naming the problem and the fix, before any work.

Each case runs the CLI's `main` through `run_cli` (what `python -m ...` runs) and checks the exit
status, that stderr is one line with the expected words, and that nothing was written.
"""

from __future__ import annotations

import errno
import json

import pytest
import torch

from featalign.activations import cli as cache
from featalign.analysis import cli as analyze
from featalign.crosscoder import cli as train_crosscoder
from featalign.cli import INTERRUPTED, UsageError, error_message, run_cli
from featalign.organisms import cli as organisms_cli
from tests.test_examples import _load as _example


def _fails(main, argv, capsys, *words, code=2) -> str:
    """Run `main(argv)` as the CLI does; return its one-line error after checking status and words."""
    rc = run_cli(main, "prog", argv)
    err = capsys.readouterr().err.strip()
    assert rc == code, err
    assert len(err.splitlines()) == 1, err
    assert err.startswith("prog: error: ") and "FEATALIGN_DEBUG=1" in err, err
    for w in words:
        assert w in err, (w, err)
    return err


# --- the one error path -----------------------------------------------------------------------------


def test_run_cli_one_line_interrupt_disk_full_and_debug(capsys, monkeypatch):
    def boom(argv):
        raise ValueError("first line\n  second line")

    assert run_cli(boom, "prog", []) == 1
    assert capsys.readouterr().err.strip() == "prog: error: first line second line (set FEATALIGN_DEBUG=1 for the traceback)"

    def interrupted(argv):
        raise KeyboardInterrupt

    assert run_cli(interrupted, "prog", []) == 130
    assert capsys.readouterr().err.strip() == f"prog: {INTERRUPTED}"
    assert "rerun the same command to resume" in INTERRUPTED

    full = OSError(errno.ENOSPC, "No space left on device", "/data/run/checkpoint.pt")
    msg = error_message(full)
    assert "/data/run/checkpoint.pt" in msg and "rerun the same command to resume" in msg

    monkeypatch.setenv("FEATALIGN_DEBUG", "1")
    with pytest.raises(ValueError, match="first line"):
        run_cli(boom, "prog", [])


def test_device_cuda_on_a_cpu_only_torch_is_refused(capsys, monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for main, argv in ((cache.main, ["--device", "cuda", "--out", str(tmp_path / "c")]),
                       (train_crosscoder.main, ["--device", "cuda", "--out", str(tmp_path / "t")])):
        _fails(main, argv, capsys, "--device cuda", "use --device cpu")
    assert not list(tmp_path.iterdir())


# --- python -m featalign.cache ----------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--batch-size", "0"], ["--batch-size must be > 0, got 0"]),  # used to hang forever
    (["--n-tokens", "0"], ["--n-tokens must be > 0"]),  # used to write a 0-row store
    (["--n-tokens", "-5"], ["--n-tokens must be > 0, got -5"]),
    (["--context-size", "0"], ["--context-size must be > 0"]),  # used to become n_ctx silently
    (["--domains", "add,chess"], ["unknown domain 'chess'", "featalign.organisms domains"]),
    (["--model", "base"], ["write NAME=PATH"]),
    (["--tokenizer", "/nonexistent/tok"], ["--tokenizer /nonexistent/tok does not exist"]),
    (["--text-file", "/nonexistent.txt"], ["--text-file /nonexistent.txt does not exist"]),
    (["--preset", "huge"], ["--preset must be one of"]),
    (["--dataset", "/nonexistent/ds"], ["--dataset /nonexistent/ds does not exist"]),
])
def test_cache_refuses_bad_arguments_before_loading_models(argv, words, capsys, tmp_path):
    _fails(cache.main, argv + ["--out", str(tmp_path / "store")], capsys, *words)
    assert not (tmp_path / "store").exists()


def test_cache_refuses_an_empty_text_file_and_an_out_that_is_a_file(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    _fails(cache.main, ["--text-file", str(empty), "--out", str(tmp_path / "s")], capsys, "no non-empty lines")
    text = tmp_path / "t.txt"
    text.write_text("add 1+2=3\n")
    _fails(cache.main, ["--text-file", str(text), "--seed", "3", "--out", str(tmp_path / "s")], capsys,
           "--domains and --seed choose the task suite", "drop them")
    assert not (tmp_path / "s").exists()
    f = tmp_path / "afile"
    f.write_text("x")
    _fails(cache.main, ["--out", str(f)], capsys, f"--out {f} is a file", "pass a folder path")


# --- python -m featalign.train_crosscoder -----------------------------------------------------------


def test_train_crosscoder_refuses_bad_settings_before_caching(capsys, tmp_path):
    out = tmp_path / "run"
    org = tmp_path / "organisms"  # would be built (minutes) if any of these got through
    base = ["--out", str(out), "--organisms-dir", str(org), "--organisms-preset", "tiny"]
    _fails(train_crosscoder.main, base + ["--n-latents", "0"], capsys, "n_latents must be >= 1, got 0")
    _fails(train_crosscoder.main, base + ["--variant", "batchtopc"], capsys, "variant must be one of", "'batchtopc'")
    _fails(train_crosscoder.main, base + ["--models", "base,rll"], capsys, "unknown model(s) ['rll']", "base, rl, sft")
    _fails(train_crosscoder.main, base + ["--log-to", "tensorbord"], capsys, "--log-to must be one of")
    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps({"run": {"n_token": 5}}))
    _fails(train_crosscoder.main, base + ["--config", str(cfg)], capsys, "unknown field(s) ['n_token']", "n_tokens")
    cfg.write_text(json.dumps({"run": {"n_tokens": "many"}, "trainer": {}}))
    _fails(train_crosscoder.main, base + ["--config", str(cfg)], capsys, "'n_tokens' must be int", "'many'")
    cfg.write_text(json.dumps({"trainer": {"steps": "600"}}))
    _fails(train_crosscoder.main, base + ["--config", str(cfg)], capsys, "'steps' must be int")
    cfg.write_text("{not json")
    _fails(train_crosscoder.main, base + ["--config", str(cfg)], capsys, "is not valid JSON")
    _fails(train_crosscoder.main, base + ["--store", str(tmp_path / "nope")], capsys, "--store", "does not exist")
    assert not out.exists() and not org.exists()
    f = tmp_path / "afile"
    f.write_text("")
    _fails(train_crosscoder.main, ["--out", str(f)], capsys, f"--out {f} is a file")


# --- python -m featalign.analyze --------------------------------------------------------------------


@pytest.mark.parametrize("argv, words", [
    (["--positions", "lsat"], ["positions must be one of", "'lsat'"]),
    (["--variant", "topk"], ["variant must be one of"]),
    (["--stages", "attribution,drfit"], ["unknown stage(s) ['drfit']"]),
    (["--n-latents", "0"], ["n_latents must be >= 1"]),
    (["--k", "5000"], ["k=5000 must be in 1..n_latents=1024"]),
    (["--crosscoder", "/nonexistent/cc"], ["--crosscoder", "does not exist"]),
])
def test_analyze_refuses_bad_settings_before_work(argv, words, capsys, tmp_path):
    _fails(analyze.main, argv + ["--out", str(tmp_path / "rep"), "--organisms-dir", str(tmp_path / "org")],
           capsys, *words)
    assert not list(tmp_path.iterdir())


# --- python -m featalign.organisms, examples --------------------------------------------------------


def test_organisms_cli_refuses_bad_domain_and_file_out(capsys, tmp_path):
    _fails(organisms_cli.main, ["build", "--preset", "tiny", "--post-train-domains", "add,chess", "--out",
                                str(tmp_path / "o")], capsys, "unknown domain 'chess'")
    f = tmp_path / "f"
    f.write_text("")
    _fails(organisms_cli.main, ["build", "--preset", "tiny", "--out", str(f)], capsys, "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f"]


@pytest.mark.parametrize("name, argv, words", [
    ("reproduce_drift", ["--variant", "l2"], ["variant must be one of"]),
    ("reproduce_drift", ["--series", "rl=a,b"], ["--series needs the main models"]),
    ("reproduce_drift", ["--model", "base"], ["write NAME=PATH"]),
    ("reproduce_feature_interventions", ["--selection-tasks", "modsum,chess"], ["unknown domain 'chess'"]),
    ("reproduce_feature_interventions", ["--steer-coef", "inf"], ["must be finite"]),
    ("reproduce_feature_interventions", ["--k", "0"], ["k=0 must be in 1..n_latents"]),
    ("reproduce_transfer_study", ["--pairs", "onlyone"], ["base:tuned"]),
    ("reproduce_transfer_study", ["--domains", "add,chess"], ["unknown domain 'chess'"]),
    ("reproduce_transfer_study", ["--skip-build", "true", "--tasks", "missing.jsonl", "--pairs", ".:."],
     ["task file missing.jsonl does not exist"]),
    ("reproduce_transfer_study", ["--skip-build", "true", "--pairs", ".:.:chess"], ["['chess'] are not tasks"]),
    ("reproduce_transfer_study", ["--train-tasks", "add"], ["--train-tasks names what a model set"]),
])
def test_examples_refuse_bad_settings_before_work(name, argv, words, capsys, tmp_path):
    _fails(_example(name).main, argv + ["--out", str(tmp_path / "o")], capsys, *words)
    assert not (tmp_path / "o").exists()


def test_usage_error_is_a_value_error():
    """Callers of the Python API catch ValueError as before."""
    assert issubclass(UsageError, ValueError)
