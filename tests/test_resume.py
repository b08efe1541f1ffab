"""Every long command, killed at a random moment and rerun, ends with the files of an uninterrupted run.

Each test starts the real CLI in a subprocess, waits until it is doing the interruptible work, kills it
after a random delay (SIGKILL: no cleanup runs; SIGINT for train_crosscoder, whose message is checked),
reruns the same command and compares every file byte for byte with an uninterrupted run. Only what is
a clock reading by design differs: `timings.json`, the `timings_s` of report.json, the "Timings" line of
report.md, and the writer's lock file (it holds the writer's pid). The delay is printed on failure;
`FEATALIGN_KILL_SEED=<n>` replays one.

Narrower kills at fixed points (after the n-th shard / step / checkpoint) are tested next to each
component: tests/activations/test_cache.py, tests/crosscoder/test_train.py, tests/organisms/test_build.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest
from safetensors.torch import save_file

SEED = int(os.environ.get("FEATALIGN_KILL_SEED", time.time_ns() % 1_000_000))


def _digest(path: Path) -> str:
    """Bytes of a file, with the clock readings of the reports taken out."""
    data = path.read_bytes()
    if path.name in ("report.json", "results.json"):  # analyze's stage timings, an example's run time
        d = json.loads(data)
        d.pop("timings_s", None)
        d.pop("seconds", None)
        data = json.dumps(d, sort_keys=True).encode()
    elif path.name == "report.md":
        data = b"\n".join(ln for ln in data.splitlines()
                          if not ln.startswith((b"Timings (s):", b"Total time:")))
    return hashlib.sha256(data).hexdigest()


def tree(root: Path) -> dict[str, str]:
    """{relative path: digest} of every file under `root`, except clock readings and lock files."""
    return {str(p.relative_to(root)): _digest(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "timings.json" and not p.name.startswith(".lock.")}


def _command(argv: list[str]) -> list[str]:
    """`python -m module ...`, or `python script.py ...` for the example scripts."""
    return [sys.executable, *argv] if argv[0].endswith(".py") else [sys.executable, "-m", *argv]


def kill_at_random_moment(argv: list[str], busy: Callable[[], bool], max_delay_s: float,
                          sig: int = signal.SIGKILL) -> tuple[str, subprocess.Popen, str]:
    """Run `python -m argv`, wait until `busy()` (the long part has started), sleep a random time in
    [0, max_delay_s], send `sig`. Returns (a description of the kill for messages, the process, stderr)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    # SIGINT at its default disposition: a test runner started in the background inherits it ignored
    proc = subprocess.Popen(_command(argv), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.time()
    while not busy() and proc.poll() is None and time.time() - t0 < 300:
        time.sleep(0.05)
    delay = random.Random(SEED).uniform(0, max_delay_s)
    time.sleep(delay)
    killed = proc.poll() is None
    if killed:
        proc.send_signal(sig)
    _, err = proc.communicate(timeout=300)
    what = (f"{'killed' if killed else 'finished before the kill'} {delay:.2f} s after the work began "
            f"(FEATALIGN_KILL_SEED={SEED})")
    return what, proc, err


def _run(argv: list[str], what: str = "uninterrupted run") -> None:
    """The command in a fresh process, as a user runs it (an in-process run shares global torch state
    with whatever the test process loaded before)."""
    r = subprocess.run(_command(argv), env={**os.environ, "OMP_NUM_THREADS": "1"},
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, f"{what} failed: {r.stderr[-3000:]}"


def reference_tree(argv: list[str], out: Path) -> dict[str, str]:
    """The files of an uninterrupted run of `argv` (which writes to `out`); `out` is removed afterwards,
    so the interrupted run writes to the very same path (reports record it)."""
    import shutil

    _run(argv)
    ref = tree(out)
    shutil.rmtree(out)
    return ref


def _rerun_equals(argv: list[str], out: Path, reference: dict[str, str], what: str) -> None:
    _run(argv, f"{what}; the rerun")
    got = tree(out)
    assert got.keys() == reference.keys(), f"{what}: files differ {sorted(set(got) ^ set(reference))}"
    differ = [k for k in got if got[k] != reference[k]]
    assert not differ, f"{what}: contents differ in {differ}"


@pytest.mark.slow
def test_organisms_build_killed_during_post_training(tiny_organisms, tmp_path):
    """The reference is the session's uninterrupted build (same preset, same seed)."""
    out = tmp_path / "org"
    argv = ["featalign.organisms", "build", "--preset", "tiny", "--out", str(out)]
    sft_ckpt = out / f"sft-{tiny_organisms.config.post_train_domains[0]}" / "ckpt-1"
    what, proc, err = kill_at_random_moment(argv, lambda: (sft_ckpt / "featalign.json").exists(), max_delay_s=6.0)
    assert proc.returncode in (-signal.SIGKILL, 0), err[-2000:]
    _rerun_equals(argv, out, tree(tiny_organisms.root), what)


@pytest.mark.slow
def test_cache_killed_while_caching(tiny_organisms, tmp_path):
    trio = tiny_organisms.default_trio()
    common = [a for n, p in trio.items() for a in ("--model", f"{n}={p}")] + [
        "--hook", "blocks.0.hook_resid_post", "--hook", "blocks.1.hook_resid_post", "--n-tokens", "8000",
        "--batch-size", "32", "--shard-mb", "0.25", "--device", "cpu", "--threads", "1"]
    out = tmp_path / "s"
    argv = ["featalign.cache", *common, "--out", str(out)]
    reference = reference_tree(argv, out)
    what, proc, err = kill_at_random_moment(argv, lambda: (out / "manifest.r000.json").exists(), max_delay_s=3.0)
    assert proc.returncode in (-signal.SIGKILL, 0), err[-2000:]
    _rerun_equals(argv, out, reference, what)


@pytest.mark.slow
def test_train_crosscoder_interrupted_with_ctrl_c(tmp_path):
    """SIGINT: the one-line "interrupted — rerun the same command to resume", exit 130, then the rerun."""
    import torch

    g = torch.Generator().manual_seed(0)
    acts = tmp_path / "acts.safetensors"
    save_file({"acts": torch.randn(4096, 2, 1, 16, generator=g), "eval_acts": torch.randn(512, 2, 1, 16, generator=g)},
              str(acts), metadata={"models": "base,rl", "hooks": "blocks.0.hook_resid_post"})
    common = ["--activations", str(acts), "--n-latents", "64", "--variant", "batchtopk", "--k", "4", "--steps", "3000",
              "--batch-size", "64", "--checkpoint-every", "250", "--log-every", "100", "--threads", "1"]
    out = tmp_path / "run"
    argv = ["featalign.train_crosscoder", *common, "--out", str(out)]
    reference = reference_tree(argv, out)
    what, proc, err = kill_at_random_moment(argv, lambda: (out / "metrics.jsonl").exists(), max_delay_s=2.5,
                                            sig=signal.SIGINT)
    if proc.returncode != 0:  # it was interrupted, not finished
        assert proc.returncode == 130, f"{what}: {err[-2000:]}"
        assert "python -m featalign.train_crosscoder: interrupted — rerun the same command to resume" in err
        assert "Traceback" not in err
    _rerun_equals(argv, out, reference, what)


@pytest.mark.slow
def test_analyze_killed_while_training_crosscoders(tiny_organisms, tmp_path):
    common = ["--organisms-dir", str(tiny_organisms.root), "--stages", "attribution,controls", "--n-tokens", "2000",
              "--eval-tokens", "600", "--n-latents", "32", "--k", "4", "--steps", "300", "--batch-size", "256",
              "--n-null", "3", "--progress", "false"]
    out = tmp_path / "rep"
    argv = ["featalign.analyze", *common, "--out", str(out)]
    reference = reference_tree(argv, out)
    what, proc, err = kill_at_random_moment(argv, lambda: (out / "activations" / "eval" / "manifest.json").exists(),
                                            max_delay_s=6.0)
    assert proc.returncode in (-signal.SIGKILL, 0), err[-2000:]
    _rerun_equals(argv, out, reference, what)


EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _example_killed_and_rerun(script: str, common: list[str], out: Path, max_delay_s: float) -> None:
    """An example script killed (SIGKILL) once its run folder exists, rerun: the files of an uninterrupted run."""
    argv = [str(EXAMPLES / script), *common, "--out", str(out)]
    reference = reference_tree(argv, out)
    what, proc, err = kill_at_random_moment(argv, lambda: (out / "config.json").exists(), max_delay_s=max_delay_s)
    assert proc.returncode in (-signal.SIGKILL, 0), err[-2000:]
    _rerun_equals(argv, out, reference, what)


@pytest.mark.slow
def test_drift_example_killed_while_training_crosscoders(tiny_organisms, tmp_path):
    common = ["--organisms-dir", str(tiny_organisms.root), "--n-tokens", "2000", "--eval-tokens", "1000",
              "--n-latents", "64", "--steps", "200", "--top-k", "8", "--progress", "false"]
    _example_killed_and_rerun("reproduce_drift.py", common, tmp_path / "drift", max_delay_s=8.0)


@pytest.mark.slow
def test_feature_interventions_example_killed_and_rerun(tiny_organisms, tmp_path):
    # the RL model in the rl role: it beats the base on bool and modsum (tests/organisms/test_build.py)
    common = ["--model", f"base={tiny_organisms.base_dir}", "--model", f"rl={tiny_organisms.model_dir('rl')}",
              "--n-prompts", "60", "--selection-tasks", "bool,modsum", "--held-out-tasks", "compare",
              "--min-samples", "2",
              "--n-tokens", "2000", "--eval-tokens", "1000", "--n-latents", "64", "--steps", "40", "--n-controls", "2",
              "--n-bins", "2", "--sweep-coefs", "0,1", "--sweep-controls", "1", "--progress", "false"]
    _example_killed_and_rerun("reproduce_feature_interventions.py", common, tmp_path / "fi", max_delay_s=10.0)


@pytest.mark.slow
def test_transfer_example_killed_and_rerun(tiny_organisms, tmp_path):
    """Killed while it post-trains the extra domain in its copy of the organisms, rerun."""
    common = ["--organisms-dir", str(tiny_organisms.root), "--domains", "add,count", "--n-prompts", "40"]
    _example_killed_and_rerun("reproduce_transfer_study.py", common, tmp_path / "tr", max_delay_s=15.0)


@pytest.mark.parametrize("name", ["report.json", "report.md"])
def test_digest_ignores_only_the_clock(tmp_path, name):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir(), b.mkdir()
    if name == "report.json":
        (a / name).write_text(json.dumps({"x": 1, "timings_s": {"total": 1.0}}))
        (b / name).write_text(json.dumps({"x": 1, "timings_s": {"total": 9.0}}))
    else:
        (a / name).write_text("# r\nx 1\nTimings (s): {'total': 1.0}\n")
        (b / name).write_text("# r\nx 1\nTimings (s): {'total': 9.0}\n")
    assert tree(a) == tree(b)
    (b / name).write_text((b / name).read_text().replace("1", "2", 1))
    assert tree(a) != tree(b)
