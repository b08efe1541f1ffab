"""Docs: the site (Markdown pages + pdoc API reference) builds with every link resolving, the API reference
renders every public module, and the public API has docstrings."""

from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import inspect
import json
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _build_api():
    spec = importlib.util.spec_from_file_location("featalign_docs_build_api", ROOT / "docs" / "build_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _build_site():
    spec = importlib.util.spec_from_file_location("featalign_docs_build_site", ROOT / "docs" / "build_site.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def site_dir(tmp_path_factory):
    """The whole docs site, built once (the API reference is its `api/` folder)."""
    pytest.importorskip("pdoc")
    out = tmp_path_factory.mktemp("site")
    _build_site().build(out)
    return out


@pytest.fixture(scope="module")
def api_dir(site_dir):
    return site_dir / "api", _build_api().public_modules()


def test_every_public_module_has_a_page(api_dir):
    out, modules = api_dir
    expected = _build_api().public_modules()
    assert modules == expected
    for must in (
        "featalign.interventions.edits",
        "featalign.interventions.experiments",
        "featalign.crosscoder.model",
        "featalign.analysis.attribution",
        "featalign.activations.store",
        "featalign.models",
    ):
        assert must in expected
    assert not [m for m in expected if any(p.startswith("_") for p in m.split("."))]
    missing = [m for m in expected if not (out / (m.replace(".", "/") + ".html")).is_file()]
    assert not missing, f"no API page for {missing}"
    assert (out / "index.html").is_file()


@pytest.mark.parametrize(
    "page, name",
    [
        ("featalign/interventions/experiments.html", "run_intervention"),
        ("featalign/interventions/edits.html", "ablate"),
        ("featalign/interventions/edits.html", "steer"),
        ("featalign/interventions/edits.html", "intervene"),
        ("featalign/crosscoder/model.html", "Crosscoder"),
        ("featalign/analysis/attribution.html", "latent_scaling"),
        ("featalign/models/loading.html", "load_model"),
        ("featalign/models/hooks.html", "edit_hooks"),
    ],
)
def test_known_public_names_are_documented(api_dir, page, name):
    out, _ = api_dir
    html = (out / page).read_text()
    assert f'id="{name}"' in html, f"{name} has no entry in {page}"


# --- the site and its links ----------------------------------------------------------------------------------


def test_every_relative_markdown_link_resolves():
    site = _build_site()
    problems = site.markdown_link_problems()
    assert not problems, "broken links:\n" + "\n".join(problems)
    assert len(site.pages()) >= 9 and (ROOT / "README.md") in site.pages()


def test_site_has_every_page_and_no_broken_internal_link(site_dir):
    site = _build_site()
    for md in site.pages():
        page = site_dir / ("index.html" if md.name == "README.md" else f"docs/{md.stem}.html")
        assert page.is_file(), f"no site page for {md.name}"
    problems = site.html_link_problems(site_dir)
    assert not problems, "broken links in the built site:\n" + "\n".join(problems[:30])
    # the checker saw real cross-page links with anchors (so an empty problem list is not vacuous)
    guide = (site_dir / "docs" / "guide.html").read_text()
    assert 'href="crosscoder.html#reading-one-models-latents-encode_as"' in guide
    assert 'id="reading-one-models-latents-encode_as"' in (site_dir / "docs" / "crosscoder.html").read_text()
    assert 'href="../api/index.html"' in guide


@pytest.mark.parametrize(
    "heading, anchor",
    [  # anchors as GitHub writes them for these headings
        ("Reading one model's latents (`encode_as`)", "reading-one-models-latents-encode_as"),
        (
            "Q1. Are there more SFT-specific latents than RL-specific ones?",
            "q1-are-there-more-sft-specific-latents-than-rl-specific-ones",
        ),
        ("Performance (`benchmarks/bench_cache.py`)", "performance-benchmarksbench_cachepy"),
        ("Export to sae_lens (SAEBench, sae-dashboard)", "export-to-sae_lens-saebench-sae-dashboard"),
        ("`python -m featalign.organisms`", "python--m-featalignorganisms"),
    ],
)
def test_heading_anchors_follow_github(heading, anchor):
    assert _build_site().github_slug(heading) == anchor


def test_link_checks_catch_what_is_broken(tmp_path):
    site = _build_site()
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "b.md").write_text("# Title\n\n## Same\n\n## Same\n")
    a = tmp_path / "docs" / "a.md"
    a.write_text(
        "see [b](b.md#same-1), [top](#intro) and `[not a link](missing.md)`\n\n# Intro\n\n"
        "[gone](nothing.md), [bad anchor](b.md#other), ![img](pic.png), [web](https://example.org/x)\n"
        "```\n[in code](missing2.md)\n```\n[ref]: ../README.md#nowhere\n"
    )
    (tmp_path / "README.md").write_text("# R\n")
    problems = site.markdown_link_problems(tmp_path, [a])
    assert len(problems) == 4, problems
    for bad in ("nothing.md", "b.md#other", "pic.png", "README.md#nowhere"):
        assert any(bad in p for p in problems), (bad, problems)
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "x.html").write_text(
        '<h1 id="here">x</h1><a href="#here">ok</a><a href="y.html#nope">no</a>'
        '<a href="z.html">none</a><img src="x.html"><a href="http://e.org">e</a>'
    )
    (tmp_path / "s" / "y.html").write_text('<p id="yes">y</p><a href="x.html#here">back</a>')
    problems = site.html_link_problems(tmp_path / "s")
    assert sorted(p.split(": ")[1] for p in problems) == ["y.html#nope", "z.html"], problems


# --- every public function / class has a docstring -------------------------------------------------

#: Modules whose public functions and classes must all carry a docstring.
DOCSTRING_MODULES = (
    "featalign.interventions.*",
    "featalign.evaluation",
    "featalign.models.*",
    "featalign.tasks",
    "featalign.model_set",
    "featalign.generation",
    "featalign.distributed",
    "featalign.analysis.*",
    "featalign.crosscoder.*",
    "featalign.activations.*",
    "featalign.organisms.*",
)

#: Known gaps in files the documentation pass did not own (they were being edited elsewhere at the
#: time). Remove an entry once its docstring exists; a stale entry is reported, not failed.
UNOWNED_FILES_WITHOUT_DOCSTRINGS = {
    "featalign.interventions.experiments": {"TaskResult", "InterventionResult"},
    "featalign.crosscoder.train": {"sparsity_coef_at"},
}


def _modules(patterns) -> list[str]:
    names = _build_api().public_modules()
    out = []
    for pat in patterns:
        if pat.endswith(".*"):
            pkg = pat[:-2]
            out += [n for n in names if n == pkg or n.startswith(pkg + ".")]
        else:
            assert pat in names, f"{pat} is not a public module"
            out.append(pat)
    return sorted(set(out))


def _own_docstring(obj) -> str:
    if inspect.isclass(obj):
        doc = obj.__dict__.get("__doc__") or ""
        # @dataclass writes "Name(field: type, ...)" when the class has no docstring
        if dataclasses.is_dataclass(obj) and doc.startswith(obj.__name__ + "("):
            return ""
        return doc.strip()
    return (obj.__doc__ or "").strip()


def _undocumented(module_name: str) -> list[str]:
    mod = importlib.import_module(module_name)
    out = []
    for name, obj in vars(mod).items():
        if name.startswith("_") or not (inspect.isfunction(obj) or inspect.isclass(obj)):
            continue
        if getattr(obj, "__module__", None) != module_name:  # re-exported from elsewhere: checked there
            continue
        if not _own_docstring(obj):
            out.append(name)
    return out


def test_public_api_has_docstrings():
    missing, stale = [], []
    for m in _modules(DOCSTRING_MODULES):
        mod = importlib.import_module(m)
        if not (mod.__doc__ or "").strip():
            missing.append(f"{m} (module docstring)")
        allowed = UNOWNED_FILES_WITHOUT_DOCSTRINGS.get(m, set())
        undocumented = set(_undocumented(m))
        missing += [f"{m}.{n}" for n in sorted(undocumented - allowed)]
        stale += [f"{m}.{n}" for n in sorted(allowed - undocumented)]
    assert not missing, f"public functions/classes without a docstring: {missing}"
    if stale:
        print(f"allowlisted names that now have docstrings (remove them from the allowlist): {stale}")


# --- tables rendered from committed run outputs ------------------------------------------------------


def test_rendered_tables_agree_with_their_json():
    mod_spec = importlib.util.spec_from_file_location("featalign_docs_render", ROOT / "docs" / "render_tables.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    page = (ROOT / "docs" / "organisms.md").read_text()
    assert "<!-- table:organisms-default-2026-12-01 -->" in page
    assert render.render(page) == page, "docs/organisms.md disagrees with docs/data: run python docs/render_tables.py"
    # the check can fail: a hand-edited number is caught
    edited = page.replace("| **count** (in-domain) | 58.0 |", "| **count** (in-domain) | 60.4 |")
    assert edited != page and render.render(edited) != edited
    # the structured preset's section is rendered from its build's JSON too
    structured = json.loads((ROOT / "docs" / "data" / "organisms_structured_summary.json").read_text())
    rl_same = structured["transfer"]["rl"]["cmh"]["same_family"]
    row = f"| RL | same_family | {rl_same['n_strata']} | {rl_same['odds_ratio']:.2f} [{rl_same['ci_low']:.2f}, "
    assert row in page
    edited = page.replace(row, row.replace(f"{rl_same['odds_ratio']:.2f} [", "9.99 ["))
    assert edited != page and render.render(edited) != edited


# --- docs/results.md, written whole from docs/data/results/seed-*.json ----------------------------------------


def _results():
    spec = importlib.util.spec_from_file_location("featalign_docs_results", ROOT / "docs" / "results.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _strings(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _strings(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _strings(v)
    elif isinstance(obj, str):
        yield obj


def test_results_page_agrees_with_its_json():
    import copy
    import json

    res = _results()
    page = (ROOT / "docs" / "results.md").read_text()
    assert res.render_page() == page, (
        "docs/results.md disagrees with docs/data/results: run python docs/results.py render"
    )
    files = sorted((ROOT / "docs" / "data" / "results").glob("seed-*.json"))
    assert files and sum(f.stat().st_size for f in files) < 200_000
    runs = res.load_runs()
    # no path of the machine that ran it: every absolute path was rewritten to <organisms>/... or <out>/...
    assert not [s for r in runs for s in _strings(r) if s.startswith(("/", "~"))]
    assert not any(m in page for m in ("/work/", "/tmp/", "/home/", "/root/"))
    # the check can fail: one number changed in the JSON changes the page, in the row that shows it
    edited = copy.deepcopy(runs)
    edited[0]["interventions"]["ablate_rl"]["held_out"]["tasks"]["max"]["mcnemar_p"] = 0.5
    new = res.render(edited, res.load_prediction(res.DATA / res.PREDICTION.name), res.load_variants())
    assert new != page and [ln for ln in new.splitlines() if ln not in page.splitlines()][0].startswith(
        "| ablate in RL | max (held out) |"
    )
    # render_tables.py --check covers this page too (one check for every generated page)
    spec = importlib.util.spec_from_file_location("featalign_docs_render2", ROOT / "docs" / "render_tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.whole_pages()["results.md"]() == page
    assert json.loads(files[0].read_text())["seed"] == runs[0]["seed"]


def _iv(c, lo, hi):
    return {"count": c, "low": lo, "high": hi}


def _cmh(odds, lo, hi, delta=1.0):
    return {"odds_ratio": odds, "ci_low": lo, "ci_high": hi, "p_value": 0.01, "n_strata": 1, "mean_delta_points": delta}


def _row(delta=-0.01, ci=(-0.03, 0.01), control_p=0.5):
    return {
        "acc_without": 0.5,
        "acc_with": 0.5 + delta,
        "delta": delta,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "mcnemar_p": 0.3,
        "control_p": control_p,
        "subset_acc_without": 1.0,
        "subset_acc_with": 0.9,
        "subset_control_p": 0.6,
    }


def _series(overlap, entry, stab):
    return {
        "overlap": overlap,
        "mean_overlap": sum(overlap) / len(overlap),
        "topk_entry_median": entry,
        "topk_entry_median_95": [entry - 1, entry + 1],
        "stabilisation_median": stab,
        "stabilisation_median_95": [stab, stab],
        "n_specific": [0, 0, 0],
    }


def _hand_record(
    seed, lean=(-2, 5), entry=(-2, 0, 0.03), ablate=((-0.03, 0.01), 0.5), rl_out=(0.8, 0.95), sft_alive=700
):
    """A small seed record by hand (two domains `a`, `b`; trained on `a`), its deciding numbers as given."""
    sft, rl = _series([0.6, 0.8], 2, 2), _series([0.5, 0.7], 3, 1)
    diff = lambda lo, hi, p: {
        "median_diff": (lo + hi) / 2,
        "median_diff_95": [lo, hi],
        "mannwhitney_p_a_earlier": p,
        "overlap_diff_per_pair": [0.1, 0.1],
    }
    pair = lambda n, sd: {
        "n_alive": n,
        "nrn_sd": sd,
        **{c: _iv(0, 0, 4) for c in ("tuned_only", "base_only", "tuned_lean", "base_lean")},
        "shared": _iv(n, n - 4, n),
    }
    disjoint = {**pair(900, 0.3), "tuned_only": _iv(50, 40, 60)}
    edit = lambda bool_row: {"selection": {"tasks": {"a": bool_row}}, "held_out": {"tasks": {"b": _row()}}}
    org_cfg = {
        "preset": "hand",
        "d_model": 8,
        "n_layers": 1,
        "pretrain_steps": 10,
        "pretrain_domains": ["a", "b"],
        "sft_lr": 0.1,
        "rl_lr": 0.01,
        "rl_group_size": 2,
        "rl_prompts_per_step": 2,
        "post_train_prompts": 4,
        "post_train_domains": ["a"],
        "sft_epochs": 1,
        "n_checkpoints": 3,
        "eval_samples": 10,
    }
    cmh = {"in_domain": _cmh(3.0, 2.0, 4.0, 20.0), "out_of_domain": _cmh((rl_out[0] + rl_out[1]) / 2, *rl_out, -1.0)}
    transfer = {
        "cmh": cmh,
        "delta_points": [[20.0, -1.0]],
        "eval_domains": ["a", "b"],
        "family_means": {"a": {"same_family": -1.0, "other_families": -1.0}},
    }
    return {
        "format_version": 1,
        "seed": seed,
        "organisms": {
            "config": org_cfg,
            "provenance": {"featalign_version": "0"},
            "timings_s": {},
            "summary": {
                "accuracy": {"base": {"a": 0.5, "b": 0.5}, "sft-a": {"a": 0.9, "b": 0.1}, "rl-a": {"a": 0.7, "b": 0.5}},
                "config": {"pretrain_domains": ["a", "b"], "post_train_domains": ["a"]},
                "transfer": {"rl": {"cmh": cmh}, "sft": {"cmh": cmh}},
            },
            "paired_tests": {"rl-a": {"b": {"base_fail_tuned_ok": 3, "base_ok_tuned_fail": 5}}},
        },
        "analysis": {
            "config": {
                "n_tokens": 100,
                "eval_tokens": 50,
                "variant": "batchtopk",
                "n_latents": 16,
                "k": 2,
                "steps": 5,
                "batch_size": 8,
                "lr": 0.001,
                "top_k": 4,
                "success_frac": 0.2,
                "threads": 1,
            },
            "stamp": {"featalign_version": "0"},
            "hook": "h",
            "timings_s": {"total": 10.0},
            "attribution": {"class_counts": {"shared": 10, "mixed": 2, "dead": 4}, "n_artifacts": 0},
            "q1": {
                "pairwise": {
                    "base-vs-rl": pair(600, 0.01),
                    "base-vs-sft": pair(sft_alive, 0.05),
                    "control-same": pair(650, 0.001),
                    "control-disjoint": disjoint,
                },
                "pairwise_sft_minus_rl_tuned_only": {"low": 0, "high": 0},
                "pairwise_sft_minus_rl_tuned_lean": {"low": lean[0], "high": lean[1]},
                "n_alive": 12,
                "trio": {k: _iv(0, 0, 4) for k in ("rl-only", "sft-only", "base-only")},
                "trio_after_latent_scaling": {k: _iv(0, 0, 4) for k in ("rl-only", "sft-only")},
            },
            "q2": {"sft": sft, "rl": rl, "sft_vs_rl": diff(0, 1, 0.9), "sft_vs_rl_topk_entry": diff(*entry)},
            "q3": {
                "tasks": ["b"],
                "skipped": {},
                "n_samples": {"b": 3},
                "per_task_sizes": {"b": 2},
                "n_features": 0,
                "n_majority": 2,
                "mean_pairwise_overlap": 0.0,
                "bootstrap_size_95": [0, 0],
                "gradient": {"b": {"spearman": 0.1, "top_k_jaccard": 0.2}},
                "null": {
                    "n": 5,
                    "size_mean": 0.0,
                    "size_95": [0, 0],
                    "majority_size_mean": 1.0,
                    "majority_size_95": [0, 3],
                    "mean_overlap_mean": 0.1,
                    "mean_overlap_95": [0.0, 0.2],
                },
            },
        },
        "interventions": {
            "config": {
                "variant": "batchtopk",
                "n_latents": 16,
                "steps": 5,
                "n_prompts": 10,
                "held_out_tasks": "b",
                "n_controls": 20,
                "steer_coef": 1.0,
                "sweep_controls": 1,
            },
            "success": {"tasks": ["a"], "n_samples": {"a": 3}},
            "stamp": {"featalign_version": "0"},
            "features": [1, 2],
            "rule": "hand",
            "seconds": 5.0,
            "ablate_rl": edit(_row(ci=ablate[0], control_p=ablate[1])),
            "steer_base": edit(_row()),
            "sweep": [{"coef": 1.0, "task": t, "delta": -0.01} for t in ("a", "b")],
        },
        "drift": {"seconds": 3.0, "drift": {"sft": sft, "rl": rl}, "stamp": {"featalign_version": "0"}},
        "transfer": {
            "domains": ["a"],
            "config": {"n_prompts": 10},
            "seconds": 2.0,
            "stamp": {"featalign_version": "0"},
            "rl": transfer,
            "sft": transfer,
        },
    }


def test_results_wording_follows_the_intervals():
    res = _results()
    one = res.render([_hand_record(0)])
    assert "**One crosscoder seed (0).**" in one
    assert "Code: featalign_version 0 (every run);" in one
    other = _hand_record(0)
    other["drift"]["stamp"] = {"featalign_version": "1"}
    assert "seed 0 drift: featalign_version 1; seed 0 transfer: featalign_version 0;" in res.render([other])
    # an interval that includes 0 is "no evidence", one above 0 a direction; never the point estimate alone
    assert "Graded (NRN ≥ 0.6): no evidence of a difference: the 95% interval [−2, +5] includes 0." in one
    assert "in its pairwise crosscoder, the same as the same-tokens null.**" in one
    noisy = _hand_record(0)
    noisy["analysis"]["q1"]["pairwise"]["control-same"]["tuned_only"] = _iv(2, 0, 6)
    assert "in its pairwise crosscoder (the same-tokens null has some).**" in res.render([noisy])
    above = res.render([_hand_record(0, lean=(3, 9))])
    assert "Graded (NRN ≥ 0.6): SFT has more tuned-leaning latents: the 95% interval [+3, +9] is above 0." in above
    # Q2: an interval reaching 0 with p < 0.05 is "weakly"; an interval below 0 with p < 0.05 is "yes"
    assert "by top-4 entry (the published measure): weakly, the two tests disagree;" in one
    assert "by top-4 entry (the published measure): yes;" in res.render([_hand_record(0, entry=(-3, -1, 0.01))])
    # Q2's nulls: a line only where every run has them; the order counts where p < 0.05
    assert "Against its nulls" not in one
    nulled = _hand_record(0)
    for s, p_order in (("sft", 0.01), ("rl", 0.4)):
        nulled["analysis"]["q2"][s] |= {
            "null_shuffled": {"observed": 0.7, "null_mean": 0.6, "null_95": [0.5, 0.68], "p": p_order},
            "null_copies": {"mean_overlap": 0.45},
        }
    text = res.render([nulled])
    assert "SFT the training order's overlap is higher than shuffled orders' (0.70 against 0.60 [0.50, 0.68], p = 0.01)" in text
    assert "RL no evidence that the training order matters (0.70 against 0.60 [0.50, 0.68], p = 0.4)" in text
    assert "identical copies (no training: the top-4 is ranking noise)\n  gives a mean overlap of 0.45." in text
    # Q4: only a row beyond both noise and the controls counts; 20 controls cannot give p below 1/21
    assert "**Answer: no causal role at the task level beyond matched random features.**" in one
    assert "lowest control p 0.5; 20 controls cannot give less than 0.048" in one
    causal = res.render([_hand_record(0, ablate=((-0.05, -0.01), 0.01))])
    assert "ablation hurts beyond noise and beyond its matched controls on a" in causal
    assert "**Answer: ablating them hurts beyond matched random features; steering the base along them" in causal
    helps = _hand_record(0)
    for t in helps["interventions"]["steer_base"]["selection"]["tasks"].values():
        t.update(_row(delta=0.04, ci=(0.01, 0.07), control_p=0.01))
    assert "**Answer: steering the base along them helps beyond matched random features; ablating" in res.render([helps])
    # an interval below 0 whose controls fall as far (control p 0.2) does not count
    assert "**Answer: no causal role" in res.render([_hand_record(0, ablate=((-0.05, -0.01), 0.2))])
    # seeds that disagree are counted, never answered as all or none
    split = [_hand_record(0, ablate=((-0.05, -0.01), 0.01)), _hand_record(1, ablate=((-0.05, -0.01), 0.2))]
    assert (
        "**Answer: the seeds disagree: ablating them hurts beyond matched random features in 1 of 2 seeds; steering "
        "the base along them does not help beyond them.**" in res.render(split)
    )
    # the transfer study: RL's out-of-domain odds ratio against 1
    assert "The organisms do not reproduce the" in one
    assert "The organisms reproduce the" in res.render([_hand_record(0, rl_out=(1.1, 1.5))])

    # two seeds: each seed's value, then mean and min-max range; a verdict holds only when every seed agrees
    two = res.render([_hand_record(0, sft_alive=700), _hand_record(1, lean=(3, 9), sft_alive=710)])
    assert "**2 crosscoder seeds (0, 1).**" in two
    assert "| base vs SFT | 700 / 710 (mean 705, range 700 to 710) |" in two
    assert (
        "Graded (NRN ≥ 0.6): the seeds disagree (seed 0: no evidence of a difference: the 95% interval "
        "[−2, +5] includes 0; seed 1: SFT has more tuned-leaning latents: the 95% interval [+3, +9] is above 0)."
    ) in two
    agree = res.render([_hand_record(0, lean=(3, 9)), _hand_record(1, lean=(2, 8))])
    assert "Graded (NRN ≥ 0.6): the same in all 2 seeds (seed 0: SFT has more" in agree
    # Q2's answer over seeds: "yes" only when every seed says yes
    mixed = res.render([_hand_record(0, entry=(-3, -1, 0.01)), _hand_record(1)])
    assert "by top-4 entry (the published measure): the seeds disagree;" in mixed


def test_results_refuse_seeds_from_two_builds(tmp_path):
    import json

    res = _results()
    a, b = _hand_record(0), _hand_record(1)
    b["organisms"]["config"]["pretrain_steps"] = 11
    for r in (a, b):
        (tmp_path / f"seed-{r['seed']}.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="another organisms build"):
        res.load_runs(tmp_path)


def _variant_record(variant, seed, sft_minus_rl, disjoint_low, provenance="0"):
    """A Q1-by-variant record by hand: a `_hand_record`'s analysis part under another variant."""
    rec = _hand_record(seed)
    a = rec["analysis"]
    a["config"] = {**a["config"], "variant": variant, "sparsity_coef": 2.0}
    a["q1"]["pairwise_sft_minus_rl_tuned_only"] = {"low": sft_minus_rl[0], "high": sft_minus_rl[1]}
    a["q1"]["pairwise"]["control-disjoint"]["tuned_only"] = _iv(50, disjoint_low, 60)
    return {
        "format_version": 1,
        "seed": seed,
        "variant": variant,
        "analysis": {k: a[k] for k in ("config", "stamp", "hook", "attribution", "q1", "timings_s")},
        "organisms": {**rec["organisms"], "provenance": {"featalign_version": provenance}},
    }


def test_results_variants_section_follows_the_intervals(tmp_path):
    """Q1 by variant: one table row per variant x crosscoder, a verdict per variant from its own seeds'
    intervals, the positive control's verdict, and runs from two builds refused."""
    import json

    res = _results()
    recs = [
        _variant_record("l1", 0, (1, 9), 10),
        _variant_record("l1", 1, (2, 7), 12),
        _variant_record("batchtopk", 0, (-3, 2), 0),
        _variant_record("batchtopk", 1, (-1, 4), 5),
    ]
    for r in recs:
        (tmp_path / f"{r['variant']}-seed-{r['seed']}.json").write_text(json.dumps(r))
    by_variant = res.load_variants(tmp_path)
    assert list(by_variant) == ["batchtopk", "l1"] and [r["seed"] for r in by_variant["l1"]] == [0, 1]
    text = res.variants_section(by_variant)
    l1 = next(ln for ln in text.splitlines() if ln.startswith("- **l1**"))
    btk = next(ln for ln in text.splitlines() if ln.startswith("- **batchtopk**"))
    assert "the same in all 2 seeds" in l1 and "more SFT-specific latents" in l1 and "does find specific" in l1
    assert "no evidence of a difference" in btk and "cannot tell there" in btk  # seed 0's control is at 0
    rows = [ln for ln in text.splitlines() if ln.startswith("| l1: ") or ln.startswith("| batchtopk: ")]
    assert len(rows) == 2 * len(res.PAIRS)
    assert res.variants_section({}) == ""
    other = _variant_record("l1", 2, (1, 9), 10, provenance="another build")
    (tmp_path / "l1-seed-2.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="2 organisms builds"):
        res.load_variants(tmp_path)
    # a run without the attribution stage (`--stages controls` alone) is refused with the flag that fixes it
    run = tmp_path / "run"
    run.mkdir()
    (run / "report.json").write_text(json.dumps({"config": {"seed": 0}, "q1_specific_latents": {"pairwise": {}}}))
    with pytest.raises(ValueError, match="--stages attribution,controls"):
        res.collect_variant(run, tmp_path, seed=0)


def _example(name):
    import sys

    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod  # dataclasses resolve string annotations through sys.modules
    spec.loader.exec_module(mod)
    return mod


def test_results_collect_reads_real_runs(tiny_organisms, tmp_path):
    """collect + render on the four runs' real outputs (tiny organisms, tiny sizes)."""
    import json

    from featalign.analysis.cli import main as analyze

    res, root, out = _results(), tiny_organisms.root, tmp_path / "runs"
    dom = tiny_organisms.config.post_train_domains[0]
    small = ["--n-tokens", "1000", "--eval-tokens", "400", "--n-latents", "32", "--steps", "10", "--progress", "false"]
    analyze(
        [
            "--organisms-dir",
            str(root),
            "--organisms-preset",
            "tiny",
            "--out",
            str(out / "analysis"),
            "--k",
            "4",
            "--batch-size",
            "256",
            "--top-k",
            "4",
            "--min-samples",
            "1",
            "--n-null",
            "2",
            "--n-cards",
            "1",
            "--gradient",
            "false",
            "--hook",
            "auto",
            "--layer-tokens",
            "400",
            *small,
        ]
    )
    chosen = json.loads((out / "analysis" / "report.json").read_text())["hook"]
    # the tiny RL model has no base-fail / RL-success samples: the SFT model takes the RL role (test_examples.py)
    _example("reproduce_feature_interventions").main(
        [
            "--hook",
            chosen,
            "--model",
            f"base={tiny_organisms.base_dir}",
            "--model",
            f"rl={tiny_organisms.model_dir('sft')}",
            "--out",
            str(out / "fi"),
            "--n-prompts",
            "100",
            "--selection-tasks",
            "sort,compare,lookup",
            "--held-out-tasks",
            "bool",
            "--min-samples",
            "3",
            "--n-controls",
            "2",
            "--n-bins",
            "2",
            "--sweep-coefs",
            "0,1",
            "--sweep-controls",
            "1",
            *small,
        ]
    )
    drift = ["--organisms-dir", str(root), "--out", str(out / "drift"), "--top-k", "4", "--layer-tokens", "400", *small]
    _example("reproduce_drift").main(drift)
    _example("reproduce_transfer_study").main(
        ["--organisms-dir", str(root), "--out", str(out / "tr"), "--domains", dom, "--n-prompts", "40"]
    )
    dirs = dict(
        analysis=out / "analysis", interventions=out / "fi", drift=out / "drift", transfer=out / "tr", organisms=root
    )
    rec = res.collect(**dirs, seed=0)
    report = json.loads((out / "analysis" / "report.json").read_text())
    fi = json.loads((out / "fi" / "results.json").read_text())
    # the page's numbers are the runs' numbers, and no path of this machine is kept
    assert rec["analysis"]["q1"] == report["q1_specific_latents"]
    assert [row["delta"] for row in rec["interventions"]["sweep"]] == [row["delta"] for row in fi["sweep"]]
    assert rec["analysis"]["models"]["trio"]["base"] == "<organisms>/base"
    assert rec["interventions"]["config"]["model"] == ["base=<organisms>/base", f"rl=<organisms>/sft-{dom}/ckpt-5"]
    assert str(tmp_path) not in json.dumps(rec) and str(root) not in json.dumps(rec)
    page = res.render([rec])
    held = fi["ablate_rl"]["held_out"]["tasks"]["bool"]
    row = next(ln for ln in page.splitlines() if ln.startswith("| ablate in RL | bool (held out) |"))
    assert f"| {100 * held['delta']:+.1f} [".replace("-", "−") in row
    with pytest.raises(ValueError, match="--seed 0, not 1"):
        res.collect(**dirs, seed=1)
    # the same analysis run as a Q1-by-variant record: its numbers are the run's, and the page shows them
    var = res.collect_variant(out / "analysis", root, seed=0)
    assert var["variant"] == "batchtopk" and var["analysis"]["q1"] == report["q1_specific_latents"]
    assert str(tmp_path) not in json.dumps(var) and str(root) not in json.dumps(var)
    section = res.variants_section({"batchtopk": [var]})
    alive = report["q1_specific_latents"]["pairwise"]["base-vs-rl"]["n_alive"]
    assert f"| batchtopk: base vs RL | {alive} |" in section
    assert "### Q2 and Q3 with" not in section and section.startswith("## Q1 by crosscoder variant")
    # ... and its Q2 and Q3 (this run has every stage) added to that record: the run's numbers, rendered
    var23 = res.collect_variant_q23(out / "analysis", root, 0, var)
    assert var23["analysis_q23"]["q2"] == res.compact_drift_summary(report["q2_drift"])
    assert var23["analysis"] == var["analysis"]
    # the compact drift summary drops only the shuffled-order null's per-order values
    sh = report["q2_drift"]["rl"]["null_shuffled"]
    assert "null_values" in sh and var23["analysis_q23"]["q2"]["rl"]["null_shuffled"] == {
        k: v for k, v in sh.items() if k != "null_values"
    }
    assert str(tmp_path) not in json.dumps(var23) and str(root) not in json.dumps(var23)
    section = res.variants_section({"batchtopk": [var23]})
    assert section.startswith("## Q1 to Q3 by crosscoder variant")
    assert "#### Q2 with `batchtopk`" in section and "#### Q3 with `batchtopk`" in section
    n_feat = report["q3_success_features"]["n_features"]
    assert f"| intersection over the {len(report['q3_success_features']['tasks'])} tasks | **{n_feat}**" in section
    with pytest.raises(ValueError, match="the record has"):
        res.collect_variant_q23(out / "analysis", root, 1, var)
    # a run of every stage filed by the CLI: its Q1, Q2 and Q3 at once; on the tables' build and hook it says so
    vdata = tmp_path / "variants"
    assert res.main(["collect-variant", "--analysis", str(out / "analysis"), "--organisms", str(root),
                     "--seed", "0", "--data", str(vdata)]) == 0
    assert json.loads((vdata / "batchtopk-seed-0.json").read_text()) == json.loads(json.dumps(var23))
    section = res.variants_section({"batchtopk": [var23]}, [rec])
    assert f"on the same build as the tables above and at their hook `{chosen}`" in section
    assert "`python -m featalign.analyze --variant V --seed S` (every stage; Q2 and Q3 below come from" in section
    assert "`python -m featalign.analyze --variant batchtopk --seed S` (the runs of Q1 above)" in section
    assert "**another build**" in res.variants_section({"batchtopk": [var23]})  # no tables to set it against
    # the interventions run and an `--variant l1` twin (the config such a run writes) as Q4-by-variant records on
    # one build: their numbers in a section of their own; runs with other settings or on another build are refused
    q4b = res.collect_q4_variant(out / "fi", root)
    l1_run = tmp_path / "fi-l1"
    l1_run.mkdir()
    l1_cfg = fi["config"] | {"variant": "l1", "sparsity_coef": 2.0, "out": str(l1_run)}
    (l1_run / "results.json").write_text(json.dumps(fi | {"config": l1_cfg}))
    q4v = res.collect_q4_variant(l1_run, root)
    assert (q4b["variant"], q4v["variant"]) == ("batchtopk", "l1") and q4v["interventions"]["ablate_rl"] == fi["ablate_rl"]
    assert str(tmp_path) not in json.dumps([q4b, q4v]) and str(root) not in json.dumps([q4b, q4v])
    page = res.render([rec], q4_variants={"batchtopk": [q4b], "l1": [q4v]})
    section = page.split("## Q4 by crosscoder variant: `batchtopk` and `l1`\n")[1].split("\n## ")[0]
    assert "all on\nthe same build as the tables above, with the Q4 table's settings: only the crosscoder's" in section
    sub = section.split("### Q4 with `l1` crosscoders (sparsity coefficient 2)\n")[1]
    assert "### Q4 with `batchtopk` crosscoders (k = 16)" in section and "A base/RL l1 crosscoder" in sub
    assert f"| {100 * held['delta']:+.1f} [".replace("-", "−") in sub
    (l1_run / "results.json").write_text(json.dumps(fi | {"config": l1_cfg | {"n_controls": 5}}))
    with pytest.raises(ValueError, match=r"differs from batchtopk seed 0 in \['n_controls'\]"):
        res.check_q4_variants([q4b, res.collect_q4_variant(l1_run, root)])
    data = tmp_path / "data"  # the CLI verb files the first, refuses the second before writing it
    assert res.main(["collect-q4-variant", "--interventions", str(out / "fi"), "--organisms", str(root), "--data", str(data)]) == 0
    with pytest.raises(ValueError, match="n_controls"):
        res.main(["collect-q4-variant", "--interventions", str(l1_run), "--organisms", str(root), "--data", str(data)])
    assert res.load_q4_variants(data / "q4-variants") == {"batchtopk": [q4b]}
    rebuilt = json.loads(json.dumps(q4v))
    rebuilt["organisms"]["summary"]["accuracy"]["base"][dom] += 0.01
    with pytest.raises(ValueError, match="several organisms builds"):
        res.render([rec], q4_variants={"batchtopk": [q4b], "l1": [rebuilt]})
    assert "**another build** of the recipe" in res.q4_variants_section({"l1": [rebuilt]}, [rec])
    # the analysis and the drift example measured the hook (--hook auto; the drift example by default, on its own
    # models and text: the same trio and tokens, so the same block) and the interventions ran at the block chosen:
    # the record keeps the measurement and the page shows it; runs that read different blocks are refused
    drift_hook = json.loads((out / "drift" / "results.json").read_text())
    assert drift_hook["config"]["hook"] == "auto" and drift_hook["hook"] == chosen
    assert drift_hook["hook_choice"] == report["hook_choice"]
    assert rec["analysis"]["hook_choice"] == report["hook_choice"] and rec["interventions"]["hook"] == chosen
    page = res.render([rec])
    assert f"hook `{chosen}`, the block `--hook auto` (the default) picks" in page
    measured = page.split("**Where the analysis reads.**")[1].split("\n## ")[0]
    assert f"| {chosen} |" in measured and "**yes**" in measured.split(f"| {chosen} |")[1].split("\n")[0]
    elsewhere = tmp_path / "fi-other-hook"
    elsewhere.mkdir()
    (elsewhere / "results.json").write_text(json.dumps(fi | {"hook": "blocks.0.hook_mlp_out"}))
    with pytest.raises(ValueError, match="read different hooks"):
        res.collect(**(dirs | {"interventions": elsewhere}), seed=0)
    # the same runs at a fixed hook (as runs before auto was the default recorded them: hook null), shown in a
    # section of their own, each answer set against the measured block's
    fixed = json.loads(json.dumps(rec))
    del fixed["analysis"]["hook_choice"]
    for part in ("analysis", "interventions", "drift"):
        fixed[part]["config"]["hook"] = None
        fixed[part]["hook"] = "blocks.0.hook_resid_post"
    section = res.fixed_hook_section([fixed], [rec])
    assert section.startswith("## Q1 to Q4 at the fixed middle block `blocks.0.hook_resid_post`")
    assert "python -m featalign.analyze --hook blocks.0.hook_resid_post --seed $S" in section
    assert "python examples/reproduce_drift.py --hook blocks.0.hook_resid_post --seed $S" in section
    assert "the same build as the sections above" in section and "### Q4 at `blocks.0.hook_resid_post`" in section
    assert "Q1 the same answer; Q2 the same answer; Q3 the same answer; Q4 the same answer." in section
    assert f"| {100 * held['delta']:+.1f} [".replace("-", "−") in section.split("### Q4 at `blocks.0")[1]
    hurts = json.loads(json.dumps(rec))  # the measured block's record with every selection-task ablation beyond both
    for t in hurts["interventions"]["ablate_rl"]["selection"]["tasks"].values():
        t.update(_row(delta=-0.2, ci=(-0.3, -0.1), control_p=0.01))
    assert "Q4 another answer (here: “Answer: no causal role" in res.fixed_hook_section([fixed], [hurts])
    assert "**Where the analysis reads.**" not in res.render([fixed])  # no measurement to show
    # the same interventions run with size-matched controls (the config such a run writes): its own section, set
    # against the Q4 table's run of its seed; a run with another setting changed, or frequency-only, is refused
    sized_run = tmp_path / "fi-sized"
    sized_run.mkdir()
    (sized_run / "results.json").write_text(json.dumps(fi | {"config": fi["config"] | {"size_bins": 3}}))
    sized = res.collect_q4_variant(sized_run, root)
    section = res.q4_size_matched_section([sized], [rec])
    assert section.startswith(  # the runs' own --hook (this test's ran at the chosen block) is named
        f"## Q4 with controls matched on size too\n\n`examples/reproduce_feature_interventions.py --hook {chosen} --size-bins 3"
    )
    assert "The crosscoders and the chosen features are the Q4 table's in every seed" in section
    assert "matched on the RL model's firing frequency and on the size of what each writes (3 size bins" in section
    assert "Against the Q4 table above (the same seeds): the same answer." in section
    assert f"| {100 * held['delta']:+.1f} [".replace("-", "−") in section
    for change, match in (({"n_controls": 5}, r"in \['n_controls'\]"), ({"size_bins": 0}, "frequency only")):
        (sized_run / "results.json").write_text(json.dumps(fi | {"config": fi["config"] | {"size_bins": 3} | change}))
        with pytest.raises(ValueError, match=match):
            res.q4_size_matched_section([res.collect_q4_variant(sized_run, root)], [rec])
    # filed by the CLI beside the seed records of --data (the main ones, or the fixed hook's folder) and set
    # against that folder's run of its seed (refused while there is none), shown in that folder's section
    fixed_fi = fi | {"config": fi["config"] | {"size_bins": 3, "hook": None}, "hook": "blocks.0.hook_resid_post"}
    (sized_run / "results.json").write_text(json.dumps(fixed_fi))
    hook_data = tmp_path / "hook-data"
    collect_sized = ["collect-q4-size-matched", "--interventions", str(sized_run), "--organisms", str(root)]
    with pytest.raises(FileNotFoundError, match="no seed-"):
        res.main(collect_sized + ["--data", str(hook_data)])
    (hook_data / "middle-block").mkdir(parents=True)
    (hook_data / "middle-block" / "seed-0.json").write_text(json.dumps(fixed))
    assert res.main(collect_sized + ["--data", str(hook_data / "middle-block")]) == 0
    sized_fixed = json.loads((hook_data / "middle-block" / "q4-size-matched" / "seed-0.json").read_text())
    assert sized_fixed == res.collect_q4_variant(sized_run, root) and not (hook_data / "q4-size-matched").exists()
    section = res.fixed_hook_section(
        [fixed], [rec], res.load_q4_size_matched(hook_data / "middle-block" / "q4-size-matched")
    )
    sub = section.split("### Q4 at `blocks.0.hook_resid_post` with controls matched on size too\n\n")[1]
    assert sub.startswith("`examples/reproduce_feature_interventions.py --hook blocks.0.hook_resid_post --size-bins 3 --seed S`")
    assert "Against the Q4 at `blocks.0.hook_resid_post` above (the same seeds): the same answer." in sub
    assert "with controls matched on size too" not in res.fixed_hook_section([fixed], [rec])
    # ... and as an organism-seed record: keyed by the build's seed, its numbers the run's, its section rendered
    org_rec = res.collect_organism_seed(out / "analysis", root)
    assert org_rec["seed"] == tiny_organisms.config.seed and org_rec["crosscoder_seed"] == 0
    assert org_rec["analysis"]["q1"] == report["q1_specific_latents"]
    assert str(tmp_path) not in json.dumps(org_rec) and str(root) not in json.dumps(org_rec)
    other = json.loads(json.dumps(org_rec)) | {"seed": 7}
    section = res.structured_section([org_rec, other])
    assert section.startswith("## The `tiny` preset over organism seeds: Q1 to Q3")
    assert "These runs read a given block" not in section  # measured (--hook auto)
    given = json.loads(json.dumps(org_rec))
    given["analysis"]["config"]["hook"] = None  # a run from before auto was the default
    given["analysis"]["hook"] = "blocks.0.hook_resid_post"  # the 2-block tiny models' middle block
    given_text = res.structured_section([given])
    assert "These runs read a given block (the middle one), not one measured by `--hook auto`" in given_text
    assert "`python -m featalign.analyze --hook blocks.0.hook_resid_post`, every stage" in given_text
    assert "### Q4 on the `tiny` builds" not in section  # no interventions run collected
    # with the interventions run on the build: its numbers, and a Q4 subsection; a run read elsewhere is refused
    with_fi = res.collect_organism_seed(out / "analysis", root, out / "fi")
    assert with_fi["interventions"]["features"] == fi["features"] and str(root) not in json.dumps(with_fi)
    q4 = res.structured_section([with_fi])
    assert "### Q4 on the `tiny` builds\n" in q4 and "RL-success scores\nat the last prompt token" in q4
    assert q4.startswith("## The `tiny` preset over organism seeds: Q1 to Q4")
    moved = tmp_path / "fi-elsewhere"
    moved.mkdir()
    (moved / "results.json").write_text(json.dumps(fi | {"config": fi["config"] | {"positions": "answer_end"}}))
    with pytest.raises(ValueError, match="pass runs that match"):
        res.collect_organism_seed(out / "analysis", root, moved)
    assert "### Q2 on the `tiny` builds" in section and "The rows are `python -m featalign.analyze`'s." in section
    assert f"| base vs RL | {alive} / {alive} (mean {alive}" in section  # one value per organism seed
    assert "the same in all 2 seeds (seed 0: " in section and "seed 7: " in section
    # a Q3 record read at the answer's end is filed apart and rendered as its own subsection after the main ones
    ae = json.loads(json.dumps(org_rec))
    ae["analysis"]["config"]["positions"] = "answer_end"
    assert res.organism_seed_path(tmp_path, ae) == tmp_path / "positions-answer_end" / f"seed-{ae['seed']}.json"
    assert res.organism_seed_path(tmp_path, org_rec) == tmp_path / f"seed-{org_rec['seed']}.json"
    section = res.structured_section([org_rec], {"answer_end": [ae]})
    head = "### Q3 on the `tiny` builds, read at another position (`--positions answer_end`)"
    assert section.index("### Q3 on the `tiny` builds\n") < section.index(head)
    assert section.split(head)[1].count("Score at the reference answer's last token") == 1
    path = res.organism_seed_path(tmp_path, ae)
    path.parent.mkdir()
    path.write_text(json.dumps(ae))
    assert res.load_structured_positions(tmp_path) == {"answer_end": [ae]}
    other["organisms"]["config"]["preset"] = "default"
    for i, r in enumerate((org_rec, other)):
        (tmp_path / f"seed-{i}.json").write_text(json.dumps(r))
    with pytest.raises(ValueError, match="several presets"):
        res.load_structured(tmp_path)


def test_known_answers_page_agrees_with_its_json():
    mod_spec = importlib.util.spec_from_file_location("featalign_docs_render", ROOT / "docs" / "render_tables.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    page = (ROOT / "docs" / "known_answers.md").read_text()
    assert "<!-- table:known-answers -->" in page and "<!-- table:known-answers-success -->" in page
    assert render.render(page) == page, (
        "docs/known_answers.md disagrees with docs/data: run python docs/render_tables.py"
    )
    data = json.loads((ROOT / "docs" / "data" / "known_answers.json").read_text())
    power = data["summary"]["drift"]["power"]
    row = f"{power['k']}/{power['n']} [{power['low']:.2f}, {power['high']:.2f}]"
    assert row in page
    edited = page.replace(row, f"{power['n'] + 1}/{power['n']} [0.00, 1.00]", 1)  # a hand-edited number is caught
    assert edited != page and render.render(edited) != edited


def test_contributing_names_only_files_that_exist():
    """docs/contributing.md says which files a new variant, stage or architecture touches: keep it true."""
    import re

    text = (ROOT / "docs" / "contributing.md").read_text()
    paths = {p for p in re.findall(r"`([\w./-]+/[\w./-]*)`", text) if "<" not in p and not p.startswith("-")}
    assert len(paths) >= 15  # the page names its files; an edit that drops the list should fail here
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert missing == []


def test_results_transfer_prediction_wording_follows_its_scores():
    """The transfer-prediction section says 'predicts' only when the interval is above 0 and p < 0.05, and
    compares the best feature measure with the best baseline by the interval, not the point estimate."""
    res = _results()

    def sc(rho, lo, hi, p):
        return {"spearman": rho, "ci": [lo, hi], "p_permutation": p, "n_pairs": 12}

    pred = {
        "config": {"n_prompts": 50, "variant": "batchtopk", "n_latents": 64, "n_permutations": 100, "n_boot": 50},
        "organisms_config": {"preset": "structured", "eval_samples": 100, "seed": 3},
        "hook": "blocks.1.hook_resid_post",
        "tasks": ["a", "b", "c"],
        "train": {"rl_delta": ["a", "b"], "sft_delta": ["a", "b"]},
        "scores": {
            "rl_delta": {
                "feature_mass": sc(0.7, 0.3, 0.9, 0.01),
                "ngram": sc(0.1, -0.4, 0.5, 0.4),
                "residual_cosine": sc(0.2, -0.3, 0.6, 0.2),
            },
            "sft_delta": {
                "feature_mass": sc(0.4, -0.1, 0.8, 0.03),
                "ngram": sc(0.5, 0.1, 0.8, 0.02),
                "residual_cosine": sc(0.0, -0.5, 0.5, 0.5),
            },
        },
        "best": {"rl_delta": {"features": "feature_mass"}, "sft_delta": {"features": "feature_mass"}},
        "seconds": 600,
    }
    text = res.prediction_section(pred)
    rl, sft = (line for line in text.splitlines() if line.startswith("**"))
    assert "`feature_mass`: predicts it (Spearman +0.70 [+0.30, +0.90], p 0.01)" in rl
    assert "best baseline `residual_cosine`: no evidence" in rl and "lies above the best baseline" in rl
    assert "`feature_mass`: weakly" in sft and "best baseline `ngram`: predicts it" in sft
    assert "do not separate it from the best baseline" in sft
    assert "| ngram (baseline) | +0.10 [−0.40, +0.50], p 0.4 | +0.50 [+0.10, +0.80], p 0.02 |" in text
    assert "The `structured` organisms (organism seed 3; 3 domains" in text
    assert res.prediction_section(None) == ""


def test_first_run_time_is_rendered_from_the_benchmark_json(tmp_path):
    """The README's first-run sentence agrees with docs/bench (or says how to measure); its numbers are the JSON's."""
    mod_spec = importlib.util.spec_from_file_location("featalign_docs_render", ROOT / "docs" / "render_tables.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    readme = (ROOT / "README.md").read_text()
    assert "<!-- table:first-run -->" in readme and render.render(readme) == readme
    assert "Not yet measured" in render.first_run([])
    f = tmp_path / "first_run_avx2.json"
    phases = {
        "organisms": 300.0,
        "organisms_pretraining": 200.0,
        "organisms_post_training_and_eval": 95.0,
        "activations_caching": 80.0,
        "crosscoder_training": 150.0,
        "crosscoder_evaluation": 10.0,
    }
    f.write_text(
        json.dumps(
            {
                "date": "2026-12-03",
                "cpu_capability": "AVX2",
                "cores": 2,
                "load_average_before": [0.1, 0.2, 0.3],
                "cores_busy": 1.8,
                "wall_s": 540.0,
                "phases_s": phases,
            }
        )
    )
    g = tmp_path / "first_run_avx512.json"
    g.write_text(json.dumps({**json.loads(f.read_text()), "cpu_capability": "AVX512", "wall_s": 300.0}))
    h = tmp_path / "first_run_avx512_b.json"  # a run that recorded the CPU model names it
    h.write_text(json.dumps({**json.loads(g.read_text()), "cpu_model": "AMD EPYC, no AMX", "wall_s": 612.0}))
    text = render.first_run([f, g, h])
    first, second, third = text.splitlines()
    assert first.startswith("- AVX2 CPU") and "**9.0 minutes**" in first and "pretraining 200 s" in first
    assert "caching the activations 80 s" in first and "first_run_avx2.json" in first
    assert second.startswith("- AVX512 CPU, measured") and "**5.0 minutes**" in second
    assert third.startswith("- AVX512 CPU (AMD EPYC, no AMX), measured") and "**10.2 minutes**" in third


def test_structured_seeds_table_counts_the_targets_per_build(tmp_path):
    """One row per structured build; each target is judged on that build's own intervals and counted per planted
    rate (builds with another plant are another recipe, never counted together)."""
    mod_spec = importlib.util.spec_from_file_location("featalign_docs_render", ROOT / "docs" / "render_tables.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)

    def c(odds, lo, hi):
        return {"odds_ratio": odds, "ci_low": lo, "ci_high": hi}

    def build(seed, same, other, sft_other, rate=0.5, sft_out=None):
        rl = {"same_family": same, "other_families": other, "out_of_domain": c(1.1, 1.0, 1.2)}
        sft = {"other_families": sft_other, "out_of_domain": sft_out or sft_other}
        return {
            "config": {"seed": seed, "post_train_domains": ["a"], "pretrain_domains": ["a", "b", "c"]},
            "domains": {"a": {"family": "f", "sloppy_stop": rate}, "b": {"family": "f", "sloppy_stop": rate},
                        "c": {"family": "g", "sloppy_stop": 0.0}},
            "sloppy_stop_share": {"base": {"a": 0.5, "b": 0.25, "c": 0.0}},
            "cpu_capability": "AVX2",
            "transfer": {"rl": {"cmh": rl}, "sft": {"cmh": sft}},
        }

    builds = [
        build(0, c(1.8, 1.5, 2.1), c(0.9, 0.8, 1.05), c(0.3, 0.2, 0.4)),  # every target met
        build(1, c(1.2, 0.95, 1.5), c(1.3, 1.1, 1.5), c(0.9, 0.8, 1.02)),  # none met
        # another plant, all met, the base at 0% on the family: a zero-shifted interval, marked and explained; SFT
        # forgets on the other families although its pooled out-of-domain interval (with its same-family fix) is not
        # below 1
        build(1, c(3.0, 2.5, 3.5) | {"zero_shifted": True}, c(0.9, 0.8, 1.05), c(0.3, 0.2, 0.4), rate=0.65,
              sft_out=c(1.07, 0.98, 1.18)),
    ]
    paths = []
    for i, b in enumerate(builds):
        paths.append(tmp_path / f"organisms_structured_seed-{b['config']['seed']}-{i}.json")
        paths[-1].write_text(json.dumps(b))
    text = render.organisms_structured_seeds(paths)
    rows = [ln for ln in text.splitlines() if ln.startswith("| 50% ") or ln.startswith("| 65% ")]
    assert rows[0].endswith("| yes / yes / yes |") and "1.80 [1.50, 2.10]" in rows[0]
    assert rows[0].startswith("| 50% | 0 | AVX2 | b 25.0 | ")  # the trained domain's family, without it
    assert rows[1].startswith("| 50% | 1 |") and rows[1].endswith("| **no** / **no** / **no** |")
    assert rows[2].startswith("| 65% | 1 |") and rows[2].endswith("| yes / yes / yes |")
    assert "| 3.00 [2.50, 3.50] † |" in rows[2] and " †" not in rows[0] + rows[1]
    assert "| 0.30 [0.20, 0.40] | 1.07 [0.98, 1.18] | yes / yes / yes |" in rows[2]
    assert render.ZERO_SHIFT_NOTE in text
    assert "Planted at 50%, 2 builds: RL's same-family interval is above 1 in 1 of 2 (odds ratio 1.20 to 1.80)" in text
    assert "not above 1 in 1 of 2" in text and "SFT's other-families interval is below 1 in 1 of 2" in text
    assert "Planted at 65%, 1 build: RL's same-family interval is above 1 in 1 of 1 (odds ratio 3.00 to 3.00)" in text


def test_hook_choice_table_marks_the_chosen_block_and_the_non_candidates(tmp_path):
    mod_spec = importlib.util.spec_from_file_location("featalign_docs_render", ROOT / "docs" / "render_tables.py")
    render = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(render)
    from featalign.analysis.layers import choose_layer

    hooks = [f"blocks.{i}.hook_resid_post" for i in range(3)]
    mean, iv = [0.1, 0.3, 0.5], [[0.09, 0.11], [0.28, 0.32], [0.45, 0.55]]
    table = {
        "hooks": hooks,
        "n_tokens": 1234,
        "per_model": {"rl": {"mean": mean, "mean_95": iv}},
        "mean_over_tuned": mean,
        "mean_over_tuned_95": iv,
    }
    f = tmp_path / "hook.json"
    choice = choose_layer(mean, 3, iv)  # the last block is not a candidate: block 1 wins
    f.write_text(json.dumps({"hook_choice": {"table": table, "choice": choice}, "default_hook": hooks[1], "stamp": {}}))
    rows = render.hook_choice(f).splitlines()
    assert rows[3] == "| blocks.1.hook_resid_post | 0.300 [0.280, 0.320] | 0.300 [0.280, 0.320] | **yes** |"
    assert rows[4].endswith("| not a candidate |") and rows[2].endswith("|  |")
    assert "1,234 tokens; the chosen block's interval is above every other" in rows[-1]
