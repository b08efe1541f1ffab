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


def test_feature_interventions_example(tiny_organisms, tmp_path):
    mod = _load("reproduce_feature_interventions")
    out = tmp_path / "fi"
    # Model-folder options, with the tiny SFT model in the tuned role: the tiny RL model moves too little
    # to have base-fail / tuned-success samples (on 100 prompts SFT has 7, 7, 6 on sort, compare, lookup).
    base, tuned = tiny_organisms.base_dir, tiny_organisms.model_dir("sft")
    args = ["--model", f"base={base}", "--model", f"rl={tuned}", "--out", str(out), "--n-prompts", "100",
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
    tasks as a user's JSONL file holding the same problems: the tasks are scored as before, and the
    activations are cached on the file's text (its rows), not on the organisms' domain mixture."""
    from featalign.activations import TaskSetSource
    from featalign.activations.store import rank_manifest_name
    from featalign.tasks import TaskSet

    mod = _load("reproduce_feature_interventions")
    base, tuned = tiny_organisms.base_dir, tiny_organisms.model_dir("sft")
    tasks = tmp_path / "tasks.jsonl"
    tasks.write_text("".join(json.dumps({"task": d, "prompt": p.prompt, "answer": p.answer}) + "\n"
                             for d in ("sort", "compare", "lookup", "bool") for p in eval_problems(d, 100)))
    out = tmp_path / "fi"
    r = mod.main(["--model", f"base={base}", "--model", f"rl={tuned}", "--tasks", str(tasks), "--out", str(out),
                  "--selection-tasks", "sort,compare,lookup", "--held-out-tasks", "bool", "--min-samples", "3",
                  "--n-tokens", "3000", "--eval-tokens", "1500", "--n-latents", "128", "--steps", "60",
                  "--n-controls", "2", "--n-bins", "2", "--sweep-coefs", "0,1", "--sweep-controls", "1",
                  "--progress", "false"])
    assert r["success"]["tasks"] == ["sort", "compare", "lookup"] and len(r["features"]) >= 1
    tm, tok = load_organism(tuned)
    ref = score_problems(tm, tok, eval_problems("bool", 100)).mean()
    assert r["ablate_rl"]["held_out"]["tasks"]["bool"]["acc_without"] == pytest.approx(ref)
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
