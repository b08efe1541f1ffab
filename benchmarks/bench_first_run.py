"""The README's main job from an empty cache, timed per phase: what a user's first run costs.

    python benchmarks/bench_first_run.py                  # the main job, into docs/bench/first_run_<cpu>.json
    python benchmarks/bench_first_run.py --preset tiny --json /tmp/first_run_tiny.json   # a quick check
    python benchmarks/bench_first_run.py -- --steps 500   # extra arguments after `--` go to the job

It runs `python -m featalign.train_crosscoder` (the README quickstart's command, its defaults) in a
subprocess whose `FEATALIGN_CACHE` is a fresh empty folder, so the job builds the organisms, caches the
activations and trains the crosscoder exactly as a first run does. Phases:

* organisms: pretraining, post-training and evaluation side by side, the summary (from the build's own
  `timings.json`, which also holds each post-training run's and evaluation's seconds);
* activations: caching the training and held-out stores (up to the held-out store's last manifest write);
* crosscoder: training, then the final evaluation (FVU, L0, dead, splice-in loss) up to the job's exit.

The JSON records the wall time of each phase, the job's CPU time (user + system of the job and its
workers: CPU time / wall = cores kept busy), the load average before and after (a figure measured with
other jobs running is not the job alone), the cores, the command and the provenance stamp; no machine
paths. Run it with nothing else on the machine to measure the README's figure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from featalign.io import atomic_write_json, provenance
from featalign.organisms.build import available_cores

ROOT = Path(__file__).resolve().parent.parent


def since(path: Path, t0: float) -> float | None:
    """Seconds from `t0` to the last write of `path` (None if it was never written)."""
    return round(path.stat().st_mtime - t0, 1) if path.exists() else None


def cpu_model() -> str | None:
    """The CPU's model name and whether it has AMX tiles (Linux's /proc/cpuinfo; None elsewhere): two AVX-512
    machines of this workplace ran the same job in 6.5 and 10.2 minutes, and the capability alone cannot say why."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    name = next((ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), "unknown")
    return f"{name}, {'with' if 'amx_bf16' in info else 'no'} AMX"


def crosscoder_bf16(out: Path) -> bool | None:
    """Whether the job trained its crosscoder in bf16 (its saved trainer config; the CLI decides at start by
    measuring the device's matmuls, so one machine kind can go either way): None if the job wrote no config."""
    cfg = out / "trainer_cfg.json"
    return json.loads(cfg.read_text()).get("bf16") if cfg.exists() else None


def run_job(preset: str, extra: list[str], work: Path) -> dict:
    """Run the main job into `work` (cache and output) and read its phase boundaries back from its files."""
    cache, out = work / "cache", work / "run"
    cmd = [sys.executable, "-m", "featalign.train_crosscoder", "--out", str(out), "--organisms-preset", preset]
    env = {**os.environ, "FEATALIGN_CACHE": str(cache)}
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load_before = os.getloadavg()
    t0 = time.time()
    subprocess.run(cmd + extra, env=env, check=True, cwd=ROOT)
    wall = time.time() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    org = cache / "organisms" / preset
    timings = json.loads((org / "timings.json").read_text())
    organisms_end = since(org / "eval" / "summary.json", t0)
    cache_end = since(out / "eval_activations" / "manifest.json", t0) or since(
        out / "activations" / "manifest.json", t0
    )
    train_end = since(out / "crosscoder.safetensors", t0)
    phases = {
        "organisms": organisms_end,
        "organisms_pretraining": timings.get("base"),
        "organisms_post_training_and_eval": timings.get("post_train_and_eval_wall"),
        "organisms_summary": timings.get("summary"),
        "activations_caching": round(cache_end - organisms_end, 1) if cache_end and organisms_end else None,
        "crosscoder_training": round(train_end - cache_end, 1) if train_end and cache_end else None,
        "crosscoder_evaluation": round(wall - train_end, 1) if train_end else None,
    }
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {
        "wall_s": round(wall, 1),
        "phases_s": phases,
        "organisms_tasks_s": {k: v for k, v in timings.items() if k not in ("last_call_total_s",)},
        "crosscoder_bf16": crosscoder_bf16(out),
        "cpu_s": round(cpu, 1),
        "cores_busy": round(cpu / wall, 2),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="default", help="organisms preset of the job (default: the README's)")
    p.add_argument("--json", type=Path, default=None, help="output (default: docs/bench/first_run.json)")
    p.add_argument(
        "--organisms-json",
        type=Path,
        default=None,
        help="also keep the fresh build's eval/summary.json here (e.g. docs/data/organisms_default_<date>.json): "
        "docs/render_tables.py renders its accuracy table and the targets of docs/organisms.md from it",
    )
    p.add_argument(
        "--keep",
        type=Path,
        default=None,
        help="an empty (or new) folder to run in and keep: its cache/ then serves later runs as FEATALIGN_CACHE "
        "(default: a temporary folder, removed)",
    )
    p.add_argument("extra", nargs="*", help="arguments for the job, after `--`")
    a = p.parse_args()
    if a.keep is not None and a.keep.exists() and any(a.keep.iterdir()):
        p.error(f"--keep {a.keep} is not empty: a first run starts from an empty cache; pass a new folder")
    with contextlib.ExitStack() as stack:
        work = a.keep or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="featalign-first-run-")))
        work.mkdir(parents=True, exist_ok=True)
        res = run_job(a.preset, a.extra, work)
        if a.organisms_json:
            summary = work / "cache" / "organisms" / a.preset / "eval" / "summary.json"
            atomic_write_json(a.organisms_json, json.loads(summary.read_text()))
    res = {
        "what": "python -m featalign.train_crosscoder from an empty FEATALIGN_CACHE (README quickstart)",
        "preset": a.preset,
        "job_args": a.extra,
        "cores": available_cores(),
        "cpu_model": cpu_model(),
        "date": time.strftime("%Y-%m-%d"),
        **res,
        **provenance(),
    }
    out = a.json or ROOT / "docs" / "bench" / f"first_run_{res['cpu_capability'].lower()}.json"
    atomic_write_json(out, res)
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
