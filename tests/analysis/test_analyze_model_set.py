"""`python -m featalign.analyze` on a user's model set (tiny random HF models) and a JSONL task set."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tests.archs import VOCAB, perturbed_copy, tiny_random_model

HOOK = "blocks.0.hook_resid_post"  # the middle hook of the 2-layer tiny models (the fixed default before auto)
SMALL = ["--n-tokens", "600", "--eval-tokens", "300", "--n-latents", "32", "--k", "4", "--steps", "20",
         "--batch-size", "128", "--top-k", "4", "--min-samples", "1", "--n-null", "2", "--gradient", "false",
         "--progress", "false"]
TASKS = {"add": [(f"{a}+{b}=", str(a + b)) for a, b in [(1, 2), (3, 4), (2, 5), (6, 1), (4, 4), (7, 2)]],
         "copy": [(f"copy {w}:", w) for w in ("ab", "xyz", "hello", "q", "tree", "mn")],
         "rev": [(f"rev {w}:", w[::-1]) for w in ("ab", "xyz", "hello", "pq", "tree", "mn")]}


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """Base, rl, sft and an rl series [ckpt-1, rl] of tiny llamas, and a 3-task JSONL task set."""
    root = tmp_path_factory.mktemp("study")
    base = tiny_random_model("llama", root / "base", seed=0)
    rl = perturbed_copy(base, root / "rl", 0.5, seed=1)
    sft = perturbed_copy(base, root / "sft", 0.5, seed=2)
    ckpt1 = perturbed_copy(base, root / "rl-ckpt1", 0.25, seed=1)
    tasks = root / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task": t, "prompt": p, "answer": a}) + "\n"
                             for t, rows in TASKS.items() for p, a in rows))
    models = ["--model", f"base={base}", "--model", f"rl={rl}", "--model", f"sft={sft}"]
    return {"root": root, "models": models, "series": ["--series", f"rl={ckpt1},{rl}"], "tasks": tasks, "base": base}


def hf_resid_post_block0(model_dir, texts: list[str]) -> torch.Tensor:
    """Reference: a plain HF forward's residual stream after block 0 on each `<bos> text <eos>`, rows concatenated
    without the BOS row (the model layer prepends BOS, as the model family does, and the store drops its row)."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = []
    with torch.no_grad():
        for text in texts:
            ids = torch.tensor([[VOCAB.index("<bos>"), *(VOCAB.index(c) for c in text), VOCAB.index("<eos>")]])
            rows.append(model(input_ids=ids, output_hidden_states=True).hidden_states[1][0, 1:])
    return torch.cat(rows)


def check_interval(d: dict, n: int) -> None:
    assert 0 <= d["low"] <= d["count"] <= d["high"] <= n


def test_analyze_on_a_user_model_set(study, tmp_path):
    from featalign.activations import ActivationStore
    from featalign.analysis.cli import main
    from featalign.crosscoder import Crosscoder

    out = tmp_path / "rep"
    rep = main([*study["models"], *study["series"], "--tasks", str(study["tasks"]), "--train-tasks", "add",
                "--stages", "attribution,drift,success", "--out", str(out), "--hook", HOOK, *SMALL])
    saved = json.loads((out / "report.json").read_text())  # at block 0, the reference's (not the measured one)
    assert saved["stages"] == ["attribution", "drift", "success"] and saved["hook"] == HOOK
    assert "organisms" not in saved and saved["models"]["trio"]["rl"] == str(study["root"] / "rl")
    q1 = saved["q1_specific_latents"]
    trio = Crosscoder.load(out / "crosscoders" / "trio")
    x_eval = ActivationStore(out / "activations" / "eval").read(0, 300)  # --eval-tokens
    assert q1["n_alive"] == int((trio.encode(x_eval) > 0).any(0).sum()) and "pairwise" not in q1
    for c in ("rl-only", "sft-only", "base-only"):
        check_interval(q1["trio"][c], q1["n_alive"])
    # drift of the 2-checkpoint series: its one overlap, recomputed by a slow loop from the series' crosscoder
    from tests.analysis.helpers import reference_joint_drift

    drift = saved["q2_drift"]["rl"]
    cc = Crosscoder.load(out / "crosscoders" / "drift-rl-joint")
    train = ActivationStore(out / "activations" / "train")
    cols = [train.models.index(m if m in train.models else m.split("@")[0]) for m in cc.cfg.models]
    overlap, stab = reference_joint_drift(cc, train.read()[:300][:, cols], 4)
    assert set(saved["q2_drift"]) == {"rl"} and drift["overlap"] == pytest.approx(overlap) and len(overlap) == 1
    assert drift["stabilisation_median"] == float(np.median(stab))
    q3 = saved["q3_success_features"]  # random models never solve a task: the stage says which tasks it scored
    assert "error" in q3 and "copy: 0" in q3["error"] and "rev: 0" in q3["error"] and "add" not in q3["error"]
    md = (out / "report.md").read_text()
    assert "## Q1." in md and "## Q2." in md and "## Q3." in md and "Organisms" not in md

    # the store: trio + the series' first checkpoint (its last is rl itself), rows equal a plain HF forward
    store = ActivationStore(out / "activations" / "train")
    assert store.models == ("base", "rl", "sft", "rl@1") and store.hooks == (HOOK,) and len(store) == 600
    texts = [p + a for group in zip(*TASKS.values()) for p, a in group]  # the tasks interleaved, then repeated
    reference = hf_resid_post_block0(study["base"], texts)
    n = min(len(reference), 600)
    torch.testing.assert_close(store.read(0, n)[:, 0, 0], reference[:n], atol=1e-4, rtol=1e-4)

    # the trio counts equal a recount from the saved decoder norms and the latents' firing on the eval store
    trio = Crosscoder.load(out / "crosscoders" / "trio")
    norms_LM = trio.W_dec.detach().view(32, 3, -1).norm(dim=-1)
    eval_x = ActivationStore(out / "activations" / "eval").read()
    with torch.no_grad():
        alive_L = (trio.encode(eval_x) > 0).any(0)
    present_LM = (norms_LM / norms_LM.max(-1, keepdim=True).values) >= 1 / 9
    rl_only = alive_L & present_LM[:, 1] & ~present_LM[:, 0] & ~present_LM[:, 2]
    assert q1["n_alive"] == int(alive_L.sum()) and q1["trio"]["rl-only"]["count"] == int(rl_only.sum())
    assert rep["q1_specific_latents"]["trio"] == q1["trio"]


def test_drift_without_series_says_so(study, tmp_path):
    from featalign.analysis.cli import main

    out = tmp_path / "rep"
    rep = main([*study["models"], "--stages", "drift", "--out", str(out), *SMALL])
    assert rep["stages"] == ["drift"] and "no checkpoint series" in rep["q2_drift"]["skipped"]
    assert "--series rl=DIR1,DIR2" in (out / "report.md").read_text()
    # nothing trained or cached but the measurement that chose the hook (--hook auto, the default)
    assert not (out / "crosscoders").exists() and [p.name for p in (out / "activations").iterdir()] == ["layers"]
    given = main([*study["models"], "--stages", "drift", "--out", str(tmp_path / "given"), "--hook", HOOK, *SMALL])
    assert given["hook"] == HOOK and not (tmp_path / "given" / "activations").exists()


def test_analyze_refuses_a_model_set_without_rl(study, tmp_path):
    from featalign.analysis.cli import main

    with pytest.raises(ValueError, match="no rl model"):
        main([study["models"][0], study["models"][1], "--out", str(tmp_path / "rep"), *SMALL])
    with pytest.raises(ValueError, match="a series belongs to a tuned model"):
        main([*study["models"], "--series", f"dpo={study['base']}", "--out", str(tmp_path / "rep"), *SMALL])
    assert not (tmp_path / "rep").exists()


def test_stage_registry_resolves_dependencies():
    from featalign.analysis.config import DEFAULT_STAGES
    from featalign.analysis.stages import STAGES, resolve_stages
    from featalign.cli import UsageError

    assert DEFAULT_STAGES == ",".join(STAGES)  # the --stages default is every registered stage
    assert resolve_stages(["cards"]) == ["attribution", "cards"]
    assert resolve_stages(["cards", "drift", "attribution"]) == ["attribution", "drift", "cards"]
    with pytest.raises(UsageError, match=r"unknown stage\(s\) \['nope'\]"):
        resolve_stages(["drift", "nope"])


def test_task_set_source_interleaves_cycles_and_fingerprints():
    from featalign.activations import TaskSetSource
    from featalign.tasks import TaskSet

    rows = [{"task": t, "prompt": p, "answer": a} for t, pairs in TASKS.items() for p, a in pairs[:2]]
    tasks = TaskSet.from_records(rows)
    source = TaskSetSource(tasks, "eval")
    order = [(p.domain, p.prompt) for p in source.problems()]
    assert order[:3] == [("add", "1+2="), ("copy", "copy ab:"), ("rev", "rev ab:")] and len(order) == 6

    class CharTokenizer:
        eos_token_id = 0

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [ord(c) for c in text]}

    seqs = source.sequences(CharTokenizer())
    first = [next(seqs) for _ in range(7)]
    assert first[0] == [ord(c) for c in "1+2=3"] + [0] and first[6] == first[0]  # cycles after one pass
    other = TaskSetSource(TaskSet.from_records(rows[:-1]), "eval")
    assert source.fingerprint() != other.fingerprint() and source.fingerprint() == TaskSetSource(tasks).fingerprint()
    assert np.all([len(s) > 1 for s in first])
