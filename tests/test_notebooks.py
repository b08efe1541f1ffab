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

import numpy as np
import pytest
import torch

from featalign.evaluation import eval_problems
from tests.analysis.helpers import mh_odds_ratio

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


def check_task(t: dict, n_controls: int | None = None, reference_without=None) -> None:
    """One task of an intervention, from its per-sample correctness: the accuracies, the delta, the exact
    McNemar p (binomial, by hand) and the empirical control p (its definition), and the unedited correctness
    against `reference_without` (the model's own, scored elsewhere) when given."""
    from scipy.stats import binomtest

    w0, w1 = np.array(t["correct_without"], bool), np.array(t["correct_with"], bool)
    assert len(w0) == len(w1) == t["n"] > 0
    if reference_without is not None:
        assert w0.tolist() == np.asarray(reference_without, bool).tolist()
    assert t["acc_without"] == pytest.approx(w0.mean()) and t["acc_with"] == pytest.approx(w1.mean())
    assert t["delta"] == pytest.approx(w1.mean() - w0.mean())
    assert t["ci_low"] - 1e-12 <= t["delta"] <= t["ci_high"] + 1e-12
    b, c = int((~w0 & w1).sum()), int((w0 & ~w1).sum())
    assert t["mcnemar_p"] == pytest.approx(binomtest(b, b + c, 0.5).pvalue if b + c else 1.0)
    if n_controls:
        ctrl = np.abs(t["control_deltas"])
        assert len(ctrl) == n_controls
        assert t["control_p"] == pytest.approx((1 + int((ctrl >= abs(t["delta"]) - 1e-12).sum())) / (n_controls + 1))


def recorded_correct(org, name: str) -> dict[str, np.ndarray]:
    """Per-sample greedy correctness of one organism (`base`, `rl-<dom>`) as its build recorded it."""
    rows = json.loads((org.eval_dir / f"{name}.json").read_text())["correct"]
    return {d: np.array(v, bool) for d, v in rows.items()}




def one_dir(pattern: str, root: Path) -> Path:
    found = sorted(root.glob(pattern))
    assert len(found) == 1, f"{pattern}: {found}"
    return found[0]


@torch.no_grad()
def reference_quality(cc, x_NMHD) -> dict:
    """Held-out FVU per model, L0 and dead fraction of a crosscoder in one pass over all rows (no batching, no
    streaming sums): FVU_m = sum (x_hat - x)^2 / sum (x - mean x)^2 over model m's rows and dims."""
    x = x_NMHD.double()
    f = cc.encode(x_NMHD.float())
    x_hat = cc.decode(f).double().view_as(x)
    fvu = {m: float(((x_hat[:, i] - x[:, i]) ** 2).sum() / ((x[:, i] - x[:, i].mean(0)) ** 2).sum())
           for i, m in enumerate(cc.cfg.models)}
    return {"fvu": fvu, "l0": float((f > 0).sum(1).double().mean()), "dead": int((~(f > 0).any(0)).sum())}


def test_quickstart(notebook_env, tiny_organisms):
    from featalign.activations import ActivationStore
    from featalign.crosscoder import Crosscoder

    r, nb = execute("quickstart.ipynb", notebook_env)
    org = tiny_organisms
    dom = org.config.post_train_domains[0]
    assert r["notebook"] == "quickstart" and r["preset"] == "tiny"
    assert r["models"] == ["base", "rl", "sft"]
    assert r["hook"] == f"blocks.{max(org.config.n_layers // 2 - 1, 0)}.hook_resid_post"
    # the crosscoder's held-out quality, recomputed in one pass from the notebook's crosscoder and eval store
    work = one_dir("notebooks/quickstart-tiny-*", notebook_env.parent / "cache")
    cc = Crosscoder.load(one_dir("crosscoder-l1-*", work))
    x_eval = ActivationStore(work / "acts-eval-seed0").read(0, 3000)  # the notebook's tiny EVAL_TOKENS
    assert r["n_train_tokens"] == len(ActivationStore(work / "acts-train-seed0")) and r["n_eval_tokens"] == len(x_eval)
    ref = reference_quality(cc, x_eval)
    assert r["fvu"] == pytest.approx(ref["fvu"], rel=1e-5) and r["l0"] == pytest.approx(ref["l0"], rel=1e-6)
    assert r["dead_frac"] == pytest.approx(ref["dead"] / r["n_latents"])
    assert r["n_alive"] == r["n_latents"] - ref["dead"]  # attribution's firing rates agree with evaluate's
    assert sum(r["class_counts"].values()) == r["n_latents"]
    # the ablated latents: the N_FEATURES alive latents with the largest RL attribution share
    iv = r["intervention"]
    norms = cc.W_dec_LMHD.detach().flatten(2).norm(dim=-1).double()
    rl_share = (norms[:, 1] / norms.sum(1)).tolist()
    fired = (cc.encode(x_eval.float()) > 0).any(0).tolist()
    alive = [i for i in range(r["n_latents"]) if fired[i]]
    assert iv["model"] == "rl" and sorted(iv["features"]) == sorted(sorted(alive, key=lambda i: -rl_share[i])[:8])
    assert iv["n_controls"] == iv["n_controls_asked"] >= 2
    # tasks: the training domain and the out-of-domain task where RL's accuracy is nearest 50% (held out)
    acc_rl = org.summary()["accuracy"][f"rl-{dom}"]
    ood = min((d for d in org.config.pretrain_domains if d != dom), key=lambda d: abs(acc_rl[d] - 0.5))
    assert list(iv["tasks"]) == [dom, ood] and [t["held_out"] for t in iv["tasks"].values()] == [False, True]
    rl_correct = recorded_correct(org, f"rl-{dom}")
    for name, t in iv["tasks"].items():  # unedited: the RL model's recorded correctness on the same problems
        check_task(t, iv["n_controls"], rl_correct[name][: t["n"]])
    assert n_images(nb) >= 3  # training curve, ternary, MAS histograms


def test_walkthrough(notebook_env, tiny_organisms):
    from scipy.stats import mannwhitneyu

    from featalign.activations import ActivationStore
    from featalign.crosscoder import Crosscoder
    from tests.analysis.helpers import reference_joint_drift, reference_success_selection

    r, nb = execute("walkthrough.ipynb", notebook_env)
    org = tiny_organisms
    summary = org.summary()
    cfg = org.config
    dom = cfg.post_train_domains[0]
    assert r["notebook"] == "walkthrough" and r["preset"] == "tiny"
    base_ok, rl_ok = recorded_correct(org, "base"), recorded_correct(org, f"rl-{dom}")

    # 1. the organisms' accuracies, straight from the build's evaluation; CMH odds ratios by hand from its record
    for k, name in (("base", "base"), ("rl", f"rl-{dom}"), ("sft", f"sft-{dom}")):
        assert r["accuracy"][k] == pytest.approx(summary["accuracy"][name])
        assert r["accuracy"][k] == pytest.approx({d: c.mean() for d, c in recorded_correct(org, name).items()})
    for kind in ("rl", "sft"):
        tuned = recorded_correct(org, f"{kind}-{dom}")
        for scope, domains in (("in_domain", [dom]), ("out_of_domain", [d for d in cfg.pretrain_domains if d != dom])):
            c = r["cmh"][kind][scope]
            assert c["odds_ratio"] == pytest.approx(mh_odds_ratio([(base_ok[d], tuned[d]) for d in domains]))
            assert c["mean_delta_points"] == pytest.approx(
                100 * np.mean([tuned[d].mean() - base_ok[d].mean() for d in domains]))

    # 2-3. trio crosscoder quality, recomputed from the notebook's crosscoder and held-out store
    work = one_dir("notebooks/walkthrough-tiny-*", notebook_env.parent / "cache")
    x_eval = ActivationStore(work / "acts-eval-trio-seed0").read(0, 2000)  # the notebook's tiny EVAL_TOKENS
    run = one_dir("*/crosscoders/trio", work).parents[1]
    trio = Crosscoder.load(run / "crosscoders" / "trio")
    ref = reference_quality(trio, x_eval)
    assert r["trio_fvu"] == pytest.approx(ref["fvu"], rel=1e-5)
    att = r["attribution"]
    assert att["n_alive"] == trio.cfg.n_latents - ref["dead"]
    assert sum(att["class_counts_after_latent_scaling"].values()) == sum(att["class_counts"].values())

    # 4. controls: identical inputs give no specific latents and a narrower NRN spread than disjoint halves;
    # the classes nest (tuned-only latents are tuned-leaning) and are disjoint (none tuned-only and base-only)
    ctl = r["controls"]
    assert set(ctl) == {"base-vs-rl", "base-vs-sft", "null-same", "null-disjoint"}
    for c in ctl.values():
        assert c["t_only"] <= c["t_lean"] and c["t_only"] + c["o_only"] + c["shared"] <= c["n_alive"]
    assert ctl["null-same"]["t_only"] == ctl["null-same"]["o_only"] == 0
    assert ctl["null-same"]["nrn_sd"] < ctl["null-disjoint"]["nrn_sd"]

    # 5. drift over the checkpoints, recomputed by a slow loop from each series' crosscoder
    train = ActivationStore(work / "acts-train-seed0")
    x_train = train.read()[:2000]  # EVAL_TOKENS rows: where the notebook counts a latent alive
    stab = {}
    for kind in ("sft", "rl"):
        cc = Crosscoder.load(run / "crosscoders" / f"drift-{kind}")
        cols = [train.models.index(m if m in train.models else m.split("@")[0]) for m in cc.cfg.models]
        overlap, stab[kind] = reference_joint_drift(cc, x_train[:, cols], 10)
        d = r["drift"][kind]
        assert len(overlap) == cfg.n_checkpoints - 1 and d["overlap"] == pytest.approx(overlap)
        assert d["k"] == len(stab[kind]) and d["stabilisation_median"] == float(np.median(stab[kind]))
    assert r["drift"]["sft_vs_rl_p"]["stabilisation"] == pytest.approx(
        mannwhitneyu(stab["sft"], stab["rl"], alternative="less").pvalue)

    # 6. RL-success features on the tiny RL model: the selection tasks where RL beats the base on >= 8 problems,
    # and the per-task sets of the explicit-loop reference on the same trio crosscoder
    s = r["success"]
    ood = [d for d in cfg.pretrain_domains if d != dom]
    select = ood[:-2]  # the notebook holds the last N_HELD_OUT = 2 out
    ref = reference_success_selection(trio, org.base_dir, org.model_dir("rl"),
                                      {t: (eval_problems(t, cfg.eval_samples), base_ok[t], rl_ok[t]) for t in select})
    assert len(ref["n_samples"]) >= 2 and s["summary"]["tasks"] == list(ref["n_samples"])
    assert s["summary"]["n_samples"] == ref["n_samples"]
    assert s["summary"]["per_task_sizes"] == {t: len(v) for t, v in ref["per_task"].items()}
    assert s["summary"]["n_features"] == len(ref["features"])
    if ref["features"]:
        assert s["status"] == "ok" and s["features"] == ref["features"]
    else:  # an empty intersection: the notebook falls back to the 8 most RL-leaning alive latents
        assert s["status"] == "fallback" and len(s["features"]) == 8

    # 7a. ablation with matched random controls, selection and held-out tasks apart
    ab = r["ablation"]
    assert ab["n_controls"] == ab["n_controls_asked"] >= 2
    assert set(ab["summary"]) == {"selection", "held_out"}
    assert list(ab["summary"]["held_out"]["tasks"]) == ood[-2:]
    for g in ab["summary"].values():
        for k, t in g["tasks"].items():
            check_task({**t, **ab["per_sample"][k]}, ab["n_controls"], rl_ok[k][: t["n"]])
        assert g["mean_delta"] == pytest.approx(sum(t["delta"] for t in g["tasks"].values()) / len(g["tasks"]))

    # 7b. steering sweep: coefficient 0 is a no-op, so both feature sets give the base model's recorded accuracy
    sw = r["sweep"]
    assert sw["coefs"][0] == 0.0 and len(sw["coefs"]) >= 2
    tasks = set(ab["summary"]["selection"]["tasks"]) | set(ab["summary"]["held_out"]["tasks"])
    assert set(sw["real"]) == set(sw["control"]) == tasks
    for k in tasks:
        n = ab["summary"]["held_out" if k in ood[-2:] else "selection"]["tasks"][k]["n"]
        assert len(sw["real"][k]) == len(sw["control"][k]) == len(sw["coefs"])
        assert sw["real"][k][0] == sw["control"][k][0] == pytest.approx(base_ok[k][:n].mean())
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
