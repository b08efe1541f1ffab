"""Transfer prediction (`featalign.analysis.transfer_prediction`): the measures on hand-computed cases, the
score on planted truth (exact alignment, power on block-structured transfer, calibration on independent
matrices), a profile against a one-prompt-at-a-time loop, and the example end to end on the tiny organisms."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from featalign.analysis.transfer_prediction import (
    PredictionConfig,
    char_ngrams,
    cosine,
    domain_profile,
    jaccard,
    measured_transfer,
    score_prediction,
    weighted_jaccard,
)

NAMES = list("abcdef")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "predict_transfer.py"


def test_measures_on_hand_computed_cases():
    a, b = np.array([1.0, 2.0, 0.0]), np.array([2.0, 1.0, 1.0])
    assert weighted_jaccard(a, b) == pytest.approx((1 + 1 + 0) / (2 + 2 + 1))
    assert weighted_jaccard(a, a) == 1.0 and weighted_jaccard(a, np.array([0.0, 0.0, 3.0])) == 0.0
    assert cosine(np.array([1.0, 0.0]), np.array([1.0, 1.0])) == pytest.approx(2**-0.5)
    assert jaccard({1, 2}, {2, 3}) == pytest.approx(1 / 3)
    assert char_ngrams(["abcd", "ab"], 3) == {"abc", "bcd", "ab"}


def test_measured_transfer_matches_the_hand_formula():
    base = {"x": np.array([1, 1, 0, 0], bool), "y": np.array([1, 0, 0, 0], bool)}
    tuned = {"x": {"x": np.array([1, 1, 1, 0], bool), "y": np.array([1, 1, 1, 0], bool)}}
    m = measured_transfer(base, tuned, ["x", "y"])
    np.testing.assert_allclose(m["delta_points"], [[25.0, 50.0]])
    # one stratum: OR = (tuned correct / wrong) / (base correct / wrong)
    np.testing.assert_allclose(m["log_odds_ratio"], [[np.log((3 / 1) / (2 / 2)), np.log((3 / 1) / (1 / 3))]])


def _symmetric(rng, n):
    s = rng.random((n, n))
    s = (s + s.T) / 2
    np.fill_diagonal(s, 1.0)
    return s


def test_a_similarity_that_equals_the_transfer_scores_one_in_any_row_order():
    rng = np.random.default_rng(0)
    sim = _symmetric(rng, len(NAMES))
    train = ["c", "a", "f"]  # rows in another order than the names: a misaligned pairing would break rho = 1
    transfer = np.stack([sim[NAMES.index(t)] for t in train])
    s = score_prediction(sim, transfer, train, NAMES, PredictionConfig(n_permutations=2000, n_boot=200))
    assert s.spearman == pytest.approx(1.0) and s.n_pairs == 3 * (len(NAMES) - 1)
    assert s.p_permutation < 0.01 and s.ci == pytest.approx((1.0, 1.0))
    shuffled = np.stack([sim[NAMES.index(t)] for t in ["a", "f", "c"]])  # rows of the wrong domains
    assert score_prediction(sim, shuffled, train, NAMES, PredictionConfig(n_permutations=200, n_boot=20)).spearman < 0.9


def _planted(rng, n: int, structured: bool):
    """Two blocks of domains; RL transfers within its block (+5 points) and not across; the similarity is block
    membership plus noise (structured) or independent noise (null)."""
    block = np.arange(n) % 2
    same = (block[:, None] == block[None, :]).astype(float)
    transfer = 5 * same + rng.normal(0, 1.0, (n, n))
    sim = (same if structured else _symmetric(rng, n)) + rng.normal(0, 0.3, (n, n))
    return (sim + sim.T) / 2, transfer


def test_power_on_planted_block_transfer_and_calibration_on_independent_matrices():
    names = [f"d{i}" for i in range(8)]
    cfg = PredictionConfig(n_permutations=300, n_boot=20)
    rng = np.random.default_rng(1)
    found = [score_prediction(*_planted(rng, 8, True), names, names, cfg).p_permutation < 0.05 for _ in range(20)]
    false = [score_prediction(*_planted(rng, 8, False), names, names, cfg).p_permutation < 0.05 for _ in range(40)]
    assert np.mean(found) >= 0.9, found
    assert np.mean(false) <= 0.15, false


@pytest.fixture(scope="module")
def tiny_sae(tiny_organisms):
    from featalign.crosscoder import CrosscoderConfig
    from featalign.crosscoder.model import Crosscoder
    from featalign.models import default_hook, load_model

    model = load_model(tiny_organisms.base_dir)
    hook = default_hook(tiny_organisms.config.n_layers)
    cfg = CrosscoderConfig(models=("base",), hooks=(hook,), d_model=model.cfg.d_model, n_latents=48, variant="l1")
    torch.manual_seed(0)
    return Crosscoder(cfg), model


def test_profile_equals_a_one_prompt_at_a_time_loop(tiny_sae):
    from featalign.models import capture_models
    from featalign.organisms.tasks import sample_problems

    cc, model = tiny_sae
    problems = sample_problems("add", 7, "eval", 0) + sample_problems("reverse", 5, "eval", 0)  # mixed lengths
    prof = domain_profile(cc, model, problems, 0, PredictionConfig(positions="all"))
    mass, resid = [], []
    for p in problems:
        ids = torch.tensor([model.tokenizer(p.prompt)["input_ids"]])
        acts = capture_models([model], ids, torch.ones_like(ids), cc.cfg.hooks)[0, :, 0]  # [T, H, D], no padding
        acts = acts[1:]  # prompt positions without <bos>
        mass.append(cc.encode_as(acts.float(), 0).mean(0).detach())
        resid.append(acts.float().mean(0).reshape(-1))
    np.testing.assert_allclose(prof.mass_L, torch.stack(mass).mean(0).numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prof.resid_D, torch.stack(resid).mean(0).numpy(), rtol=1e-5, atol=1e-6)


def _example():
    spec = importlib.util.spec_from_file_location("predict_transfer", EXAMPLE)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["predict_transfer"] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_example_on_tiny_organisms_measures_the_transfer_it_scores(tiny_organisms, tmp_path):
    mod = _example()
    out = tmp_path / "run"
    r = mod.main(
        [
            "--organisms-preset",
            "tiny",
            "--organisms-dir",
            str(tiny_organisms.root),
            "--out",
            str(out),
            "--domains",
            "add,sub",
            "--n-prompts",
            "48",
            "--n-latents",
            "64",
            "--steps",
            "40",
            "--n-tokens",
            "3000",
            "--n-permutations",
            "200",
            "--n-boot",
            "50",
            "--progress",
            "false",
        ]
    )
    # the measured RL transfer equals an independent reading of the build's evaluation (all its prompts)
    from featalign.io import read_json

    ev = out / "organisms" / "eval"
    base, rl_sub = read_json(ev / "base.json")["correct"], read_json(ev / "rl-sub.json")["correct"]
    names = r["tasks"]
    row = r["train"]["rl_delta"].index("sub")
    expect = [100 * (np.mean(rl_sub[d]) - np.mean(base[d])) for d in names]
    np.testing.assert_allclose(r["transfer"]["rl_delta"][row], expect, atol=1e-9)
    assert set(r["scores"]["rl_delta"]) == {"feature_mass", "feature_cosine", "attribution", "ngram", "residual_cosine"}
    assert r["scores"]["rl_delta"]["ngram"]["n_pairs"] == 2 * (len(names) - 1)
    assert (out / "figures" / "matrices.png").exists() and (out / "report.md").read_text().count("| ngram") == 4
    from featalign.cli import UsageError

    with pytest.raises(UsageError, match="add --tasks"):  # bad input: refused before anything is written
        mod.main(["--out", str(tmp_path / "bad"), "--model", f"base={tiny_organisms.base_dir}"])
    assert not (tmp_path / "bad").exists()


def test_example_on_user_models_and_tasks(tiny_organisms, tmp_path):
    """A user's model set (base, rl-<task>, sft-<task>) on a JSONL task set: an RL model that is a copy of the
    base transfers by exactly 0 everywhere; a task the set lacks is refused before anything is written."""
    import json
    import shutil

    from featalign.cli import UsageError
    from featalign.organisms.tasks import sample_problems

    mod = _example()
    base = tiny_organisms.base_dir
    copy = shutil.copytree(base, tmp_path / "rl-copy")
    rows = [
        {"task": t, "prompt": p.prompt, "answer": p.answer}
        for t, d in {"logic": "bool", "order": "compare", "sum": "add"}.items()
        for p in sample_problems(d, 24, "eval", 3)
    ]
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps(r) + "\n" for r in rows))
    common = [
        "--tasks",
        str(tasks),
        "--n-latents",
        "32",
        "--steps",
        "20",
        "--n-tokens",
        "1500",
        "--n-permutations",
        "50",
        "--n-boot",
        "20",
        "--progress",
        "false",
        "--attribution",
        "false",
    ]
    with pytest.raises(UsageError, match="math"):
        mod.main(["--model", f"base={base}", "--model", f"rl-math={copy}", "--out", str(tmp_path / "bad"), *common])
    assert not (tmp_path / "bad").exists()
    r = mod.main(
        [
            "--model",
            f"base={base}",
            "--model",
            f"rl-logic={copy}",
            "--model",
            f"rl-order={tiny_organisms.model_dir('sft')}",
            "--model",
            f"sft-sum={copy}",
            "--out",
            str(tmp_path / "run"),
            *common,
        ]
    )
    assert r["tasks"] == ["logic", "order", "sum"] and r["train"]["rl_delta"] == ["logic", "order"]
    assert r["transfer"]["rl_delta"][0] == [0.0, 0.0, 0.0] and r["transfer"]["sft_delta"] == [[0.0, 0.0, 0.0]]
    assert any(v != 0 for v in r["transfer"]["rl_delta"][1])  # the SFT-trained model in an rl- slot does move
    assert "attribution" not in r["scores"]["rl_delta"]
