"""`python -m featalign.interventions` on the tiny organisms: an identity edit changes nothing, a large
clamp changes answers, the unedited accuracy equals an independent scoring, bad input fails before work."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from featalign.crosscoder.config import CrosscoderConfig
from featalign.crosscoder.model import Crosscoder
from featalign.evaluation import score_task
from featalign.interventions import InterventionResult
from featalign.interventions.cli import main
from featalign.models import load_model
from featalign.tasks import TaskSet

HOOK = "blocks.0.hook_resid_post"


@pytest.fixture(scope="module")
def setup(tiny_organisms, tmp_path_factory):
    root = tmp_path_factory.mktemp("intervene")
    cc = Crosscoder(CrosscoderConfig(models=("base", "rl", "sft"), hooks=(HOOK,), d_model=32, n_latents=48,
                                     variant="l1", dec_init_norm=0.5))
    with torch.no_grad():
        cc.W_enc.add_(0.1 * torch.randn(cc.W_enc.shape, generator=torch.Generator().manual_seed(0)))
    cc.save(root / "cc")
    models = [a for n in ("base", "rl", "sft") for a in ("--model", f"{n}={tiny_organisms.model_dir(n)}")]
    common = ["--crosscoder", str(root / "cc"), *models, "--tasks", "organisms:add,bool", "--n-per-task", "24",
              "--n-tokens", "600", "--progress", "false"]
    return root, common, tiny_organisms


def test_identity_edit_changes_nothing_and_matches_independent_scoring(setup):
    root, common, org = setup
    out = root / "scale1"
    res = main([*common, "--features", "0,1,2,3", "--edit", "scale", "--value", "1.0", "--controls", "2",
                "--out", str(out)])
    rl = load_model(org.model_dir("rl"))
    tasks = TaskSet.load("organisms:add,bool", 24)
    for name, t in res.tasks.items():
        want = score_task(rl, rl.tokenizer, tasks[name])  # the unedited model, scored outside the CLI
        assert t.correct_without == want.tolist()
        assert t.correct_with == t.correct_without and t.delta == 0.0
        assert t.control_deltas == [0.0, 0.0]
    assert sum(t.acc_without for t in res.tasks.values()) > 0  # something to change
    assert InterventionResult.load(out / "results.json").tasks["add"].correct_with == res.tasks["add"].correct_with
    report = (out / "report.md").read_text()
    assert "| add | 24 |" in report and "| bool | 24 |" in report
    assert (out / "figures" / "deltas.png").stat().st_size > 0
    assert json.loads((out / "config.json").read_text())["edit"] == "scale"


def test_large_clamp_changes_answers(setup):
    root, common, _ = setup
    res = main([*common, "--features", "0,1,2,3", "--edit", "clamp", "--value", "40", "--controls", "0",
                "--out", str(root / "clamp")])
    changed = sum(int(np.sum(np.array(t.correct_with) != np.array(t.correct_without))) for t in res.tasks.values())
    assert changed > 0
    assert res.model_name == "rl" and res.features == [0, 1, 2, 3]


def test_project_needs_no_value_and_equals_the_edit_applied_by_hand(setup):
    """`--edit project` (no --value) scores what `intervene(..., project(ids))` around an independent scoring gives."""
    from featalign.interventions import intervene, project

    root, common, org = setup
    ids = list(range(0, 48, 2))
    res = main([*common, "--features", ",".join(map(str, ids)), "--edit", "project", "--controls", "0",
                "--out", str(root / "project")])
    rl = load_model(org.model_dir("rl"))
    tasks = TaskSet.load("organisms:add,bool", 24)
    cc = Crosscoder.load(root / "cc")
    with intervene(rl, cc, "rl", project(ids)):
        want = {name: score_task(rl, rl.tokenizer, tasks[name]).tolist() for name in res.tasks}
    assert {name: t.correct_with for name, t in res.tasks.items()} == want
    assert any(t.correct_with != t.correct_without for t in res.tasks.values())  # the edit did something
    assert json.loads((root / "project" / "config.json").read_text())["edit"] == "project"


@pytest.mark.parametrize("args, words", [
    (["--features", "48"], "[0, 48)"),
    (["--features", "1", "--edit-model", "other"], "base, rl, sft"),
    (["--features", "1", "--edit", "steer"], "needs --value"),
    (["--features", "x,y"], "comma-separated latent ids"),
])
def test_bad_input_fails_before_work(setup, args, words, capsys):
    root, common, _ = setup
    from featalign.cli import run_cli

    out = root / "bad"
    assert run_cli(main, "intervene", [*common, *args, "--out", str(out)]) == 2
    assert words in capsys.readouterr().err
    assert not out.exists()
