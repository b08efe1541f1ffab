"""Execute notebooks/quickstart.ipynb and notebooks/walkthrough.ipynb on the tiny organisms (nbclient).

Each notebook reads its preset from FEATALIGN_NOTEBOOK_PRESET (and a user's model set, task set and training
tasks from FEATALIGN_NOTEBOOK_MODEL_SET / _TASKS / _TRAIN_TASKS, what a user sets in the parameter cell) and
ends with one machine-readable line `RESULT {json}`; the tests check that line's numbers. The kernel is this interpreter (a kernelspec
written into a temporary JUPYTER_PATH entry), and FEATALIGN_CACHE points at a temporary folder whose
organisms/tiny is the session's `tiny_organisms` build, so the notebooks do not rebuild the organisms.
"""

from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
KERNEL = "python3"
CELL_TIMEOUT_S = 120


@pytest.fixture
def notebook_env(tmp_path, monkeypatch, tiny_organisms):
    """Environment for a kernel of this interpreter that sees the tiny organisms; returns the work dir."""
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "Python 3 (featalign tests)", "language": "python",
    }))
    cache = tmp_path / "cache"
    (cache / "organisms").mkdir(parents=True)
    link = cache / "organisms" / "tiny"  # the default organisms folder of the tiny preset under FEATALIGN_CACHE
    try:
        link.symlink_to(Path(tiny_organisms.root).resolve(), target_is_directory=True)
    except OSError:  # no symlinks on this filesystem
        shutil.copytree(tiny_organisms.root, link)
    work = tmp_path / "cwd"
    work.mkdir()
    # JUPYTER_PATH comes first in the kernelspec search, so this spec shadows any other "python3"
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("IPYTHONDIR", str(tmp_path / "ipython"))
    monkeypatch.setenv("FEATALIGN_NOTEBOOK_PRESET", "tiny")
    monkeypatch.setenv("FEATALIGN_CACHE", str(cache))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    return work


def execute(name: str, cwd: Path) -> tuple[dict, "nbformat.NotebookNode"]:
    """Run every cell (errors fail the test with the cell's traceback); return the RESULT dict and the notebook."""
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    assert not any(c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name} is committed with outputs"
    client = nbclient.NotebookClient(nb, timeout=CELL_TIMEOUT_S, kernel_name=KERNEL,
                                     resources={"metadata": {"path": str(cwd)}})
    client.execute()
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert "FEATALIGN_NOTEBOOK_PRESET" in code[0].source, "the first code cell must read the preset"
    lines = [ln for o in code[-1].outputs if o.output_type == "stream" and o.name == "stdout"
             for ln in o.text.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, f"the last cell of {name} must print one RESULT line, got {lines}"
    return json.loads(lines[0][len("RESULT "):]), nb


def n_images(nb) -> int:
    return sum("image/png" in o.get("data", {}) for c in nb.cells if c.cell_type == "code" for o in c.outputs)


def check_task(t: dict, n_controls: int | None = None) -> None:
    for k in ("acc_without", "acc_with"):
        assert 0.0 <= t[k] <= 1.0
    assert t["delta"] == pytest.approx(t["acc_with"] - t["acc_without"])
    assert t["ci_low"] - 1e-12 <= t["delta"] <= t["ci_high"] + 1e-12
    assert 0.0 <= t["mcnemar_p"] <= 1.0
    if n_controls:
        assert 1 / (n_controls + 1) - 1e-12 <= t["control_p"] <= 1.0


def test_quickstart(notebook_env, tiny_organisms):
    r, nb = execute("quickstart.ipynb", notebook_env)
    assert r["notebook"] == "quickstart" and r["preset"] == "tiny"
    assert r["models"] == ["base", "rl", "sft"]
    assert r["hook"] == f"blocks.{max(tiny_organisms.config.n_layers // 2 - 1, 0)}.hook_resid_post"
    assert r["n_train_tokens"] > 0 and r["n_eval_tokens"] > 0
    assert set(r["fvu"]) == {"base", "rl", "sft"}
    for fvu in r["fvu"].values():
        assert 0.0 < fvu < 1.0  # a trained crosscoder explains most of the variance
    assert 0.0 < r["l0"] < r["n_latents"]
    assert 0.0 <= r["dead_frac"] <= 1.0
    assert 0 < r["n_alive"] <= r["n_latents"]
    assert sum(r["class_counts"].values()) == r["n_latents"]
    iv = r["intervention"]
    assert iv["model"] == "rl" and len(iv["features"]) == len(set(iv["features"])) > 0
    assert all(0 <= f < r["n_latents"] for f in iv["features"])
    assert iv["n_controls"] == iv["n_controls_asked"] >= 2
    assert len(iv["tasks"]) == 2
    assert [t["held_out"] for t in iv["tasks"].values()] == [False, True]
    assert tiny_organisms.config.post_train_domains[0] in iv["tasks"]
    for t in iv["tasks"].values():
        assert t["n"] > 0
        check_task(t, iv["n_controls"])
    assert n_images(nb) >= 3  # training curve, ternary, MAS histograms


def test_walkthrough(notebook_env, tiny_organisms):
    r, nb = execute("walkthrough.ipynb", notebook_env)
    summary = tiny_organisms.summary()
    cfg = tiny_organisms.config
    dom = cfg.post_train_domains[0]
    assert r["notebook"] == "walkthrough" and r["preset"] == "tiny"

    # 1. the organisms' accuracies and transfer, straight from the build's evaluation
    for k, name in (("base", "base"), ("rl", f"rl-{dom}"), ("sft", f"sft-{dom}")):
        assert r["accuracy"][k] == pytest.approx(summary["accuracy"][name])
        assert set(r["accuracy"][k]) == set(cfg.pretrain_domains)
        assert all(0.0 <= a <= 1.0 for a in r["accuracy"][k].values())
    for kind in ("rl", "sft"):
        for scope in ("in_domain", "out_of_domain"):
            c = r["cmh"][kind][scope]
            assert c["odds_ratio"] > 0 and 0.0 <= c["p_value"] <= 1.0

    # 2-3. trio crosscoder and attribution
    for fvu in r["trio_fvu"].values():
        assert 0.0 < fvu < 1.0
    att = r["attribution"]
    assert 0 < att["n_alive"] <= sum(att["class_counts"].values())
    assert sum(att["class_counts_after_latent_scaling"].values()) == sum(att["class_counts"].values())

    # 4. controls: identical inputs give no specific latents and a narrower NRN spread than disjoint halves
    ctl = r["controls"]
    assert set(ctl) == {"base-vs-rl", "base-vs-sft", "null-same", "null-disjoint"}
    for c in ctl.values():
        assert 0 < c["n_alive"]
        for k in ("t_only", "o_only", "shared", "t_lean"):
            assert 0 <= c[k] <= c["n_alive"]
    assert ctl["null-same"]["t_only"] == ctl["null-same"]["o_only"] == 0
    assert ctl["null-same"]["nrn_sd"] < ctl["null-disjoint"]["nrn_sd"]

    # 5. drift over the checkpoints
    for kind in ("sft", "rl"):
        d = r["drift"][kind]
        assert len(d["overlap"]) == cfg.n_checkpoints - 1
        assert all(0.0 <= o <= 1.0 for o in d["overlap"])
        assert d["k"] > 0 and 1 <= d["stabilisation_median"] <= cfg.n_checkpoints
    assert all(0.0 <= p <= 1.0 for p in r["drift"]["sft_vs_rl_p"].values())

    # 6. RL-success features (the tiny RL model never beats the base: the notebook says so and falls back)
    s = r["success"]
    assert s["status"] in ("ok", "fallback")
    assert s["n_features"] == len(s["features"]) == len(set(s["features"])) > 0

    # 7a. ablation with matched random controls, selection and held-out tasks apart
    ab = r["ablation"]
    assert ab["n_controls"] == ab["n_controls_asked"] >= 2
    assert set(ab["summary"]) == {"selection", "held_out"}
    assert len(ab["summary"]["held_out"]["tasks"]) == 2
    for g in ab["summary"].values():
        for t in g["tasks"].values():
            check_task(t, ab["n_controls"])
        assert g["mean_delta"] == pytest.approx(sum(t["delta"] for t in g["tasks"].values()) / len(g["tasks"]))

    # 7b. steering sweep: coefficient 0 is a no-op, so both feature sets give the base model's accuracy there
    sw = r["sweep"]
    assert sw["coefs"][0] == 0.0 and len(sw["coefs"]) >= 2
    tasks = set(ab["summary"]["selection"]["tasks"]) | set(ab["summary"]["held_out"]["tasks"])
    assert set(sw["real"]) == set(sw["control"]) == tasks
    for k in tasks:
        assert len(sw["real"][k]) == len(sw["control"][k]) == len(sw["coefs"])
        assert all(0.0 <= a <= 1.0 for a in sw["real"][k] + sw["control"][k])
        assert sw["real"][k][0] == sw["control"][k][0]
    assert n_images(nb) >= 7
    assert not math.isnan(r["seconds"])


# --- the same notebooks on a user's models: a model-set file and a JSONL task set ---------------------------

USER_TASKS = {"sum": "add", "logic": "bool", "order": "compare", "tally": "count", "find": "lookup"}
N_USER = 48  # problems per task: the quickstart's tiny N_PROMPTS, so its intervention scores the same problems


@pytest.fixture
def user_study(notebook_env, tiny_organisms, monkeypatch):
    """The tiny organisms' folders as a user's model set (base, rl, sft and 3-checkpoint series: no organisms
    machinery), and a JSONL task set whose tasks carry the user's names; returns the rl folder."""
    from featalign.evaluation import eval_problems

    org = tiny_organisms
    ckpts = {k: [{"name": f"{k}-{i}", "path": str(org.model_dir(k, ckpt=i)), "role": "checkpoint", "step": i}
                 for i in (3, 4, 5)] for k in ("rl", "sft")}
    model_set = notebook_env / "study.json"
    model_set.write_text(json.dumps({"models": [
        {"name": "base", "path": str(org.base_dir), "role": "base"},
        {"name": "rl", "path": str(org.model_dir("rl")), "role": "rl"},
        {"name": "sft", "path": str(org.model_dir("sft")), "role": "sft"}], "series": ckpts}))
    tasks = notebook_env / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task": t, "prompt": p.prompt, "answer": p.answer}) + "\n"
                             for t, d in USER_TASKS.items() for p in eval_problems(d, N_USER)))
    monkeypatch.setenv("FEATALIGN_NOTEBOOK_MODEL_SET", str(model_set))
    monkeypatch.setenv("FEATALIGN_NOTEBOOK_TASKS", str(tasks))
    monkeypatch.setenv("FEATALIGN_NOTEBOOK_TRAIN_TASKS", "sum")
    return org.model_dir("rl")


def independent_accuracy(model_dir, domain: str) -> float:
    """Greedy accuracy of a plain HF model on a domain's first N_USER eval problems, by the organisms' verifier."""
    from featalign.evaluation import eval_problems, score_problems
    from featalign.organisms.model import load_organism

    model, tok = load_organism(model_dir)
    return float(score_problems(model, tok, eval_problems(domain, N_USER)).mean())


def test_quickstart_on_user_models(notebook_env, user_study):
    r, nb = execute("quickstart.ipynb", notebook_env)
    assert r["model_set"] == str(notebook_env / "study.json") and r["models"] == ["base", "rl", "sft"]
    assert r["domain"] == "sum" and all(list(a) == list(USER_TASKS) for a in r["accuracy"].values())
    assert r["accuracy"]["rl"]["logic"] == pytest.approx(independent_accuracy(user_study, "bool"))
    iv = r["intervention"]
    assert list(iv["tasks"])[0] == "sum" and set(iv["tasks"]) - {"sum"} <= set(USER_TASKS)
    for name, t in iv["tasks"].items():  # the unedited RL model on the same problems: the accuracy of section 1
        assert t["held_out"] == (name != "sum") and t["acc_without"] == pytest.approx(r["accuracy"]["rl"][name])
        check_task(t, iv["n_controls"])
    assert n_images(nb) >= 3


def test_walkthrough_on_user_models(notebook_env, user_study):
    r, nb = execute("walkthrough.ipynb", notebook_env)
    assert r["model_set"] == str(notebook_env / "study.json") and r["train_tasks"] == ["sum"]
    assert all(list(a) == list(USER_TASKS) for a in r["accuracy"].values())
    assert r["accuracy"]["rl"]["find"] == pytest.approx(independent_accuracy(user_study, "lookup"))
    for kind in ("rl", "sft"):  # one in-domain stratum: its mean delta is the tuned model's gain on "sum"
        assert r["cmh"][kind]["in_domain"]["mean_delta_points"] == pytest.approx(
            100 * (r["accuracy"][kind]["sum"] - r["accuracy"]["base"]["sum"]))
        assert len(r["drift"][kind]["overlap"]) == 2  # the model set's 3-checkpoint series
    ab = r["ablation"]["summary"]
    assert list(ab["held_out"]["tasks"]) == ["tally", "find"]  # the last N_HELD_OUT out-of-domain tasks
    assert set(ab["selection"]["tasks"]) <= {"logic", "order"}
    assert set(r["sweep"]["real"]) == set(ab["selection"]["tasks"]) | set(ab["held_out"]["tasks"])
    assert n_images(nb) >= 7
