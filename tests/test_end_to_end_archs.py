"""cache -> crosscoder -> analyze -> intervene through the CLIs on tiny random models of several architectures.

Each architecture gets a base model, two perturbed "tuned" copies (rl, sft) and a JSONL task set; two
hooks at once (a residual and an MLP output) are cached, a crosscoder is trained on the store, and edits
go through `featalign.interventions` on the live models. References are plain Hugging Face forwards.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from featalign.activations.cli import main as cache_main
from featalign.crosscoder import Crosscoder
from featalign.models import hf_model_of
from featalign.evaluation import score_task
from featalign.interventions import ablate, intervene, steer
from featalign.interventions.cli import main as intervene_main
from featalign.models import load_model
from featalign.tasks import TaskSet
from featalign.crosscoder.cli import main as train_main
from tests.archs import perturbed_copy, tiny_random_model

ARCHS = ("llama", "gpt2", "qwen3", "gemma3", "gpt_neox", "opt")
HOOKS = ("blocks.0.hook_resid_post", "blocks.1.hook_mlp_out")
LINES = [{"prompt": f"{a}+{b}=", "answer": str(a + b), "task": "add" if i % 2 else "copy"}
         for i, (a, b) in enumerate(zip(range(10, 40), range(50, 80)))]


@pytest.fixture(scope="module", params=ARCHS)
def study(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(request.param)
    base = tiny_random_model(request.param, root / "base")
    dirs = {"base": base, "rl": perturbed_copy(base, root / "rl", 0.05, seed=1),
            "sft": perturbed_copy(base, root / "sft", 0.05, seed=2),
            "rl-ckpt1": perturbed_copy(base, root / "rl-ckpt1", 0.02, seed=3)}
    tasks = root / "tasks.jsonl"
    tasks.write_text("\n".join(json.dumps(r) for r in LINES) + "\n")
    text = root / "text.txt"
    text.write_text("\n".join(r["prompt"] + r["answer"] for r in LINES) + "\n")
    return request.param, root, dirs, tasks, text


def _cache(root: Path, dirs: dict, text: Path) -> Path:
    out = root / "store"
    args = [a for n in ("base", "rl", "sft") for a in ("--model", f"{n}={dirs[n]}")]
    args += [a for h in HOOKS for a in ("--hook", h)]
    cache_main(args + ["--text-file", str(text), "--out", str(out), "--n-tokens", "100000", "--batch-size", "8",
                       "--threads", "1"])
    return out


def test_cache_train_intervene(study):
    arch, root, dirs, tasks, text = study
    store_dir = _cache(root, dirs, text)
    from featalign.activations import ActivationStore

    store = ActivationStore(store_dir)
    assert store.models == ("base", "rl", "sft") and store.hooks == HOOKS
    # the cached rows equal plain HF hidden states (resid_post of block 0 = hidden_states[1]), line by line, on
    # the ids the models saw (TransformerLens' tokenizer prepends <bos>, whose row the store drops)
    rl = load_model(dirs["rl"])
    ids = [rl.tokenizer(r["prompt"] + r["answer"])["input_ids"] for r in LINES]
    assert all(s[0] == rl.tokenizer.bos_token_id for s in ids)
    rows = store.read()
    assert len(rows) == sum(len(s) - 1 for s in ids)
    hf = AutoModelForCausalLM.from_pretrained(str(dirs["sft"]), dtype=torch.float32, attn_implementation="eager")
    with torch.no_grad():
        want = torch.cat([hf(input_ids=torch.tensor([s]), output_hidden_states=True).hidden_states[1][0, 1:]
                          for s in ids])
    torch.testing.assert_close(rows[:, 2, 0], want, atol=1e-4, rtol=1e-4)

    cc_dir = root / "cc"
    train_main(["--store", str(store_dir), "--out", str(cc_dir), "--steps", "30", "--batch-size", "64",
                "--n-latents", "64", "--variant", "l1", "--no-eval", "--threads", "1"])
    cc = Crosscoder.load(cc_dir).eval()
    assert cc.cfg.hooks == HOOKS and cc.cfg.models == ("base", "rl", "sft")

    x = torch.tensor(ids[:4][0:1])
    with torch.no_grad():
        clean = hf_model_of(rl)(input_ids=x).logits
        with intervene(rl, cc, "rl", ablate([])):
            assert torch.equal(hf_model_of(rl)(input_ids=x).logits, clean)  # ablating nothing: bitwise equal
        with intervene(rl, cc, "rl", steer([0, 1], 5.0, [1.0, 1.0])):
            steered = hf_model_of(rl)(input_ids=x).logits
    assert (steered - clean).abs().max() > 1e-3  # both hooks' edits reach the logits

    # the intervention CLI: ablate three latents of the rl slot on the JSONL task set, two matched controls
    res = intervene_main(["--crosscoder", str(cc_dir), "--model", f"rl={dirs['rl']}", "--features", "0,1,2",
                          "--edit", "ablate", "--tasks", str(tasks), "--verifier", "numeric", "--controls", "2",
                          "--n-tokens", "200", "--progress", "false", "--out", str(root / "intervene")])
    task_set = TaskSet.from_jsonl(tasks, verifier="numeric")
    assert set(res.tasks) == {"add", "copy"}
    for name, r in res.tasks.items():
        assert r.n == 15 and r.correct_without == score_task(rl, rl.tokenizer, task_set[name]).tolist()
        assert len(r.control_deltas) == 2
    assert all(not set(c) & {0, 1, 2} for c in res.control_features)  # controls never reuse the chosen latents


def test_analyze_on_the_model_set(study, tmp_path):
    """analyze with a checkpoint series and a JSONL task set, at the MLP-output hook (not a residual)."""
    from featalign.analysis.cli import main as analyze_main

    arch, root, dirs, tasks, _ = study
    models = [a for n in ("base", "rl", "sft") for a in ("--model", f"{n}={dirs[n]}")]
    rep = analyze_main([*models, "--series", f"rl={dirs['rl-ckpt1']},{dirs['rl']}", "--tasks", str(tasks),
                        "--hook", HOOKS[1], "--stages", "attribution,drift", "--out", str(tmp_path / "rep"),
                        "--n-tokens", "400", "--eval-tokens", "200", "--n-latents", "32", "--k", "4", "--steps", "10",
                        "--batch-size", "128", "--top-k", "4", "--progress", "false"])
    saved = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert saved["hook"] == HOOKS[1] == rep["hook"]
    q1 = saved["q1_specific_latents"]
    assert 0 < q1["n_alive"] <= 32
    assert sum(v["count"] for v in q1["trio"].values()) <= q1["n_alive"]
    assert list(saved["q2_drift"]) == ["rl"] and len(saved["q2_drift"]["rl"]["overlap"]) == 1
