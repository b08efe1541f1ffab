"""The real-models recipe of docs/real_models.md §6, run verbatim (read from the page) on tiny random Qwen2
models: a base, perturbed rl / sft copies, a 2-checkpoint series each, and a GSM8K-style JSONL task file.
Only the recipe's variables change (paths, sizes, cpu); every command, flag and hand-over between stages is
the page's. The models run in bf16, as on a GPU."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from featalign.activations import ActivationStore
from featalign.crosscoder import Crosscoder
from featalign.interventions import InterventionResult
from tests.archs import perturbed_copy, tiny_random_model

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "real_models.md"


def recipe() -> str:
    m = re.search(r"<!-- recipe:start -->\n```bash\n(.*?)```\n<!-- recipe:end -->", PAGE.read_text(), re.S)
    assert m, "docs/real_models.md lost its recipe block"
    return m.group(1)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_the_recipe_runs_end_to_end(tmp_path):
    base = tiny_random_model("qwen2", tmp_path / "base", seed=0)
    dirs = {n: perturbed_copy(base, tmp_path / n, 0.2, seed=s) for n, s in
            (("rl", 1), ("sft", 2), ("rl-1", 3), ("sft-1", 4))}
    tasks = tmp_path / "gsm8k.jsonl"
    tasks.write_text("".join(json.dumps({"prompt": f"Q: {a}+{b}? A:", "answer": f"{a}+{b}={a + b} #### {a + b}"})
                             + "\n" for a, b in zip(range(10, 34), range(40, 64))))
    out = tmp_path / "run"
    env = {**os.environ, "BASE": str(base), "RL": str(dirs["rl"]), "SFT": str(dirs["sft"]),
           "RL_CKPTS": f"{dirs['rl-1']},{dirs['rl']}", "SFT_CKPTS": f"{dirs['sft-1']},{dirs['sft']}",
           "TASKS": str(tasks), "MAX_NEW_TOKENS": "6", "DEVICE": "cpu",  # HOOK: the recipe's default, auto
           "DTYPE": "bfloat16", "CACHE_TOKENS": "2000", "ANALYZE_TOKENS": "800", "EVAL_TOKENS": "600", "N_LATENTS": "64", "K": "4",
           "STEPS": "30", "BATCH": "64", "ANALYZE_LATENTS": "32", "ANALYZE_STEPS": "20", "CONTROLS": "2",
           "FEATURES": "0,1,2", "OUT": str(out), "FEATALIGN_TEST_THREADS": "1",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    script = tmp_path / "recipe.sh"
    script.write_text(recipe())
    r = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=580)
    assert r.returncode == 0, r.stderr[-3000:]

    # HOOK=auto: the measured block, handed to the cache and from there to every later stage
    hook = json.loads((out / "hook" / "hook_choice.json").read_text())["hook"]
    assert re.fullmatch(r"blocks\.[01]\.hook_resid_post", hook)  # the tiny Qwen2 models have 2 blocks
    store = ActivationStore(out / "acts")
    assert store.models == ("base", "rl", "sft") and len(store) == 2000 and store.hooks == (hook,)
    cc = Crosscoder.load(out / "crosscoder")
    assert cc.cfg.models == ("base", "rl", "sft") and cc.cfg.n_latents == 64
    report = json.loads((out / "analysis" / "report.json").read_text())
    assert report["crosscoder"]["dir"] == str(out / "crosscoder")  # analysed the crosscoder step 3 trained
    assert cc.cfg.hooks == (hook,) and report["hook"] == hook and "hook_choice" not in report
    assert report["models"]["series"] == {"rl": [str(dirs["rl-1"]), str(dirs["rl"])],
                                          "sft": [str(dirs["sft-1"]), str(dirs["sft"])]}
    assert [len(report["q2_drift"][s]["overlap"]) for s in ("rl", "sft")] == [1, 1]  # 2 checkpoints: 1 step
    assert "gsm8k: 0" in report["q3_success_features"]["error"]  # the task file's task was scored (random models)
    for name, edited in (("ablate-rl", "rl"), ("steer-base", "base")):
        res = InterventionResult.load(out / name / "results.json")
        assert res.model_name == edited and res.features == [0, 1, 2]
        assert set(res.tasks) == {"gsm8k"} and res.tasks["gsm8k"].n == 24
        assert len(res.control_features) == 2
    assert "verifier: final_answer" in (out / "tasks.yaml").read_text()
