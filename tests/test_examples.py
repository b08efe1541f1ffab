"""The reproduction scripts in examples/, end to end on the tiny organisms (small sizes), checked against
independent computations of the same numbers."""

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from featalign.evaluation import eval_problems, score_problems
from featalign.organisms.model import load_organism

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_feature_interventions_example(tiny_organisms, tmp_path):
    mod = _load("reproduce_feature_interventions")
    out = tmp_path / "fi"
    # Model-folder options, with the tiny SFT model in the tuned role: the tiny RL model moves too little
    # to have base-fail / tuned-success samples (on 100 prompts SFT has 7, 7, 6 on sort, compare, lookup).
    base, tuned = tiny_organisms.base_dir, tiny_organisms.model_dir("sft")
    args = ["--base-dir", str(base), "--rl-dir", str(tuned), "--out", str(out), "--n-prompts", "100",
            "--selection-tasks", "sort,compare,lookup", "--held-out-tasks", "bool", "--min-samples", "3",
            "--n-tokens", "3000", "--eval-tokens", "1500", "--n-latents", "128", "--steps", "60",
            "--n-controls", "2", "--n-bins", "2", "--sweep-coefs", "0,1", "--sweep-controls", "1", "--progress", "false"]
    r = mod.main(args)
    assert r["success"]["tasks"] == ["sort", "compare", "lookup"]
    assert (out / "report.md").exists() and (out / "figures" / "steer_sweep.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["features"] == r["features"] and len(r["features"]) >= 1
    assert json.loads((out / "config.json").read_text())["n_prompts"] == 100
    # accuracy without the edit = the RL model's own greedy accuracy, scored independently
    tm, tok = load_organism(tuned)
    ref = score_problems(tm, tok, eval_problems("bool", 100)).mean()
    assert r["ablate_rl"]["held_out"]["tasks"]["bool"]["acc_without"] == pytest.approx(ref)
    # coefficient 0 of the sweep is a no-op
    assert all(row["delta"] == 0.0 for row in r["sweep"] if row["coef"] == 0.0)


def test_drift_example(tiny_organisms, tmp_path):
    mod = _load("reproduce_drift")
    out = tmp_path / "drift"
    r = mod.main(["--organisms-dir", str(tiny_organisms.root), "--out", str(out), "--n-tokens", "2000",
                  "--eval-tokens", "1000", "--n-latents", "64", "--steps", "40", "--top-k", "8",
                  "--progress", "false"])
    for kind in ("sft", "rl"):
        ov = r["drift"][kind]["overlap"]
        assert len(ov) == tiny_organisms.config.n_checkpoints - 1 and all(0 <= v <= 1 for v in ov)
    assert r["drift"]["sft_vs_rl"]["mean_overlap_a"] == pytest.approx(np.mean(r["drift"]["sft"]["overlap"]))
    assert (out / "figures" / "drift.png").exists() and "| sft |" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="--rl-dirs"):
        mod.main(["--base-dir", "x", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # refused before any work: no half-made --out


def test_transfer_example(tiny_organisms, tmp_path):
    mod = _load("reproduce_transfer_study")
    src = tiny_organisms.root
    before = (src / "config.json").read_text()
    out = tmp_path / "tr"
    root = out / "organisms"  # the example's copy, with the extra runs
    base, rl = src / "base", src / "rl-add" / "ckpt-5"
    r = mod.main(["--organisms-dir", str(src), "--out", str(out), "--domains", "add,count",
                  "--pairs", f"{base}:{rl}:add", "--eval-domains", "add,bool", "--n-prompts", "40"])
    o = r["organisms"]
    assert o["domains"] == ["add", "count"] and (root / "rl-count" / "ckpt-5").exists()
    assert (src / "config.json").read_text() == before and not (src / "rl-count").exists()
    # the transfer matrix agrees with the per-sample evaluation the build saved
    ev = lambda n: json.loads((root / "eval" / f"{n}.json").read_text())["correct"]  # noqa: E731
    b, t = ev("base"), ev("rl-count")
    j = o["rl"]["eval_domains"].index("bool")
    assert o["rl"]["delta_points"][1][j] == pytest.approx(100 * (np.mean(t["bool"]) - np.mean(b["bool"])))
    assert o["rl"]["cmh"]["in_domain"]["n_strata"] == 2 and o["rl"]["cmh"]["out_of_domain"]["n_strata"] == 18
    # observational pair: deltas from an independent scoring
    pair = next(v for k, v in r["pairs"].items() if k != "in_out_cmh")
    bm, tok = load_organism(base)
    rm, _ = load_organism(rl)
    p = eval_problems("bool", 40)
    assert pair["delta_points"]["bool"] == pytest.approx(
        100 * (score_problems(rm, tok, p).mean() - score_problems(bm, tok, p).mean()))
    assert (out / "figures" / "transfer_rl.png").exists()
    with pytest.raises(ValueError, match="base:tuned"):
        mod.main(["--skip-build", "true", "--pairs", "onlyone", "--out", str(tmp_path / "bad")])
