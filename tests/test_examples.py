"""The reproduction scripts in examples/, end to end on the tiny organisms (small sizes), checked against
independent computations of the same numbers."""

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest

from featalign.evaluation import eval_problems, score_problems
from featalign.organisms.model import load_organism
from featalign.organisms.tasks import sample_problems
from tests.archs import tiny_random_model

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def success_setup(org) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], list[str], str]:
    """The build's per-sample correctness of base and RL, the out-of-domain tasks on which RL beats the base
    on >= min_samples problems (the first 3: selection tasks), and one more out-of-domain task (held out)."""
    from featalign.analysis.success_features import SuccessConfig

    ev = lambda n: {d: np.array(v, bool) for d, v in  # noqa: E731
                    json.loads((org.eval_dir / f"{n}.json").read_text())["correct"].items()}
    dom = org.config.post_train_domains[0]
    base_ok, rl_ok = ev("base"), ev(f"rl-{dom}")
    ood = [d for d in org.config.pretrain_domains if d != dom]
    enough = [d for d in ood if int((~base_ok[d] & rl_ok[d]).sum()) >= SuccessConfig().min_samples]
    assert len(enough) >= 3, "the tiny preset's RL model must beat the base on 3 tasks (tests/organisms/test_build.py)"
    return base_ok, rl_ok, enough[:3], next(d for d in ood if d not in enough[:3])


def check_success_against_reference(r: dict, cc, org, base_ok, rl_ok, sel: list[str], min_features: int = 8):
    """The example's RL-success selection equals the explicit-loop reference on the same crosscoder and models,
    and the features it intervened on follow its rule: the intersection, else the majority set, else the top
    `min_features` by mean max-normalised score."""
    from tests.analysis.helpers import reference_success_selection

    rl_dir = org.model_dir("rl")
    n = org.config.eval_samples
    ref = reference_success_selection(cc, org.base_dir, rl_dir,
                                      {t: (eval_problems(t, n), base_ok[t], rl_ok[t]) for t in sel})
    s = r["success"]
    assert s["tasks"] == sel and s["skipped"] == {}
    assert s["n_samples"] == ref["n_samples"] == {t: int((~base_ok[t] & rl_ok[t]).sum()) for t in sel}
    assert s["per_task_sizes"] == {t: len(v) for t, v in ref["per_task"].items()}
    assert s["features"] == ref["features"] and s["majority_features"] == ref["majority"]
    if len(ref["features"]) >= min_features:
        expected = ref["features"]
    elif len(ref["majority"]) >= min_features:
        expected = ref["majority"]
    else:
        norm = np.mean([np.array(v) / max(v) for v in ref["scores"].values()], 0)
        expected = sorted(np.argsort(-norm, kind="stable")[:min_features].tolist())
    # latents that never fire on the eval activations are dropped (they have no typical activation)
    assert set(r["features"]) <= set(expected) and r["features"] == sorted(r["features"])


def test_feature_interventions_example(tiny_organisms, tmp_path):
    """On the tiny base and RL models (their folders as --model options), selection run on the tasks where RL
    beats the base, checked against the explicit-loop reference on the example's own crosscoder."""
    from featalign.crosscoder import Crosscoder

    mod = _load("reproduce_feature_interventions")
    org, out = tiny_organisms, tmp_path / "fi"
    base_ok, rl_ok, sel, held = success_setup(org)
    n = org.config.eval_samples  # the build's eval problems: its recorded correctness is the reference
    args = ["--model", f"base={org.base_dir}", "--model", f"rl={org.model_dir('rl')}", "--out", str(out),
            "--n-prompts", str(n), "--selection-tasks", ",".join(sel), "--held-out-tasks", held,
            "--n-tokens", "3000", "--eval-tokens", "1500", "--n-latents", "128", "--steps", "60",
            "--n-controls", "2", "--n-bins", "2", "--sweep-coefs", "0,1", "--sweep-controls", "1",
            "--progress", "false"]
    r = mod.main(args)
    check_success_against_reference(r, Crosscoder.load(out / "crosscoder"), org, base_ok, rl_ok, sel)
    assert (out / "report.md").exists() and (out / "figures" / "steer_sweep.png").exists()
    saved = json.loads((out / "results.json").read_text())
    assert saved["features"] == r["features"] and saved["success"] == json.loads(json.dumps(r["success"]))
    assert json.loads((out / "config.json").read_text())["n_prompts"] == n
    # accuracy without the edit = the RL model's own greedy accuracy as the build recorded it
    for t in sel + [held]:
        assert r["ablate_rl"]["held_out" if t == held else "selection"]["tasks"][t]["acc_without"] == pytest.approx(
            rl_ok[t].mean())
    # coefficient 0 of the sweep is a no-op
    assert all(row["delta"] == 0.0 for row in r["sweep"] if row["coef"] == 0.0)


def test_drift_example(tiny_organisms, tmp_path):
    mod = _load("reproduce_drift")
    out = tmp_path / "drift"
    r = mod.main(["--organisms-dir", str(tiny_organisms.root), "--out", str(out), "--n-tokens", "2000",
                  "--eval-tokens", "1000", "--n-latents", "64", "--steps", "40", "--top-k", "8",
                  "--progress", "false"])
    # the overlaps, recomputed by a slow loop from each series' joint crosscoder and the activations it fired on
    from featalign.activations import ActivationStore
    from featalign.crosscoder import Crosscoder
    from tests.analysis.helpers import reference_joint_drift

    store = ActivationStore(out / "activations" / "train")
    x = store.read()[:1000]  # --eval-tokens rows: where drift counts a latent alive
    ref = {}
    for kind in ("sft", "rl"):
        cc = Crosscoder.load(out / "crosscoders" / f"drift-{kind}-joint")
        cols = [store.models.index(m if m in store.models else m.split("@")[0]) for m in cc.cfg.models]
        ref[kind], stab = reference_joint_drift(cc, x[:, cols], 8)
        assert len(ref[kind]) == tiny_organisms.config.n_checkpoints - 1
        assert r["drift"][kind]["overlap"] == pytest.approx(ref[kind])
        assert r["drift"][kind]["stabilisation_median"] == float(np.median(stab))
    assert r["drift"]["sft_vs_rl"]["overlap_diff_per_pair"] == pytest.approx(np.subtract(ref["sft"], ref["rl"]))
    assert (out / "figures" / "drift.png").exists() and "| sft |" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match="no rl model"):
        mod.main(["--model", f"base={tiny_organisms.base_dir}", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()  # refused before any work: no half-made --out


def test_transfer_example(tiny_organisms, tmp_path):
    mod = _load("reproduce_transfer_study")
    src = tiny_organisms.root
    before = (src / "config.json").read_text()
    out = tmp_path / "tr"
    root = out / "organisms"  # the example's copy, with the extra runs
    dom = tiny_organisms.config.post_train_domains[0]
    extra = next(d for d in ("add", "sub") if d != dom)  # a domain the source folder lacks
    base, rl = src / "base", src / f"rl-{dom}" / "ckpt-5"
    r = mod.main(["--organisms-dir", str(src), "--out", str(out), "--domains", f"{dom},{extra}",
                  "--pairs", f"{base}:{rl}:{dom}", "--tasks", f"organisms:{dom},bool", "--n-prompts", "40"])
    o = r["organisms"]
    assert o["domains"] == [dom, extra] and (root / f"rl-{extra}" / "ckpt-5").exists()
    assert (src / "config.json").read_text() == before and not (src / f"rl-{extra}").exists()
    # the transfer matrix agrees with the per-sample evaluation the build saved
    ev = lambda n: json.loads((root / "eval" / f"{n}.json").read_text())["correct"]  # noqa: E731
    b, t = ev("base"), ev(f"rl-{extra}")
    j = o["rl"]["eval_domains"].index("bool")
    assert o["rl"]["delta_points"][1][j] == pytest.approx(100 * (np.mean(t["bool"]) - np.mean(b["bool"])))
    assert o["rl"]["cmh"]["in_domain"]["n_strata"] == 2 and o["rl"]["cmh"]["out_of_domain"]["n_strata"] == 18
    # observational pair: deltas from an independent scoring
    assert r["pairs"]["tasks"] == [dom, "bool"]
    pair = r["pairs"]["pairs"][f"{base} -> {rl} [{dom}]"]
    bm, tok = load_organism(base)
    rm, _ = load_organism(rl)
    p = eval_problems("bool", 40)
    assert pair["delta_points"]["bool"] == pytest.approx(
        100 * (score_problems(rm, tok, p).mean() - score_problems(bm, tok, p).mean()))
    assert (out / "figures" / "transfer_rl.png").exists()
    with pytest.raises(ValueError, match="base:tuned"):
        mod.main(["--skip-build", "true", "--pairs", "onlyone", "--out", str(tmp_path / "bad")])


# --- the examples on a user's models and task set -------------------------------------------------------


def write_tasks(path: Path, tasks: dict[str, str], n: int) -> Path:
    """A JSONL task set of the user's kind: {task, prompt, answer} rows, tasks named by the user (here drawn
    from organisms domains, so that the tiny organisms solve some of them)."""
    rows = [{"task": name, "prompt": p.prompt, "answer": p.answer}
            for name, domain in tasks.items() for p in sample_problems(domain, n, "eval", 7)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_feature_interventions_example_on_user_tasks(tiny_organisms, tmp_path):
    """The same run as test_feature_interventions_example, with the models as analyze's --model flags and the
    tasks as a user's JSONL file holding the same problems: the tasks are scored as before (the build's
    correctness), and the activations are cached on the file's text (its rows), not on the organisms' domain
    mixture."""
    from featalign.activations import TaskSetSource
    from featalign.activations.store import rank_manifest_name
    from featalign.crosscoder import Crosscoder
    from featalign.tasks import TaskSet

    mod = _load("reproduce_feature_interventions")
    org = tiny_organisms
    base_ok, rl_ok, sel, held = success_setup(org)
    n = org.config.eval_samples
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task": d, "prompt": p.prompt, "answer": p.answer}) + "\n"
                             for d in sel + [held] for p in eval_problems(d, n)))
    out = tmp_path / "fi"
    r = mod.main(["--model", f"base={org.base_dir}", "--model", f"rl={org.model_dir('rl')}", "--tasks", str(tasks),
                  "--out", str(out), "--selection-tasks", ",".join(sel), "--held-out-tasks", held,
                  "--n-tokens", "3000", "--eval-tokens", "1500", "--n-latents", "128", "--steps", "60",
                  "--n-controls", "2", "--n-bins", "2", "--sweep-coefs", "0,1", "--sweep-controls", "1",
                  "--progress", "false"])
    check_success_against_reference(r, Crosscoder.load(out / "crosscoder"), org, base_ok, rl_ok, sel)
    assert r["ablate_rl"]["held_out"]["tasks"][held]["acc_without"] == pytest.approx(rl_ok[held].mean())
    task_set = TaskSet.from_jsonl(tasks)
    for split, source in (("train", TaskSetSource(task_set, "all")), ("eval", TaskSetSource(task_set, "eval"))):
        manifest = json.loads((out / "activations" / split / rank_manifest_name(0)).read_text())
        assert list(manifest["progress"]) == [source.fingerprint()]


def test_drift_example_on_user_models(tmp_path):
    """Random HF models as a user's base and RL series; the series' checkpoints are identical copies, so every
    (base, checkpoint) crosscoder is the same and drift must find nothing: overlap 1, stabilised at once."""
    from featalign.activations import ActivationStore, TaskSetSource
    from featalign.activations.store import rank_manifest_name
    from featalign.tasks import TaskSet

    mod = _load("reproduce_drift")
    base = tiny_random_model("llama", tmp_path / "base", seed=0)
    rl = tiny_random_model("llama", tmp_path / "rl", seed=1)
    copies = [shutil.copytree(rl, tmp_path / f"rl-ckpt{k}") for k in (1, 2)]
    tasks = write_tasks(tmp_path / "tasks.jsonl", {"logic": "bool", "order": "compare"}, 20)
    out = tmp_path / "drift"
    r = mod.main(["--model", f"base={base}", "--model", f"rl={rl}", "--series", f"rl={copies[0]},{copies[1]},{rl}",
                  "--tasks", str(tasks), "--drift-mode", "pairwise", "--out", str(out), "--n-tokens", "1200",
                  "--eval-tokens", "600", "--n-latents", "32", "--k", "4", "--steps", "30", "--top-k", "4",
                  "--progress", "false"])
    d = r["drift"]["rl"]
    assert d["mode"] == "pairwise" and d["k"] == 4
    assert d["overlap"] == [1.0, 1.0] and d["stabilisation_median"] == 1.0 and d["topk_entry_median"] == 1.0
    assert d["new_features"][1:] == [0, 0]
    assert set(r["drift"]) == {"rl"}  # no sft series: no sft-vs-rl comparison
    assert r["models"]["series"]["rl"] == [str(copies[0]), str(copies[1]), str(rl)]
    # one store of the distinct models (the last checkpoint is the rl model's column), on the task file's text
    store_dir = out / "activations" / "train"
    assert list(ActivationStore(store_dir).models) == ["base", "rl", "rl@1", "rl@2"]
    text = TaskSetSource(TaskSet.from_jsonl(tasks), "all").fingerprint()
    assert list(json.loads((store_dir / rank_manifest_name(0)).read_text())["progress"]) == [text]
    with pytest.raises(ValueError, match="at least 2"):
        mod.main(["--model", f"base={base}", "--model", f"rl={rl}", "--series", f"rl={rl}",
                  "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()


def test_transfer_example_on_user_tasks(tiny_organisms, tmp_path):
    """The observational part on a user's JSONL task set: pairs from --pairs and from a model set."""
    mod = _load("reproduce_transfer_study")
    base, sft = Path(tiny_organisms.base_dir), Path(tiny_organisms.model_dir("sft"))
    copy = shutil.copytree(base, tmp_path / "base-copy")  # a "tuned" model that is the base, scored on its own
    tasks = write_tasks(tmp_path / "tasks.jsonl", {"logic": "bool", "order": "compare"}, 40)
    out = tmp_path / "tr"
    r = mod.main(["--skip-build", "true", "--tasks", str(tasks), "--out", str(out),
                  "--pairs", f"{base}:{copy},{base}:{sft}:order,{base}:{copy}:logic",
                  "--model", f"base={base}", "--model", f"sft={sft}", "--train-tasks", "order"])
    res = r["pairs"]
    assert res["tasks"] == ["logic", "order"] and res["n_prompts"] == {"logic": 40, "order": 40}
    pairs = res["pairs"]
    assert list(pairs) == [f"{base} -> {copy}", f"{base} -> {sft} [order]", f"{base} -> {copy} [logic]",
                           "base -> sft"]
    # the same weights decode the same completions: delta exactly 0, no discordant pair, McNemar p = 1
    same = pairs[f"{base} -> {copy}"]
    assert all(a > 0 for a in same["base_accuracy"].values())  # not the trivial 0 of a model that solves nothing
    assert same["delta_points"] == {"logic": 0.0, "order": 0.0}
    for t in ("logic", "order"):
        m = same["mcnemar"][t]
        assert m["base_fail_tuned_ok"] == m["base_ok_tuned_fail"] == 0 and m["p_value"] == 1.0
    # in/out of task: one stratum each, whose deltas are the pair's deltas on its training task and the other
    tuned = pairs[f"{base} -> {sft} [order]"]
    io = tuned["in_out_cmh"]
    assert io["in_domain"]["n_strata"] == io["out_of_domain"]["n_strata"] == 1
    assert io["in_domain"]["mean_delta_points"] == pytest.approx(tuned["delta_points"]["order"])
    assert io["out_of_domain"]["mean_delta_points"] == pytest.approx(tuned["delta_points"]["logic"])
    # the model set's pair (its base against its sft, trained on --train-tasks) is the same comparison
    ms = pairs["base -> sft"]
    assert (ms["base"], ms["tuned"], ms["train_tasks"]) == (str(base), str(sft), ["order"])
    assert ms["delta_points"] == tuned["delta_points"] and ms["in_out_cmh"] == io
    # the transfer matrix: one row per tuned model of the base, one column per task of the set
    tr = res["transfer"][str(base)]
    assert tr["tasks"] == ["logic", "order"] and tr["tuned"] == list(pairs)
    assert tr["delta_points"] == [[p["delta_points"][t] for t in tr["tasks"]] for p in pairs.values()]
    # pooled over the base's --pairs that name a training task (not the model set's): 2 in-, 2 out-of-task strata
    pooled = res["pooled_in_out_cmh"][str(base)]
    assert pooled["in_domain"]["n_strata"] == pooled["out_of_domain"]["n_strata"] == 2
    assert pooled["in_domain"]["mean_delta_points"] == pytest.approx(tuned["delta_points"]["order"] / 2)
    assert (out / "figures" / "transfer_pairs_1.png").exists()
    assert "| pair | logic | order | CMH OR over tasks [95% CI] |" in (out / "report.md").read_text()
    with pytest.raises(ValueError, match=r"\['chess'\] are not tasks"):
        mod.main(["--skip-build", "true", "--tasks", str(tasks), "--model", f"base={base}", "--model", f"rl={sft}",
                  "--train-tasks", "chess", "--out", str(tmp_path / "bad")])
    assert not (tmp_path / "bad").exists()
