"""docs/results.md, written from the runs' JSON (`docs/data/results/seed-<S>.json`), never by hand.

    python docs/results.py collect --analysis DIR --interventions DIR --drift DIR --transfer DIR \\
        --organisms DIR --seed S          # the compact parts of four runs' outputs -> docs/data/results/seed-S.json
    python docs/results.py collect-organism-seed --analysis DIR --organisms DIR [--interventions DIR]
                                          # one analyze run on one build of a preset (the structured one over
                                          # organism seeds) -> docs/data/results/structured/seed-<organism seed>.json
                                          # (a --positions P run: structured/positions-P/, Q3 only)
    python docs/results.py collect-q4-variant --interventions DIR --organisms DIR
                                          # a reproduce_feature_interventions.py --variant V --seed S run (all
                                          # on one build) -> docs/data/results/q4-variants/<V>-seed-S.json
    python docs/results.py collect-q4-size-matched --interventions DIR --organisms DIR [--data DIR]
                                          # a reproduce_feature_interventions.py --size-bins N --seed S run (the
                                          # seed's Q4 run otherwise) -> <data>/q4-size-matched/seed-S.json
    python docs/results.py collect --data docs/data/results/middle-block ... (the runs with --hook <the middle
                                          # block>): the section at the fixed middle block, with its own
                                          # collect-q4-size-matched --data docs/data/results/middle-block
    python docs/results.py render         # docs/results.md from every docs/data/results/seed-*.json
    python docs/results.py render --check # exit 1 if docs/results.md disagrees with the JSON

`python docs/render_tables.py [--check]` rewrites (checks) this page together with the table blocks of
the other pages. Every sentence that states a finding is chosen by a rule on the JSON's intervals and
p-values (`interval_rule`, `two_test_rule`, `null_rule`, `odds_ratio_rule` below); the page's other prose
states no number. With several seed files each number is shown per seed, then the mean and the min-max
range over seeds.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NamedTuple

DOCS = Path(__file__).resolve().parent
if str(DOCS) not in sys.path:  # render_tables.py sits next to this file
    sys.path.insert(0, str(DOCS))

from render_tables import hook_choice_table, organisms_table  # noqa: E402

DATA = DOCS / "data" / "results"
PAGE = DOCS / "results.md"
FORMAT_VERSION = 1
STAMP_KEYS = (
    "featalign_version",
    "torch_version",
    "transformers_version",
    "transformer_lens_version",
    "cpu_capability",
)

#: The published numbers the page sets ours against, with their source (DESIGN.md names both studies).
PUBLISHED = {
    "transfer": {
        "source": "cross-domain transfer study (arXiv 2506.19733), observational, RL-tuned open models",
        "in_or": 3.10,
        "in_delta": 2.9,
        "out_or": 1.32,
        "out_delta": -3.2,
    },
    "features": {
        "source": "feature-level study (arXiv 2604.25011), Qwen-scale models, L1 crosscoders",
        "intersection": "50 features for Qwen3-4B, 16 for Qwen2.5-7B",
        "overlap": "more than 80%",
        "ablation": "−14 to −46",
        "steering": "+12 to +56",
    },
}


# --- collect: the compact parts of the runs' outputs ------------------------------------------------------


def strip_paths(obj: Any, roots: Sequence[tuple[str, Path]]) -> Any:
    """`obj` with every absolute path written relative to the first of `roots` (name, folder) that holds it
    (`<name>/rest`), or `<path>` when none does: no path of the machine that ran it stays."""
    if isinstance(obj, dict):
        return {k: strip_paths(v, roots) for k, v in obj.items()}
    if isinstance(obj, list):
        return [strip_paths(v, roots) for v in obj]
    if isinstance(obj, str) and "=" in obj and obj.split("=", 1)[1].startswith(("/", "~")):  # NAME=PATH
        name, path = obj.split("=", 1)
        return f"{name}={strip_paths(path, roots)}"
    if isinstance(obj, str) and obj.startswith(("/", "~")):
        p = Path(obj).expanduser().resolve()
        for name, root in roots:
            if p == root or root in p.parents:
                return "/".join([f"<{name}>", *p.relative_to(root).parts])
        return "<path>"
    return obj


def stamp(d: dict) -> dict:
    """The versions and CPU kernel set a run wrote into its JSON (`featalign.io.provenance`)."""
    return {k: d[k] for k in STAMP_KEYS if k in d}


def pick(d: dict, keys: Sequence[str]) -> dict:
    return {k: d[k] for k in keys if k in d}


def compact_drift_summary(q2: dict) -> dict:
    """A drift summary without the shuffled-order null's value per order (the page shows its mean, interval and p;
    the per-order values are most of the record's size)."""
    drop = lambda v: {**v, "null_shuffled": {k: x for k, x in v["null_shuffled"].items() if k != "null_values"}}
    return {k: drop(v) if isinstance(v, dict) and "null_shuffled" in v else v for k, v in q2.items()}


def compact_analysis(r: dict) -> dict:
    """What the page uses of `python -m featalign.analyze`'s report.json."""
    q3 = r["q3_success_features"]
    if "error" in q3:  # the stage ran and said why it could not answer (e.g. too few success samples)
        q3_part: dict = {"error": q3["error"]}
    else:
        q3_part = {
            **pick(
                q3,
                (
                    "tasks",
                    "skipped",
                    "n_samples",
                    "per_task_sizes",
                    "n_features",
                    "n_majority",
                    "mean_pairwise_overlap",
                    "null",
                ),
            ),
            "bootstrap_size_95": q3["bootstrap"]["size_95"],
            "gradient": {t: pick(g, ("spearman", "top_k_jaccard")) for t, g in q3["gradient"].items()},
        }
    # a run of some stages (`--stages success`) has only their parts; the page's sections say what they need
    optional = {"attribution": "attribution", "q1": "q1_specific_latents", "q2": "q2_drift"}
    return {
        "config": r["config"],
        "stamp": stamp(r),
        "hook": r["hook"],
        **({"hook_choice": r["hook_choice"]} if "hook_choice" in r else {}),  # --hook auto: the measurement
        "models": r["models"],
        "timings_s": r["timings_s"],
        **{k: compact_drift_summary(r[key]) if k == "q2" else r[key] for k, key in optional.items() if key in r},
        "q3": q3_part,
    }


def compact_interventions(r: dict) -> dict:
    """What the page uses of examples/reproduce_feature_interventions.py's results.json (not the sweep's
    per-prompt steer_sweep.json: the sweep rows of results.json carry the shown numbers)."""
    sweep_keys = (
        "coef",
        "task",
        "held_out",
        "delta",
        "ci_low",
        "ci_high",
        "control_lo",
        "control_hi",
        "control_p",
        "mcnemar_p",
    )
    return {
        "config": r["config"],
        "stamp": stamp(r),
        "seconds": r["seconds"],
        **({"hook": r["hook"]} if "hook" in r else {}),  # the block it read (recorded since --hook auto)
        "features": r["features"],
        "rule": r["rule"],
        "success": pick(r["success"], ("tasks", "skipped", "n_samples", "per_task_sizes", "n_features", "n_majority")),
        "ablate_rl": r["ablate_rl"],
        "steer_base": r["steer_base"],
        "sweep": [pick(row, sweep_keys) for row in r["sweep"]],
    }


def compact_drift(r: dict) -> dict:
    return {
        "config": r["config"],
        "stamp": stamp(r),
        "seconds": r["seconds"],
        "hook": r["hook"],
        "drift": compact_drift_summary(r["drift"]),
    }


def compact_transfer(r: dict) -> dict:
    keep = ("cmh", "delta_points", "eval_domains", "family_means")
    o = r["organisms"]
    return {
        "config": r["config"],
        "stamp": stamp(r),
        "seconds": r["seconds"],
        "domains": o["domains"],
        "rl": pick(o["rl"], keep),
        "sft": pick(o["sft"], keep),
    }


def compact_organisms(root: Path) -> dict:
    s = json.loads((root / "eval" / "summary.json").read_text())
    paired = {
        m: {d: pick(t, ("base_fail_tuned_ok", "base_ok_tuned_fail", "p_value")) for d, t in tests.items()}
        for m, tests in s["paired_tests"].items()
    }
    timings = root / "timings.json"
    return {
        "config": json.loads((root / "config.json").read_text()),
        "provenance": json.loads((root / "provenance.json").read_text()),
        "summary": {"accuracy": s["accuracy"], "config": s["config"], "transfer": s["transfer"], **stamp(s)},
        "paired_tests": paired,
        "timings_s": json.loads(timings.read_text()) if timings.exists() else {},
    }


def collect(analysis: Path, interventions: Path, drift: Path, transfer: Path, organisms: Path, seed: int) -> dict:
    """One seed's compact record of the four runs (no machine paths: see `strip_paths`)."""
    read = lambda d, name: json.loads((Path(d) / name).read_text())
    parts = {
        "analysis": (analysis, compact_analysis(read(analysis, "report.json"))),
        "interventions": (interventions, compact_interventions(read(interventions, "results.json"))),
        "drift": (drift, compact_drift(read(drift, "results.json"))),
        "transfer": (transfer, compact_transfer(read(transfer, "results.json"))),
    }
    hooks = {name: part["hook"] for name, (_, part) in parts.items() if "hook" in part}
    if len(set(hooks.values())) > 1:
        raise ValueError(f"the runs read different hooks ({hooks}): rerun them with one --hook (or all with auto)")
    org = Path(organisms).resolve()
    out: dict[str, Any] = {"format_version": FORMAT_VERSION, "seed": seed}
    for name, (folder, part) in parts.items():
        if name != "transfer" and part["config"].get("seed") != seed:
            raise ValueError(f"{name} ran with --seed {part['config'].get('seed')}, not {seed}")
        recorded = part["config"].get("out")  # where the run wrote, as it recorded it (the folder may have moved)
        outs = {Path(folder).resolve()} | ({Path(recorded).expanduser().resolve()} if recorded else set())
        out[name] = strip_paths(part, [("organisms", org)] + [("out", o) for o in sorted(outs)])
    out["organisms"] = strip_paths(compact_organisms(org), [("organisms", org)])
    refuse_machine_paths(out)
    return out


def refuse_machine_paths(rec: dict) -> None:
    """Raise if a record about to be written still holds a path of this machine (`strip_paths` missed it)."""
    left = [s for s in strings(rec) if s.startswith(("/", "~")) or "=/" in s or "=~" in s]
    if left:
        raise ValueError(f"paths of this machine left after strip_paths: {left[:5]}")


def strings(obj: Any) -> list[str]:
    """Every string value in a JSON-like object."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in strings(v)]
    return [obj] if isinstance(obj, str) else []


# --- formatting -----------------------------------------------------------------------------------------


def signed(x: float, nd: int = 1) -> str:
    return f"{x:+.{nd}f}".replace("-", "−")


def num(x: float, nd: int = 2) -> str:
    return f"{x:.{nd}f}".replace("-", "−")


def count(x: float) -> str:
    return f"{x:.0f}"


def pval(p: float) -> str:
    if p >= 0.995:
        return "1"
    return f"{p:.2g}" if p >= 1e-3 else f"{p:.1e}"


def pts(x: float) -> str:  # a fraction as signed points
    return signed(100 * x)


def ci(lo: float, hi: float, fmt: Callable[[float], str] = count) -> str:
    return f"[{fmt(lo)}, {fmt(hi)}]"


def cell(
    runs: list[dict],
    point: Callable[[dict], float],
    fmt: Callable[[float], str],
    detail: Callable[[dict], str] | None = None,
    spread: bool = True,
) -> str:
    """One table cell over seeds: each seed's value (with `detail`, e.g. its interval), then with several
    seeds the mean and min-max range of `point` over seeds (`spread=False`: the values only, for p-values,
    whose mean means nothing)."""
    shown = [(detail or (lambda r: fmt(point(r))))(r) for r in runs]
    if len(runs) == 1 or not spread:
        return " / ".join(shown)
    v = [point(r) for r in runs]
    return " / ".join(shown) + f" (mean {fmt(statistics.fmean(v))}, range {fmt(min(v))} to {fmt(max(v))})"


def table(header: Sequence[str], rows: list[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


# --- wording rules: every finding on the page is one of these, applied to the JSON ------------------------


class Verdict(NamedTuple):
    key: str  # what the rule decided ("above", "below", "inside", ...): the answer sentences branch on it
    text: str  # the sentence, with the numbers it was decided on


def interval_rule(
    lo: float,
    hi: float,
    above: str,
    below: str,
    fmt: Callable[[float], str] = count,
    inside: str = "no evidence of a difference",
) -> Verdict:
    """A difference's 95% interval decides: entirely above 0, entirely below 0, or including 0."""
    iv = ci(lo, hi, fmt)
    if lo > 0:
        return Verdict("above", f"{above}: the 95% interval {iv} is above 0")
    if hi < 0:
        return Verdict("below", f"{below}: the 95% interval {iv} is below 0")
    return Verdict("inside", f"{inside}: the 95% interval {iv} includes 0")


def two_test_rule(lo: float, hi: float, p_earlier: float, fmt: Callable[[float], str] = signed) -> Verdict:
    """SFT earlier than RL (a difference SFT - RL < 0) by a median-difference interval and a one-sided
    Mann-Whitney p: both agree (interval below 0 and p < 0.05), one of them only, or neither."""
    iv, p = ci(lo, hi, fmt), pval(p_earlier)
    if hi < 0 and p_earlier < 0.05:
        return Verdict("earlier", f"SFT earlier: the 95% interval {iv} is below 0 and p = {p}")
    if hi < 0 or p_earlier < 0.05:
        return Verdict(
            "mixed",
            f"weak evidence for SFT earlier: p = {p} but the 95% interval {iv} includes 0"
            if p_earlier < 0.05
            else f"weak evidence for SFT earlier: the 95% interval {iv} is below 0 but p = {p}",
        )
    if lo > 0:
        return Verdict("later", f"SFT later, not earlier: the 95% interval {iv} is above 0 (p for earlier = {p})")
    return Verdict("none", f"no evidence that SFT is earlier: the 95% interval {iv} includes 0 and p = {p}")


def null_rule(real: float, lo: float, hi: float, fmt: Callable[[float], str] = count) -> Verdict:
    """A real statistic against its null's 95% interval: above it, inside it, or below it."""
    iv = ci(lo, hi, fmt)
    if real > hi:
        return Verdict("above", f"{fmt(real)}, above the null's 95% interval {iv}")
    if real < lo:
        return Verdict("below", f"{fmt(real)}, below the null's 95% interval {iv}")
    return Verdict("inside", f"{fmt(real)}, inside the null's 95% interval {iv}")


def odds_ratio_rule(c: dict) -> Verdict:
    """A CMH odds ratio's 95% interval against 1 (no change in the odds of a correct answer)."""
    iv = ci(c["ci_low"], c["ci_high"], num)
    if c["ci_low"] > 1:
        return Verdict("gain", f"gains (OR {num(c['odds_ratio'])} {iv}, above 1)")
    if c["ci_high"] < 1:
        return Verdict("loss", f"loses (OR {num(c['odds_ratio'])} {iv}, below 1)")
    return Verdict("none", f"no evidence of a change (OR {num(c['odds_ratio'])} {iv} includes 1)")


def over_seeds(runs: list[dict], rule: Callable[[dict], Verdict]) -> Verdict:
    """A rule applied to each seed: with one seed its verdict; with several, the shared verdict when every
    seed agrees, else `disagree` with each seed's sentence."""
    vs = [rule(r) for r in runs]
    if len(vs) == 1:
        return vs[0]
    each = "; ".join(f"seed {r['seed']}: {v.text}" for r, v in zip(runs, vs))
    if len({v.key for v in vs}) == 1:
        return Verdict(vs[0].key, f"the same in all {len(vs)} seeds ({each})")
    return Verdict("disagree", f"the seeds disagree ({each})")


# --- the page's sections --------------------------------------------------------------------------------


def load_runs(folder: Path = DATA) -> list[dict]:
    """Every seed file of `folder`, by seed; they must come from one organisms build."""
    runs = sorted((json.loads(p.read_text()) for p in folder.glob("seed-*.json")), key=lambda r: r["seed"])
    if not runs:
        raise FileNotFoundError(f"no seed-*.json in {folder}: run python docs/results.py collect first")
    for r in runs:
        if r["format_version"] != FORMAT_VERSION:
            raise ValueError(f"seed {r['seed']}: format_version {r['format_version']}, expected {FORMAT_VERSION}")
        if r["organisms"] != runs[0]["organisms"]:
            raise ValueError(
                f"seed {r['seed']} ran on another organisms build than seed {runs[0]['seed']}: a page shows one build"
            )
    return runs


RUNS = ("analysis", "interventions", "drift", "transfer")


def code_stamps(runs: list[dict]) -> str:
    """The runs' version stamps: once when every run of every seed has the same, else each run's."""
    each = {
        (r["seed"], part): ", ".join(f"{k} {v}" for k, v in sorted(r[part]["stamp"].items()))
        for r in runs
        for part in RUNS
    }
    if len(set(each.values())) == 1:
        return next(iter(each.values())) + " (every run)"
    return "; ".join(f"seed {s} {part}: {v}" for (s, part), v in each.items())


def header(runs: list[dict]) -> str:
    seeds = [r["seed"] for r in runs]
    o = runs[0]["organisms"]
    oc, a, st = o["config"], runs[0]["analysis"]["config"], o["summary"]
    if len(runs) == 1:
        seeds_note = (
            f"**One crosscoder seed ({seeds[0]}).** Every interval on this page is within that one run "
            "(bootstrap or exact, as each table says), not over crosscoder seeds: which latents the "
            "selections pick depends on the seed and on float-level noise, so read the feature-level "
            "details as one run's."
        )
    else:
        seeds_note = (
            f"**{len(runs)} crosscoder seeds ({', '.join(map(str, seeds))}).** Each number is shown per "
            "seed (in that order, separated by /), then the mean and the range (min to max) over the "
            "seeds; the within-run intervals are each seed's own."
        )
    build = ", ".join(f"{k} {v}" for k, v in sorted(o["provenance"].items()))
    post = ", ".join(oc["post_train_domains"])
    return f"""# Results: the feature-level questions on the organisms

> **Written by `docs/results.py` from `docs/data/results/seed-*.json`: do not edit by hand.** The footer
> says how to regenerate both from fresh runs.
>
> **One organisms build per section.** Q1 to Q4 and the transfer study come from one build of the
> `{oc["preset"]}` organisms (build stamp: {build}) and from runs of one version of the code on it (stamps
> below); a later section on another build says so in its first lines. Another build of the same recipe gives
> other organisms (`docs/organisms.md`, "Two builds, one recipe").
>
> {seeds_note}

**What these numbers are from.** `python -m featalign.analyze` and the three scripts in `examples/` with
their defaults on the **{oc["preset"]} organisms** (d_model {oc["d_model"]}, {oc["n_layers"]} layers; pretrain
{oc["pretrain_steps"]} steps on all {len(oc["pretrain_domains"])} domains; SFT (lr {oc["sft_lr"]:g}) and GRPO
(lr {oc["rl_lr"]:g}, {oc["rl_group_size"]} rollouts, {oc["rl_prompts_per_step"]} prompts/step) on the same
{oc["post_train_prompts"]} `{post}` prompts, {oc["sft_epochs"]} epoch each, {oc["n_checkpoints"]} checkpoints
each; {oc["eval_samples"]} eval samples per domain). Code: {code_stamps(runs)}; the organisms' eval:
{", ".join(f"{k} {v}" for k, v in sorted(stamp(st).items()))}.

Settings (the CLI's defaults): hook {hook_settings(runs)}; {a["n_tokens"]:,} training tokens per model,
{a["eval_tokens"]:,} held-out tokens; every crosscoder **{a["variant"]}**, {a["n_latents"]} latents, k = {a["k"]},
{a["steps"]} steps, batch {a["batch_size"]}, lr {a["lr"]:g}. Intervals: 95% percentile bootstrap (over latents
for counts, over features for medians, over success samples for set sizes); counts of 0 get the exact
Clopper–Pearson interval. **Wording:** every sentence that states a finding is chosen by a rule in
`docs/results.py` from these intervals and p-values: a difference whose interval includes 0 is "no evidence
of a difference", never a direction.""" + hook_measurement(runs)


def hook_settings(runs: list[dict]) -> str:
    """The settings line's hook: the block every run read, and how it was chosen."""
    hook = runs[0]["analysis"]["hook"]
    if not all("hook_choice" in r["analysis"] for r in runs):
        return f"`{hook}`"
    return f"`{hook}`, the block `--hook auto` (the default) picks from the measured change (below)"


def hook_measurement(runs: list[dict]) -> str:
    """The per-block change `--hook auto` measured (seed 0's, or the first seed's) and whether every seed's
    measurement picked the same block; empty for runs at a given hook."""
    if not all("hook_choice" in r["analysis"] for r in runs):
        return ""
    from featalign.models.hooks import default_hook

    r0 = runs[0]
    chosen = {r["analysis"]["hook_choice"]["choice"]["hook"] for r in runs}
    same = all(r["analysis"]["hook_choice"] == r0["analysis"]["hook_choice"] for r in runs)
    measured = hook_choice_table(
        {
            "hook_choice": r0["analysis"]["hook_choice"],
            "default_hook": default_hook(r0["organisms"]["config"]["n_layers"]),
            "stamp": r0["analysis"]["stamp"],
        }
    )
    seeds = (
        "every seed measured the same values (the same tokens of the same models)"
        if same
        else f"seed {r0['seed']}'s; each seed measures on its own sample of text, "
        + ("and every seed picked this block" if len(chosen) == 1 else f"and the seeds picked {sorted(chosen)}")
    )
    return f"""

**Where the analysis reads.** The hook is chosen by measurement (docs/analysis.md, "Choosing the hook layer"): per
block, the tuned models' mean relative change of the residual stream from the base's, ||x_tuned − x_base|| /
||x_base||, on the first training tokens; the block with the largest change among blocks 0..n−2. The examples
measure the same way on the same text, so every run of a seed reads one block (`collect` refuses runs that do not).
The measurement ({seeds}):

{measured}"""


def organisms_section(runs: list[dict]) -> str:
    o = runs[0]["organisms"]
    s, tr, pub = o["summary"], o["summary"]["transfer"], PUBLISHED["transfer"]
    rows = []
    for model in ("sft", "rl"):
        for scope in ("in_domain", "out_of_domain"):
            c = tr[model]["cmh"][scope]
            published = "–"
            if model == "rl":
                published = (
                    f"OR {pub['in_or']:.2f}, {signed(pub['in_delta'])} pts"
                    if scope == "in_domain"
                    else f"OR {pub['out_or']:.2f}, {signed(pub['out_delta'])} pts"
                )
            rows.append(
                [
                    model.upper(),
                    scope.replace("_", "-"),
                    str(c["n_strata"]),
                    f"{num(c['odds_ratio'])} {ci(c['ci_low'], c['ci_high'], num)}",
                    pval(c["p_value"]),
                    signed(c["mean_delta_points"]),
                    published,
                ]
            )
    v = {
        (m, sc): odds_ratio_rule(tr[m]["cmh"][sc]).text for m in ("rl", "sft") for sc in ("in_domain", "out_of_domain")
    }
    acc = s["accuracy"]
    sft = next(m for m in acc if m.startswith("sft"))
    drops = sorted((acc[sft][d] - acc["base"][d], d) for d in acc["base"])[:3]
    return f"""## The organisms (from `eval/summary.json`)

Greedy accuracy (%) per domain, {o["config"]["eval_samples"]} eval samples each; post-training domain
`{", ".join(o["config"]["post_train_domains"])}`.

{organisms_table(s)}

CMH common odds ratio (tuned vs base correct; published: {pub["source"]}):

{table(["model", "scope", "strata", "OR [95% CI]", "p", "mean delta (pts)", "published (RL)"], rows)}

By the odds ratios' intervals: RL in-domain {v["rl", "in_domain"]}; RL out-of-domain {v["rl", "out_of_domain"]};
SFT in-domain {v["sft", "in_domain"]}; SFT out-of-domain {v["sft", "out_of_domain"]}. SFT's three largest
drops: {", ".join(f"`{d}` {signed(100 * x)}" for x, d in drops)} points."""


PAIRS = (
    ("base-vs-rl", "base vs RL"),
    ("base-vs-sft", "base vs SFT"),
    ("control-same", "null: base vs base, same tokens"),
    ("control-disjoint", "null: base vs base, disjoint halves"),
)
CLASSES = ("tuned_only", "base_only", "shared", "tuned_lean", "base_lean")


def pair_row(runs: list[dict], pw: Callable[[dict], dict], label: str, iv: Callable) -> list[str]:
    """One pairwise crosscoder's row of the Q1 table (`pw`: a seed record -> its pairwise entry)."""
    return (
        [label, cell(runs, lambda r: pw(r)["n_alive"], count)]
        + [cell(runs, lambda r, c=c: pw(r)[c]["count"], count, iv(lambda r, c=c: pw(r)[c])) for c in CLASSES]
        + [cell(runs, lambda r: pw(r)["nrn_sd"], lambda x: num(x, 3))]
    )


def q1_section(runs: list[dict], with_variants: bool = False) -> str:
    q = lambda r: r["analysis"]["q1"]
    l1_note = (
        "The L1 loss (`--variant l1`, the published one) is compared with BatchTopK in "
        '"Q1 by crosscoder variant" below.'
        if with_variants
        else "The L1 comparison (`--variant l1`, the published loss) is not part of these runs."
    )
    iv = lambda get: lambda r: f"{count(get(r)['count'])} {ci(get(r)['low'], get(r)['high'])}"
    rows = [pair_row(runs, lambda r, key=key: q(r)["pairwise"][key], label, iv) for key, label in PAIRS]
    diff = lambda name, above, below: over_seeds(
        runs, lambda r: interval_rule(q(r)[name]["low"], q(r)[name]["high"], above, below, lambda x: signed(x, 0))
    )
    only = diff("pairwise_sft_minus_rl_tuned_only", "more SFT-specific latents", "more RL-specific latents")
    lean = diff(
        "pairwise_sft_minus_rl_tuned_lean", "SFT has more tuned-leaning latents", "RL has more tuned-leaning latents"
    )
    none_specific = all(
        q(r)["pairwise"][p]["tuned_only"]["count"] == 0 for r in runs for p in ("base-vs-rl", "base-vs-sft")
    )
    if none_specific:
        answer = (
            "No, not at the published threshold: neither post-training produces a single tuned-specific "
            "latent (NRN ≥ 0.9) in its pairwise crosscoder"
        )
        null_zero = all(q(r)["pairwise"]["control-same"]["tuned_only"]["count"] == 0 for r in runs)
        answer += ", the same as the same-tokens null" if null_zero else " (the same-tokens null has some)"
    else:
        answer = {
            "above": "Yes",
            "below": "No, the other way round",
            "inside": "No evidence of a difference",
            "disagree": "Not settled",
        }[only.key] + f" in tuned-specific latents (NRN ≥ 0.9): {only.text}"
    can_find = all(q(r)["pairwise"]["control-disjoint"]["tuned_only"]["low"] > 0 for r in runs)
    sens = (
        "The disjoint-halves null's tuned-only interval is above 0, so these crosscoders do find specific "
        "latents when the two sides differ"
        if can_find
        else "The disjoint-halves null finds no specific latent either, so this setting cannot tell"
    )
    t = lambda r, k: q(r)["trio"][k]
    trio = ", ".join(
        f"{cell(runs, lambda r, k=k: t(r, k)['count'], count, iv(lambda r, k=k: t(r, k)))} {k}"
        for k in ("rl-only", "sft-only", "base-only")
    )
    att = lambda r: r["analysis"]["attribution"]
    classes = ", ".join(
        f"{cell(runs, lambda r, k=k: att(r)['class_counts'].get(k, 0), count)} {k}" for k in ("shared", "mixed", "dead")
    )
    after = ", ".join(
        f"{cell(runs, lambda r, k=k: q(r)['trio_after_latent_scaling'][k]['count'], count)} {k}"
        for k in ("rl-only", "sft-only")
    )
    pub = PUBLISHED["features"]
    return f"""## Q1. Are there more SFT-specific latents than RL-specific ones?

**{answer}.** Graded (NRN ≥ 0.6): {lean.text}.

{
        table(
            [
                "crosscoder (pairwise)",
                "alive",
                "tuned-only (NRN ≥ 0.9)",
                "base-only (≤ 0.1)",
                "shared (0.4–0.6)",
                "tuned-leaning (≥ 0.6)",
                "base-leaning (≤ 0.4)",
                "sd(NRN)",
            ],
            rows,
        )
    }

SFT − RL tuned-only: {only.text}. {sens}.
Trio crosscoder (base, RL, SFT), of {cell(runs, lambda r: q(r)["n_alive"], count)} alive latents: {trio};
attribution classes {classes}. Latent Scaling flagged {cell(runs, lambda r: att(r)["n_artifacts"], count)}
artifacts; after it: {after}.
Figures: `figures/nrn_hist.png`, `figures/specific_counts.png`, `figures/mas_hist.png`, `figures/ternary.png`.

Published ({pub["source"]}): SFT has *many highly specialised* features, RL *few extreme* ones. The
spread of NRN (sd column) is the graded version of that contrast; the disjoint-halves null shows what the
crosscoders find when the two sides really differ. {l1_note}"""


TWO_TEST_ANSWER = {
    "earlier": "yes",
    "mixed": "weakly, the two tests disagree",
    "none": "no evidence",
    "later": "no, SFT is later",
    "disagree": "the seeds disagree",
}


def drift_rows(runs: list[dict], get: Callable[[dict], dict], label: str) -> list[list[str]]:
    """The SFT and RL rows of the Q2 table from one run's drift results (`get`: a seed record -> them)."""
    return [series_row(runs, lambda r, s=series: get(r)[s], f"{series.upper()} ({label})") for series in ("sft", "rl")]


def series_row(runs: list[dict], d: Callable[[dict], dict], label: str) -> list[str]:
    def med(key: str) -> Callable[[dict], str]:
        return lambda r: f"{num(d(r)[key + '_median'], 1)} {ci(*d(r)[key + '_median_95'], lambda x: num(x, 1))}"

    return [
        label,
        cell(runs, lambda r: d(r)["mean_overlap"], num, lambda r: ", ".join(num(x) for x in d(r)["overlap"])),
        cell(runs, lambda r: d(r)["mean_overlap"], num),
        cell(runs, lambda r: d(r)["topk_entry_median"], lambda x: num(x, 1), med("topk_entry")),
        cell(runs, lambda r: d(r)["stabilisation_median"], lambda x: num(x, 1), med("stabilisation")),
    ]


def q2_section(runs: list[dict]) -> str:
    q = lambda r: r["analysis"]["q2"]
    ex = lambda r: r["drift"]["drift"]
    with_example = all("drift" in r for r in runs)  # records of analyze runs alone have no example run
    k = runs[0]["analysis"]["config"]["top_k"]
    rows = drift_rows(runs, q, "analyze") + (drift_rows(runs, ex, "reproduce_drift.py") if with_example else [])
    higher = lambda r: sum(x > 0 for x in q(r)["sft_vs_rl"]["overlap_diff_per_pair"])
    diffs = cell(  # the per-pair lists only: a mean of lists means nothing (the count of higher pairs follows)
        runs,
        higher,
        count,
        lambda r: ", ".join(signed(x, 2) for x in q(r)["sft_vs_rl"]["overlap_diff_per_pair"]),
        spread=False,
    )
    n_pairs = len(q(runs[0])["sft_vs_rl"]["overlap_diff_per_pair"])
    test = lambda key: over_seeds(
        runs,
        lambda r: two_test_rule(*q(r)[key]["median_diff_95"], q(r)[key]["mannwhitney_p_a_earlier"]),
    )
    entry, stab = test("sft_vs_rl_topk_entry"), test("sft_vs_rl")
    md = lambda key: cell(runs, lambda r: q(r)[key]["median_diff"], signed)
    specific = all(x == 0 for r in runs for s in ("sft", "rl") for x in q(r)[s]["n_specific"])
    same = with_example and all(q(r)[s]["overlap"] == ex(r)[s]["overlap"] for r in runs for s in ("sft", "rl"))
    rows_are = (
        'Rows "analyze" are `python -m featalign.analyze`, rows "reproduce_drift.py" the example (the same\ncode with '
        f"the same settings); {'they agree exactly' if same else 'their overlaps differ (see the rows)'}."
        if with_example
        else "The rows are `python -m featalign.analyze`'s."
    )
    pw = lambda r, p: r["analysis"]["q1"]["pairwise"][p]
    nulls = drift_nulls_line(runs, q, k)
    return f"""## Q2. Do SFT features stabilise earlier than RL's?

Joint crosscoder over base + {len(q(runs[0])["sft"]["overlap"]) + 1} checkpoints per series; top-{k} by NRN against the
base. {rows_are}

{
        table(
            [
                "series",
                f"top-{k} overlap, successive checkpoints",
                "mean",
                f"top-{k} entry checkpoint, median [95% CI]",
                "value-based stabilisation, median [95% CI]",
            ],
            rows,
        )
    }

* Overlap (SFT − RL per successive pair: {diffs}): SFT's is higher at {cell(runs, higher, count)} of {n_pairs}
  pairs. This measure has no interval: it is descriptive only.
* Membership (when a final top-{k} feature enters the top-{k} for good), SFT − RL median {md("sft_vs_rl_topk_entry")}
  checkpoints, one-sided Mann–Whitney for SFT earlier: {entry.text}.
* Value-based (NRN within 0.05 of its final value and decoder cosine ≥ 0.9), SFT − RL median
  {md("sft_vs_rl")}: {stab.text}. This absolute-tolerance measure answers "has the feature reached its final
  state"; a series whose features hardly move reaches it at once.
* {
        "No checkpoint of either series has a specific latent (NRN ≥ 0.9)."
        if specific
        else "Specific latents (NRN ≥ 0.9) per checkpoint: "
        + "; ".join(f"{s.upper()} {q(runs[0])[s]['n_specific']}" for s in ("sft", "rl"))
    }
* How far each final model moved (Q1's pairwise crosscoders): sd(NRN) SFT {
        cell(runs, lambda r: pw(r, "base-vs-sft")["nrn_sd"], lambda x: num(x, 3))
    },
  RL {cell(runs, lambda r: pw(r, "base-vs-rl")["nrn_sd"], lambda x: num(x, 3))}, same-tokens null
  {cell(runs, lambda r: pw(r, "control-same")["nrn_sd"], lambda x: num(x, 3))}.{nulls}

**Answer, by top-{k} entry (the published measure): {TWO_TEST_ANSWER[entry.key]}; by value-based
stabilisation: {TWO_TEST_ANSWER[stab.key]}** (the rule: "yes" needs both the median-difference interval
below 0 and p < 0.05; one of the two is "weakly"). Published: SFT features stabilise early with high
overlap; RL features keep evolving with low overlap while base representations are largely kept.
Figure: `figures/drift.png`."""


SERIES = ("sft", "rl")


def drift_nulls_line(runs: list[dict], q: Callable[[dict], dict], k: int) -> str:
    """The Q2 bullet on the drift nulls (analyze's identical-copies and shuffled-order nulls), where every run has
    them (runs made before they existed do not): is the training order visible in the successive overlaps?"""
    if not all("null_shuffled" in q(r)[s] and "observed" in q(r)[s]["null_shuffled"] for r in runs for s in SERIES):
        return ""

    def order(r: dict, s: str) -> Verdict:
        sh = q(r)[s]["null_shuffled"]
        lo, hi = sh["null_95"]
        words = f"{num(sh['observed'])} against {num(sh['null_mean'])} {ci(lo, hi, num)}, p = {pval(sh['p'])}"
        if sh["p"] < 0.05:
            return Verdict("yes", f"the training order's overlap is higher than shuffled orders' ({words})")
        return Verdict("no", f"no evidence that the training order matters ({words})")

    verdicts = {s: over_seeds(runs, lambda r, s=s: order(r, s)) for s in SERIES}
    copies = lambda s: cell(runs, lambda r: q(r)[s]["null_copies"]["mean_overlap"], num)
    has_copies = all("null_copies" in q(r)[s] for r in runs for s in SERIES)
    return f"""
* Against its nulls (analyze's; report.md has them per pair): the mean successive top-{k} overlap in the
  training order against the checkpoints in every order (p = share of orders with a mean overlap ≥ the real
  one's): SFT {verdicts["sft"].text}; RL {verdicts["rl"].text}.""" + (
        f""" A base followed by identical copies (no training: the top-{k} is ranking noise)
  gives a mean overlap of {copies("rl")}."""
        if has_copies
        else ""
    )


#: where the success stage read the latents (analyze's `--positions`), as the Q3 text says it
POSITION_WORDS = {
    "last": "at the last prompt token",
    "all": "averaged over the prompt tokens",
    "answer_end": "at the reference answer's last token (the answer teacher-forced: the position that predicts <eos>)",
}


def q3_section(runs: list[dict]) -> str:
    q = lambda r: r["analysis"]["q3"]
    if any("error" in q(r) for r in runs):
        why = "; ".join(f"seed {r['seed']}: {q(r).get('error', 'answered')}" for r in runs)
        return f"""## Q3. Is there a compact RL-success feature set shared across tasks?

**Not answered by these runs**: the success stage stopped ({why})."""
    tasks = q(runs[0])["tasks"]
    samples = ", ".join(f"{t} {cell(runs, lambda r, t=t: q(r)['n_samples'][t], count)}" for t in tasks)
    skipped = "; ".join(f"{t}: {why}" for t, why in q(runs[0])["skipped"].items()) or "none"
    nl = lambda r: q(r)["null"]
    inter = over_seeds(runs, lambda r: null_rule(q(r)["n_features"], *nl(r)["size_95"]))
    major = over_seeds(runs, lambda r: null_rule(q(r)["n_majority"], *nl(r)["majority_size_95"]))
    overlap = over_seeds(runs, lambda r: null_rule(q(r)["mean_pairwise_overlap"], *nl(r)["mean_overlap_95"], num))
    rows = [
        [
            "per-task set sizes",
            ", ".join(f"{t} {cell(runs, lambda r, t=t: q(r)['per_task_sizes'][t], count)}" for t in tasks),
            "–",
        ],
        [
            f"intersection over the {len(tasks)} tasks",
            cell(
                runs,
                lambda r: q(r)["n_features"],
                count,
                lambda r: f"**{q(r)['n_features']}** (bootstrap {ci(*q(r)['bootstrap_size_95'])})",
            ),
            cell(
                runs,
                lambda r: nl(r)["size_mean"],
                lambda x: num(x, 1),
                lambda r: f"{num(nl(r)['size_mean'], 1)} {ci(*nl(r)['size_95'])}",
            ),
        ],
        [
            "selected in ≥ half of the tasks",
            cell(runs, lambda r: q(r)["n_majority"], count),
            cell(
                runs,
                lambda r: nl(r)["majority_size_mean"],
                lambda x: num(x, 1),
                lambda r: f"{num(nl(r)['majority_size_mean'], 1)} {ci(*nl(r)['majority_size_95'])}",
            ),
        ],
        [
            "mean pairwise overlap \\|A∩B\\|/min",
            cell(runs, lambda r: q(r)["mean_pairwise_overlap"], num),
            cell(
                runs,
                lambda r: nl(r)["mean_overlap_mean"],
                num,
                lambda r: f"{num(nl(r)['mean_overlap_mean'])} {ci(*nl(r)['mean_overlap_95'], num)}",
            ),
        ],
    ]
    g = lambda r, key: [v[key] for v in q(r)["gradient"].values()]
    compact = all(q(r)["n_features"] > 0 for r in runs) and inter.key == "above"
    answer = (
        "yes, the intersection is non-empty and above the random-subset null"
        if compact
        else "no, there is no intersection beyond what random samples of the same size give"
    )
    rl = next(m for m in runs[0]["organisms"]["paired_tests"] if m.startswith("rl"))
    pt = runs[0]["organisms"]["paired_tests"][rl]
    flips = ", ".join(f"{t} {pt[t]['base_fail_tuned_ok']} vs {pt[t]['base_ok_tuned_fail']}" for t in tasks)
    more = sum(pt[t]["base_fail_tuned_ok"] > pt[t]["base_ok_tuned_fail"] for t in tasks)
    n_null = nl(runs[0])["n"]
    pub = PUBLISHED["features"]
    if all(g(r, "spearman") for r in runs):
        gradient = (
            "Activation × gradient (log-prob of the correct answer) vs Score_k per task: Spearman "
            f"{cell(runs, lambda r: min(g(r, 'spearman')), num)} to {cell(runs, lambda r: max(g(r, 'spearman')), num)}, "
            f"top-set Jaccard {cell(runs, lambda r: min(g(r, 'top_k_jaccard')), num)} to\n"
            f"{cell(runs, lambda r: max(g(r, 'top_k_jaccard')), num)}."
        )
    else:
        gradient = "The activation × gradient score was not computed in every run."
    return f"""## Q3. Is there a compact RL-success feature set shared across tasks?

Base-fail / RL-success samples per out-of-domain task: {samples}; skipped ({skipped}).
Score {POSITION_WORDS[runs[0]["analysis"]["config"].get("positions", "last")]}, {100 * runs[0]["analysis"]["config"]["success_frac"]:.0f}%-of-max threshold.

{table(["", "real", f"random-subset null ({n_null} repeats), mean [95%]"], rows)}

By the null's intervals: intersection {inter.text}; majority set {major.text}; mean pairwise overlap
{overlap.text}. {gradient}
Figure: `figures/success_sets.png`; feature cards in `index.html`.

**Answer: {answer}.** Published ({pub["source"]}): a compact intersection ({pub["intersection"]}) with
{pub["overlap"]} overlap across tasks. Base-fail/RL-success vs base-success/RL-fail counts on the scored
tasks (the organisms' eval): {flips}; successes outnumber failures on {more} of {len(tasks)} tasks."""


EDITS = (("ablate_rl", "ablate in RL", "ablation"), ("steer_base", "steer base", "steering"))


def edit_tasks(r: dict, edit: str) -> dict[str, dict]:
    """Every task of one edit, selection and held-out, by name (held-out ones marked)."""
    e = r["interventions"][edit]
    out = {t: v for t, v in e["selection"]["tasks"].items()}
    out.update({t: {**v, "held_out": True} for t, v in e["held_out"]["tasks"].items()})
    return dict(sorted(out.items()))


def q4_rows(runs: list[dict]) -> list[list[str]]:
    rows = []
    coef = runs[0]["interventions"]["config"]["steer_coef"]
    for edit, label, kind in EDITS:
        for i, task in enumerate(edit_tasks(runs[0], edit)):
            t = lambda r, task=task, edit=edit: edit_tasks(r, edit)[task]
            name = f"{task} (held out)" if t(runs[0]).get("held_out") else task
            acc = lambda r, t=t: f"{100 * t(r)['acc_without']:.1f} → {100 * t(r)['acc_with']:.1f}"
            delta = lambda r, t=t: f"{pts(t(r)['delta'])} {ci(t(r)['ci_low'], t(r)['ci_high'], pts)}"
            sub = lambda r, t=t: (
                f"{100 * t(r)['subset_acc_without']:.0f} → {100 * t(r)['subset_acc_with']:.0f} "
                f"({pval(t(r)['subset_control_p'])})"
            )
            rows.append(
                [
                    label if edit == "ablate_rl" else f"{label} (coef {coef:g})",
                    name,
                    cell(runs, lambda r, t=t: 100 * t(r)["acc_with"], lambda x: f"{x:.1f}", acc),
                    cell(runs, lambda r, t=t: 100 * t(r)["delta"], signed, delta),
                    cell(runs, lambda r, t=t: t(r)["mcnemar_p"], pval, spread=False),
                    cell(runs, lambda r, t=t: t(r)["control_p"], pval, spread=False),
                    cell(runs, lambda r, t=t: 100 * t(r)["subset_acc_with"], count, sub)
                    if all(t(r)["subset_acc_with"] is not None for r in runs)
                    else "not shown: " + " / ".join(str(t(r).get("subset_n", 0)) for r in runs) + " samples",
                    PUBLISHED["features"][kind] if i == 0 else "",
                ]
            )
    return rows


def q4_verdicts(r: dict) -> dict[str, Verdict]:
    """Per seed: which rows move beyond both noise (delta interval excludes 0) and the matched controls
    (control p < 0.05), in the direction the published study found (ablation hurts, steering helps)."""
    n_ctrl = r["interventions"]["config"]["n_controls"]
    floor = pval(1 / (n_ctrl + 1))
    out = {}
    for edit, _, kind in EDITS:
        tasks = edit_tasks(r, edit)
        hurt = [t for t, v in tasks.items() if v["ci_high"] < 0 and v["control_p"] < 0.05]
        helped = [t for t, v in tasks.items() if v["ci_low"] > 0 and v["control_p"] < 0.05]
        lowest = min(v["control_p"] for v in tasks.values())
        want, other = (hurt, helped) if edit == "ablate_rl" else (helped, hurt)
        verb, other_verb = ("hurts", "helps") if edit == "ablate_rl" else ("helps", "hurts")
        if want:
            out[kind] = Verdict(
                "causal", f"{kind} {verb} beyond noise and beyond its matched controls on {', '.join(want)}"
            )
        else:
            out[kind] = Verdict(
                "none",
                f"no {kind} row {verb} beyond both noise and its matched controls "
                f"(lowest control p {pval(lowest)}; {n_ctrl} controls cannot give less than {floor})",
            )
        out[kind + " other"] = Verdict(
            "yes" if other else "no",
            f"{kind} {other_verb} beyond noise and controls on {', '.join(other)}"
            if other
            else f"no {kind} row {other_verb} beyond both",
        )
        subset = [t for t, v in tasks.items() if v["subset_control_p"] is not None and v["subset_control_p"] < 0.05]
        out[kind + " subset"] = Verdict(
            "yes" if subset else "no",
            f"{kind}: the base-fail/RL-success subset moves beyond its controls on {', '.join(subset)}"
            if subset
            else f"{kind}: no subset row beyond its controls (control p < 0.05)",
        )
    return out


def q4_answer(runs: list[dict]) -> str | None:
    """Q4's answer where the seeds disagree on ablation or steering (None where each edit gets one verdict in
    every seed): how many seeds each edit moved in, never the answer of all or of none."""
    n = len(runs)
    causal = {kind: sum(q4_verdicts(r)[kind].key == "causal" for r in runs) for kind in ("ablation", "steering")}
    if all(c in (0, n) for c in causal.values()):
        return None
    words = {
        "ablation": ("ablating them hurts beyond matched random features", "ablating them does not hurt beyond them"),
        "steering": (
            "steering the base along them helps beyond matched random features",
            "steering the base along them does not help beyond them",
        ),
    }
    parts = [
        words[kind][0] if c == n else words[kind][1] if c == 0 else f"{words[kind][0]} in {c} of {n} seeds"
        for kind, c in causal.items()
    ]
    return "the seeds disagree: " + "; ".join(parts)


def sweep_table(runs: list[dict]) -> str:
    sw = runs[0]["interventions"]["sweep"]
    tasks = list(dict.fromkeys(row["task"] for row in sw))
    coefs = sorted({row["coef"] for row in sw})
    at = lambda r, c, t: next(x for x in r["interventions"]["sweep"] if x["coef"] == c and x["task"] == t)
    rows = [
        [f"{c:g}"] + [cell(runs, lambda r, c=c, t=t: 100 * at(r, c, t)["delta"], signed) for t in tasks] for c in coefs
    ]
    return table(["coef"] + tasks, rows)


def q4_section(runs: list[dict]) -> str:
    i0 = runs[0]["interventions"]
    c, s = i0["config"], i0["success"]
    vs = {k: over_seeds(runs, lambda r, k=k: q4_verdicts(r)[k]) for k in q4_verdicts(runs[0])}
    answer = (
        q4_answer(runs)
        or {  # (ablation hurts beyond controls in every seed, steering helps beyond them in every seed)
            (True, True): "a causal role beyond matched random features: ablating them hurts and steering the base "
            "along them helps",
            (True, False): "ablating them hurts beyond matched random features; steering the base along them does not "
            "help beyond them",
            (False, True): "steering the base along them helps beyond matched random features; ablating them does not "
            "hurt beyond them",
            (False, False): "no causal role at the task level beyond matched random features",
        }[vs["ablation"].key == "causal", vs["steering"].key == "causal"]
    )
    samples = ", ".join(
        f"{t} {cell(runs, lambda r, t=t: r['interventions']['success']['n_samples'][t], count)}" for t in s["tasks"]
    )
    feats = "; ".join(f"seed {r['seed']}: {r['interventions']['features']}" for r in runs)
    rules = "; ".join(f"seed {r['seed']}: {r['interventions']['rule']}" for r in runs)
    return f"""## Q4. Do the RL-success features matter causally? (`examples/reproduce_feature_interventions.py`)

A base/RL {c["variant"]} crosscoder ({c["n_latents"]} latents, {c["steps"]} steps); RL-success scores
{POSITION_WORDS[c.get("positions", "last")]} on {
        len(s["tasks"])
    } out-of-domain selection tasks (base-fail / RL-success samples among {c["n_prompts"]} prompts
each: {samples}); `{"`, `".join(c["held_out_tasks"].split(","))}` held out. The script's feature rule
({rules}) chose the features ({feats}). Each edit is compared with {c["n_controls"]} random feature sets
matched on the RL model's firing frequency{
        f" and on the size of what each writes ({n} size bins per firing bin)"
        if (n := q4_setting(c, "size_bins"))
        else ""
    }; {c["n_prompts"]} prompts per task. The edits read the latents
with the one encode rule (`Crosscoder.encode_as`), which docs/crosscoder.md ("Reading one model's
latents") describes. Control p is the empirical two-sided p of the edit's delta among its controls; all
p-values are per row, uncorrected for the {2 * len(edit_tasks(runs[0], "ablate_rl"))} rows.

{
        table(
            [
                "edit",
                "task",
                "accuracy before → after",
                "delta [95% CI] (pts)",
                "McNemar p",
                "control p",
                "base-fail/RL-success subset, % correct (control p)",
                "published",
            ],
            q4_rows(runs),
        )
    }

Steering sweep (coefficient in units of each feature's typical activation in the RL model;
{c["sweep_controls"]} matched controls per point; delta in points; figure `figures/steer_sweep.png`):

{sweep_table(runs)}

By the rule (a row counts when its delta interval excludes 0 **and** control p < 0.05):

* {vs["ablation"].text}; {vs["ablation other"].text};
* {vs["steering"].text}; {vs["steering other"].text};
* {vs["ablation subset"].text}; {vs["steering subset"].text}.

**Answer: {answer}.**
Published ({PUBLISHED["features"]["source"]}): ablating the RL-success features costs the RL model
{PUBLISHED["features"]["ablation"]} points; steering the base along them gains {PUBLISHED["features"]["steering"]}."""


def transfer_section(runs: list[dict]) -> str:
    pub = PUBLISHED["transfer"]
    t0 = runs[0]["transfer"]
    doms = t0["domains"]
    rows, verdicts = [], {}
    for m in ("rl", "sft"):
        tm = lambda r, m=m: r["transfer"][m]
        indom = lambda r, tm=tm: [row[tm(r)["eval_domains"].index(d)] for d, row in zip(doms, tm(r)["delta_points"])]
        cmh = lambda r, sc, tm=tm: tm(r)["cmh"][sc]
        orc = lambda sc, cmh=cmh: cell(
            runs,
            lambda r: cmh(r, sc)["odds_ratio"],
            num,
            lambda r: f"{num(cmh(r, sc)['odds_ratio'])} {ci(cmh(r, sc)['ci_low'], cmh(r, sc)['ci_high'], num)}",
        )
        rows.append(
            [
                f"{m.upper()} ({', '.join(doms)})",
                cell(
                    runs,
                    lambda r, cmh=cmh: cmh(r, "in_domain")["mean_delta_points"],
                    signed,
                    lambda r, cmh=cmh, indom=indom: (
                        f"**{signed(cmh(r, 'in_domain')['mean_delta_points'])}** ("
                        + ", ".join(f"{d} {signed(x)}" for d, x in zip(doms, indom(r)))
                        + ")"
                    ),
                ),
                orc("in_domain"),
                cell(runs, lambda r, cmh=cmh: cmh(r, "out_of_domain")["mean_delta_points"], signed),
                orc("out_of_domain"),
            ]
        )
        for sc in ("in_domain", "out_of_domain"):
            verdicts[m, sc] = over_seeds(runs, lambda r, sc=sc, cmh=cmh: odds_ratio_rule(cmh(r, sc)))
    rows.append(
        [
            "published (RL, real models)",
            signed(pub["in_delta"]),
            f"{pub['in_or']:.2f}",
            signed(pub["out_delta"]),
            f"{pub['out_or']:.2f}",
        ]
    )
    fam = "; ".join(
        f"{m.upper()} on `{d}` {signed(f['same_family'])} / {signed(f['other_families'])}"
        for m in ("rl", "sft")
        for d, f in t0[m]["family_means"].items()
    )
    worst = "; ".join(
        f"`{d}` → " + ", ".join(f"`{e}` {signed(x)}" for x, e in sorted(zip(row, t0["sft"]["eval_domains"]))[:2])
        for d, row in zip(doms, t0["sft"]["delta_points"])
    )
    positive = verdicts["rl", "out_of_domain"].key == "gain"
    return f"""## The transfer study (`examples/reproduce_transfer_study.py`)

From the one base, SFT and GRPO on each of `{"`, `".join(doms)}` (the organisms' own post-training domain,
the others built by the script into a copy of the organisms folder, same recipe), each evaluated on all
{len(t0["rl"]["eval_domains"])} domains ({t0["config"]["n_prompts"]} prompts each). It trains no crosscoder, so
`--seed` does not apply to it.

{
        table(
            [
                "",
                "in-domain mean delta",
                "in-domain CMH OR [95% CI]",
                "out-of-domain mean delta",
                "out-of-domain CMH OR [95% CI]",
            ],
            rows,
        )
    }

By the odds ratios' intervals: RL in-domain {verdicts["rl", "in_domain"].text}, out of domain
{verdicts["rl", "out_of_domain"].text}; SFT in-domain {verdicts["sft", "in_domain"].text}, out of domain
{verdicts["sft", "out_of_domain"].text}. **The organisms {"reproduce" if positive else "do not reproduce"} the
published positive out-of-domain transfer of RL (OR {pub["out_or"]:.2f}).**

Family structure (mean out-of-domain delta on the other domains of the training domain's family / on the
other families; no interval, descriptive): {fam}. SFT's two largest drops per training domain: {worst}.
Published ({pub["source"]}): RL gains transfer between structurally similar domains and vanish elsewhere.
Figures: `figures/transfer_rl.png`, `figures/transfer_sft.png`."""


def times_section(runs: list[dict]) -> str:
    sec = lambda x: f"{x:.0f} s"
    st = runs[0]["analysis"]["timings_s"]
    stages = ", ".join(
        f"{k} {cell(runs, lambda r, k=k: r['analysis']['timings_s'][k], sec)}" for k in st if k != "total"
    )
    org = runs[0]["organisms"]["timings_s"]
    build = (
        (
            ", ".join(f"{k} {v:.0f} s" for k, v in org.items() if k != "last_call_total_s")
            + f" ({org['last_call_total_s'] / 60:.0f} min in all)"
        )
        if org
        else "not recorded"
    )
    return f"""## Run times (from the runs' JSON)

| run | wall time |
|---|---|
| `python -m featalign.analyze` | {cell(runs, lambda r: r["analysis"]["timings_s"]["total"], sec)} |
| `examples/reproduce_feature_interventions.py` | {cell(runs, lambda r: r["interventions"]["seconds"], sec)} |
| `examples/reproduce_drift.py` | {cell(runs, lambda r: r["drift"]["seconds"], sec)} |
| `examples/reproduce_transfer_study.py` | {cell(runs, lambda r: r["transfer"]["seconds"], sec)} |

Analysis stages: {stages}. One torch thread each (`--threads {runs[0]["analysis"]["config"]["threads"]}`). The
organisms build (`docs/organisms.md`): {build}."""


FOOTER = """## Regenerating this page

From fresh runs, one folder per crosscoder seed (`--seed` sets the crosscoder's and its trainer's seed, and
also the sample of training/held-out text and the bootstrap and control draws; the transfer study trains
no crosscoder, so one run of it serves every seed):

```bash
ORG=${FEATALIGN_CACHE:-~/.cache/featalign}/organisms/default
python examples/reproduce_transfer_study.py --out runs/transfer
for S in 0 1 2; do
  python -m featalign.analyze --seed $S --out runs/s$S/analysis
  python examples/reproduce_feature_interventions.py --seed $S --out runs/s$S/fi
  python examples/reproduce_drift.py --seed $S --out runs/s$S/drift
  python docs/results.py collect --analysis runs/s$S/analysis --interventions runs/s$S/fi \\
    --drift runs/s$S/drift --transfer runs/transfer --organisms $ORG --seed $S
done
python docs/results.py render   # or python docs/render_tables.py, which also renders the other pages' tables
```

`collect` keeps only what this page shows (plus each run's config and version stamps, with paths written
relative to the organisms folder or the run's `--out`) in `docs/data/results/seed-<S>.json`;
`tests/test_docs.py` fails when this page differs from `render` of those files."""


VARIANTS = DATA / "variants"


def build_key(o: dict) -> tuple:
    """What makes two organisms records the same build: its config, its CPU kind and every model's accuracy on
    every domain (a rebuild with a newer transformers stamps another version and, being deterministic,
    reproduces the same models)."""
    return (o["config"], o["provenance"]["cpu_capability"], o["summary"]["accuracy"])


def collect_variant(analysis: Path, organisms: Path, seed: int) -> dict:
    """One `python -m featalign.analyze --stages attribution,controls --variant V --seed S` run's Q1 record (the
    attribution, the pairwise counts and their base-vs-base nulls), with the build it ran on."""
    r = json.loads((Path(analysis) / "report.json").read_text())
    if r["config"].get("seed") != seed:
        raise ValueError(f"{analysis} ran with --seed {r['config'].get('seed')}, not {seed}")
    missing = [k for k in ("attribution", "q1_specific_latents") if k not in r]
    if missing or "trio_after_latent_scaling" not in r["q1_specific_latents"]:
        raise ValueError(
            f"{analysis}/report.json lacks {missing or 'the trio counts'}: rerun it with --stages attribution,controls"
        )
    org = Path(organisms).resolve()
    roots = [("organisms", org), ("out", Path(analysis).resolve())]
    part = {
        **pick(r, ("config", "hook", "attribution", "timings_s")),
        "stamp": stamp(r),
        "q1": r["q1_specific_latents"],
    }
    o = compact_organisms(org)
    rec = {
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "variant": r["config"]["variant"],
        "analysis": strip_paths(part, roots),
        "organisms": strip_paths({k: o[k] for k in ("config", "provenance", "summary")}, roots),
    }
    refuse_machine_paths(rec)
    return rec


def collect_variant_q23(analysis: Path, organisms: Path, seed: int, rec: dict) -> dict:
    """The variant record `rec` (Q1, `collect_variant`) with Q2 and Q3 of a `python -m featalign.analyze --stages
    drift,success --variant V --seed S` run on the same build added as `analysis_q23` (its own config and stamp)."""
    r = json.loads((Path(analysis) / "report.json").read_text())
    got = (r["config"].get("seed"), r["config"]["variant"])
    if got != (seed, rec["variant"]):
        raise ValueError(f"{analysis} ran with (seed, variant) {got}, the record has {(seed, rec['variant'])}")
    if "q2_drift" not in r or "q3_success_features" not in r:
        raise ValueError(f"{analysis}/report.json lacks Q2 or Q3: rerun it with --stages drift,success")
    org = Path(organisms).resolve()
    o = compact_organisms(org)
    if build_key(o) != build_key(rec["organisms"]):
        raise ValueError(f"{org} is not the build of the record's Q1 run: pass that build")
    compact = compact_analysis(r)
    part = {k: compact[k] for k in ("config", "stamp", "hook", "timings_s", "q2", "q3")}
    roots = [("organisms", org), ("out", Path(analysis).resolve())]
    out = {**rec, "analysis_q23": strip_paths(part, roots)}
    out["organisms"] = {**rec["organisms"], "paired_tests": o["paired_tests"]}  # the Q3 text's flip counts
    return out


def group_by_variant(recs: list[dict]) -> dict[str, list[dict]]:
    """{variant: its records, in the given order}, variants sorted by name."""
    out: dict[str, list[dict]] = {}
    for r in recs:
        out.setdefault(r["variant"], []).append(r)
    return dict(sorted(out.items()))


def load_variants(folder: Path = VARIANTS) -> dict[str, list[dict]]:
    """{variant: its seed records by seed} from `folder/<variant>-seed-<S>.json`, all on one build."""
    recs = sorted((json.loads(p.read_text()) for p in folder.glob("*-seed-*.json")), key=lambda r: r["seed"])
    builds = {json.dumps(r["organisms"]["provenance"], sort_keys=True) for r in recs}
    if len(builds) > 1:
        raise ValueError(f"{folder}: the variant runs come from {len(builds)} organisms builds; a table shows one")
    return group_by_variant(recs)


def variant_verdicts(runs: list[dict]) -> tuple[Verdict, bool]:
    """SFT − RL tuned-only over seeds, and whether the disjoint-halves null found specific latents in
    every seed (the positive control of this question)."""
    q = lambda r: r["analysis"]["q1"]
    only = over_seeds(
        runs,
        lambda r: interval_rule(
            q(r)["pairwise_sft_minus_rl_tuned_only"]["low"],
            q(r)["pairwise_sft_minus_rl_tuned_only"]["high"],
            "more SFT-specific latents",
            "more RL-specific latents",
            lambda x: signed(x, 0),
        ),
    )
    can_find = all(q(r)["pairwise"]["control-disjoint"]["tuned_only"]["low"] > 0 for r in runs)
    return only, can_find


def stages_flag(cfg: dict) -> str:
    """The `--stages` option a command line needs to rerun a run of `cfg`: none for every stage (the default)."""
    from featalign.analysis.config import DEFAULT_STAGES

    return "" if cfg.get("stages", DEFAULT_STAGES) == DEFAULT_STAGES else f"--stages {cfg['stages']} "


def variants_section(by_variant: dict[str, list[dict]], tables: list[dict] | None = None) -> str:
    """Q1 by crosscoder variant on one build (`docs/data/results/variants/`), said to be the build of the page's
    seed records `tables` (and read at their hook) only where it is: empty when there are none."""
    if not by_variant:
        return ""
    q = lambda r: r["analysis"]["q1"]
    iv = lambda get: lambda r: f"{count(get(r)['count'])} {ci(get(r)['low'], get(r)['high'])}"
    att = lambda r: r["analysis"]["attribution"]
    trio = lambda r, k: q(r)["trio_after_latent_scaling"][k]["count"]
    rows, lines = [], []
    for variant, runs in by_variant.items():
        for key, label in PAIRS:
            pw = lambda r, key=key: q(r)["pairwise"][key]
            rows.append(
                [f"{variant}: {label}", cell(runs, lambda r, pw=pw: pw(r)["n_alive"], count)]
                + [
                    cell(runs, lambda r, c=c, pw=pw: pw(r)[c]["count"], count, iv(lambda r, c=c, pw=pw: pw(r)[c]))
                    for c in ("tuned_only", "tuned_lean")
                ]
                + [cell(runs, lambda r, pw=pw: pw(r)["nrn_sd"], lambda x: num(x, 3))]
            )
        only, can_find = variant_verdicts(runs)
        lines.append(
            f"- **{variant}** (seeds {', '.join(str(r['seed']) for r in runs)}): SFT − RL tuned-only: {only.text}. "
            + (
                "The disjoint-halves null's tuned-only interval is above 0 in every seed, so this variant does "
                "find specific latents when the two sides differ. "
                if can_find
                else "The disjoint-halves null finds no specific latent in some seed, so this variant cannot "
                "tell there. "
            )
            + f"The trio crosscoder has {cell(runs, lambda r: q(r)['trio']['rl-only']['count'], count)} rl-only and "
            f"{cell(runs, lambda r: q(r)['trio']['sft-only']['count'], count)} sft-only latents; Latent Scaling "
            f"flagged {cell(runs, lambda r: att(r)['n_artifacts'], count)} artifacts of "
            f"{cell(runs, lambda r: q(r)['n_alive'], count)} alive trio latents; after it the trio has "
            f"{cell(runs, lambda r: trio(r, 'rl-only'), count)} rl-only and "
            f"{cell(runs, lambda r: trio(r, 'sft-only'), count)} sft-only latents."
        )
    first = next(iter(by_variant.values()))[0]
    a = first["analysis"]["config"]
    q23 = variants_q23(by_variant)
    hook = first["analysis"]["hook"]
    if (
        tables
        and build_key(tables[0]["organisms"]) == build_key(first["organisms"])
        and tables[0]["analysis"]["hook"] == hook
    ):
        where = f"on the same build as the tables above and at their hook `{hook}`"
    else:
        build = ", ".join(f"{k} {v}" for k, v in sorted(first["organisms"]["provenance"].items()))
        where = (
            f"on **another build** of the same recipe than the tables above (build stamp: {build}), at hook `{hook}`, "
            "so compare the variants with each other, not with the tables above"
        )
    what = (
        "every stage" + ("; Q2 and Q3 below come from the same runs" if q23 else "")
        if not stages_flag(a)
        else "the attribution, the pairwise crosscoders and their base-vs-base nulls"
    )
    return (
        f"""## {"Q1 to Q3" if q23 else "Q1"} by crosscoder variant: the L1 loss next to BatchTopK

The same question with the published loss (`--variant l1`, sparsity coefficient {a["sparsity_coef"]:g}) and with
BatchTopK (k = {a["k"]}), each over crosscoder seeds, {where}. Each run:
`python -m featalign.analyze {hook_flag(a, hook)}{stages_flag(a)}--variant V --seed S` ({what}), {a["n_latents"]} latents,
{a["steps"]} steps.

{table(["variant: crosscoder (pairwise)", "alive", "tuned-only (NRN ≥ 0.9)", "tuned-leaning (≥ 0.6)", "sd(NRN)"], rows)}

{chr(10).join(lines)}"""
        + q23
    )


def variants_q23(by_variant: dict[str, list[dict]]) -> str:
    """Q2 and Q3 per variant, by the page's rules, for the variants whose every record carries a drift,success
    run (`collect_variant_q23`); empty when none does."""
    out = []
    for variant, recs in by_variant.items():
        if not all("analysis_q23" in r for r in recs):
            continue
        same_run = all(r["analysis_q23"]["config"] == r["analysis"]["config"] for r in recs)
        runs = [{**r, "analysis": {**r["analysis"], **r["analysis_q23"]}} for r in recs]  # Q2 cites Q1
        a = runs[0]["analysis"]["config"]
        q2, q3 = (section(runs).split("\n", 1)[1] for section in (q2_section, q3_section))  # no heading
        hook = runs[0]["analysis"]["hook"]
        command = f"python -m featalign.analyze {hook_flag(a, hook)}{stages_flag(a)}--variant {variant} --seed S"
        out.append(f"""### Q2 and Q3 with `{variant}` crosscoders

`{command}`{" (the runs of Q1 above)" if same_run else ""} on the same build,
{a["n_latents"]} latents, {a["steps"]} steps, hook `{hook}`.

#### Q2 with `{variant}`
{q2}

#### Q3 with `{variant}`
{q3}""")
    return "".join(f"\n\n{x}" for x in out)


Q4_VARIANTS = DATA / "q4-variants"
#: The settings every run of the Q4-by-variant section shares (all but the crosscoder's own: variant, k,
#: sparsity coefficient, seed, and where a run wrote or how it showed progress).
Q4_SHARED = (
    "selection_tasks",
    "held_out_tasks",
    "n_prompts",
    "n_tokens",
    "eval_tokens",
    "n_latents",
    "steps",
    "hook",
    "positions",
    "success_frac",
    "min_samples",
    "min_features",
    "steer_coef",
    "n_controls",
    "n_bins",
    "sweep_coefs",
    "sweep_controls",
    "tasks",
    "model",
    "model_set",
    "size_bins",
)
#: what runs made before an option had instead of it (--positions read the last token; --size-bins: frequency only)
Q4_BEFORE = {"positions": "last", "size_bins": 0}


def q4_setting(cfg: dict, key: str) -> Any:
    return cfg.get(key, Q4_BEFORE.get(key))


def collect_q4_variant(interventions: Path, organisms: Path) -> dict:
    """One `examples/reproduce_feature_interventions.py --variant V --seed S` run with the build it ran on: a record
    of the Q4-by-variant section (every record of it on one build, with one set of `Q4_SHARED` settings)."""
    org = Path(organisms).resolve()
    roots = [("organisms", org), ("out", Path(interventions).resolve())]
    fi = strip_paths(compact_interventions(json.loads((Path(interventions) / "results.json").read_text())), roots)
    o = compact_organisms(org)
    rec = {
        "format_version": FORMAT_VERSION,
        "seed": fi["config"]["seed"],
        "variant": fi["config"]["variant"],
        "interventions": fi,
        "organisms": strip_paths({k: o[k] for k in ("config", "provenance", "summary")}, roots),
    }
    refuse_machine_paths(rec)
    return rec


def check_q4_variants(recs: list[dict]) -> None:
    """Refuse records that a side-by-side table cannot show: several builds, or settings beyond the crosscoder's."""
    if len({json.dumps(build_key(r["organisms"]), sort_keys=True) for r in recs}) > 1:
        raise ValueError("the Q4-by-variant runs come from several organisms builds; a table shows one")
    first = recs[0]["interventions"]["config"] if recs else {}
    for r in recs:
        cfg = r["interventions"]["config"]
        differ = [k for k in Q4_SHARED if q4_setting(cfg, k) != q4_setting(first, k)]
        if differ:
            raise ValueError(
                f"the Q4 run {cfg['variant']} seed {r['seed']} differs from {first['variant']} seed "
                f"{recs[0]['seed']} in {differ}: rerun it with the same settings"
            )


def load_q4_variants(folder: Path = Q4_VARIANTS) -> dict[str, list[dict]]:
    """{variant: its Q4 records by seed} from `folder/<variant>-seed-<S>.json` (`collect_q4_variant`)."""
    recs = sorted((json.loads(p.read_text()) for p in folder.glob("*-seed-*.json")), key=lambda r: r["seed"])
    check_q4_variants(recs)
    return group_by_variant(recs)


def q4_variants_section(by_variant: dict[str, list[dict]], runs: list[dict] | None = None) -> str:
    """Q4 per crosscoder variant over seeds on one build (`docs/data/results/q4-variants/`), said to be the build
    of the page's seed records `runs` only where it is; empty when there are none."""
    if not by_variant:
        return ""
    recs_all = [r for recs in by_variant.values() for r in recs]
    check_q4_variants(recs_all)
    first = recs_all[0]
    if runs and build_key(runs[0]["organisms"]) == build_key(first["organisms"]):
        check_q4_variants([runs[0], *recs_all])  # on the tables' build, with the Q4 table's settings too
        where = (
            "the same build as the tables above, with the Q4 table's settings: only the crosscoder's loss differs "
            "from that table's runs"
        )
    else:
        build = ", ".join(f"{k} {v}" for k, v in sorted(first["organisms"]["provenance"].items()))
        where = (
            f"**another build** of the recipe than the Q4 table above (build stamp: {build}): compare the variants "
            "with each other, not with that table; only the crosscoder's loss differs between the subsections"
        )
    out = []
    for variant, recs in by_variant.items():
        body = q4_section(recs).split("\n", 1)[1]
        c = recs[0]["interventions"]["config"]
        what = f"sparsity coefficient {c['sparsity_coef']:g}" if variant in ("l1", "jumprelu") else f"k = {c['k']}"
        out.append(f"### Q4 with `{variant}` crosscoders ({what})\n{body}")
    names = " and ".join(f"`{v}`" for v in by_variant)
    return f"""## Q4 by crosscoder variant: {names}

`examples/reproduce_feature_interventions.py --variant V --seed S` with every other setting the same, all on
{where}.

""" + "\n\n".join(out)


Q4_SIZE_MATCHED = DATA / "q4-size-matched"


def check_q4_size_matched(recs: list[dict], runs: list[dict]) -> None:
    """Refuse a size-matched record that is not its seed's Q4 run with `--size-bins` added: another build, a
    seed the page has no Q4 run of, or any other setting changed."""
    main = {r["seed"]: r for r in runs}
    for rec in recs:
        cfg, seed = rec["interventions"]["config"], rec["seed"]
        if q4_setting(cfg, "size_bins") < 2:
            raise ValueError(f"the seed-{seed} run matched its controls on frequency only: rerun with --size-bins")
        if seed not in main:
            raise ValueError(f"the page has no Q4 run of seed {seed} to set the size-matched run against")
        if build_key(rec["organisms"]) != build_key(main[seed]["organisms"]):
            raise ValueError(f"the size-matched seed-{seed} run is on another build than the Q4 table's")
        other = main[seed]["interventions"]["config"]
        keys = (set(cfg) | set(other)) - {"size_bins", "out", "progress", "threads"}
        differ = sorted(k for k in keys if q4_setting(cfg, k) != q4_setting(other, k))
        if differ:
            raise ValueError(f"the size-matched seed-{seed} run differs from the Q4 table's in {differ}: rerun it")


def load_q4_size_matched(folder: Path = Q4_SIZE_MATCHED) -> list[dict]:
    """The `collect-q4-size-matched` records by seed."""
    return sorted((json.loads(p.read_text()) for p in folder.glob("seed-*.json")), key=lambda r: r["seed"])


def q4_size_matched_section(
    recs: list[dict], runs: list[dict], heading: str = "## Q4 with controls matched on size too", table: str = "Q4 table"
) -> str:
    """Q4 again with controls matched on size as well as firing frequency (the same runs otherwise: those of
    `runs`, which the page shows as its `table`); empty without records."""
    if not recs:
        return ""
    check_q4_size_matched(recs, runs)
    main = {r["seed"]: r for r in runs}
    paired = [main[r["seed"]] for r in recs]
    n_size = q4_setting(recs[0]["interventions"]["config"], "size_bins")
    same = all(r["interventions"]["features"] == m["interventions"]["features"] for r, m in zip(recs, paired))
    text = q4_section(recs)
    against = answers_compared(text, q4_section(paired))
    body = text.split("\n", 1)[1].lstrip("\n")
    flag = hook_flag(recs[0]["interventions"]["config"], paired[0]["analysis"]["hook"])
    return f"""{heading}

`examples/reproduce_feature_interventions.py {flag}--size-bins {n_size} --seed S` (seeds
{", ".join(str(r["seed"]) for r in recs)}): the runs of the {table} above with one change, how the random controls
are drawn. Within its firing-frequency bin, each control latent also comes from the same {n_size}-quantile of the
size of what a latent writes into the RL model when it fires (mean activation x decoder norm, `encoder_stats`'
`mean_recon_norm`), so a control cannot stand in with a much smaller reconstruction than the feature it matches.
{
        f"The crosscoders and the chosen features are the {table}'s in every seed"
        if same
        else f"**The chosen features differ from the {table}'s in some seed** (another crosscoder)"
    }. Against the {table} above (the same seeds): {against}.

{body}"""


STRUCTURED = DATA / "structured"


def collect_organism_seed(analysis: Path, organisms: Path, interventions: Path | None = None) -> dict:
    """One `python -m featalign.analyze` run on one build of an organisms preset, with the build (and optionally
    an `examples/reproduce_feature_interventions.py` run on it, read at the same positions): a record of the
    preset over organism seeds (each seed its own base, so its own build)."""
    r = json.loads((Path(analysis) / "report.json").read_text())
    org = Path(organisms).resolve()
    roots = [("organisms", org), ("out", Path(analysis).resolve())]
    o = compact_organisms(org)
    rec = {
        "format_version": FORMAT_VERSION,
        "seed": o["config"]["seed"],  # the organism seed: the records' `seed`, as the verdicts over seeds name it
        "crosscoder_seed": r["config"]["seed"],
        "analysis": strip_paths(compact_analysis(r), roots),
        "organisms": strip_paths({k: o[k] for k in ("config", "provenance", "summary", "paired_tests")}, roots),
    }
    if interventions is not None:
        rec = with_interventions(rec, interventions, organisms)
    refuse_machine_paths(rec)
    return rec


def with_interventions(rec: dict, interventions: Path, organisms: Path) -> dict:
    """An organism-seed record with an `examples/reproduce_feature_interventions.py` run on its build added; the
    run must be on that build (the same organisms config), read at the record's positions, with its seed."""
    org = Path(organisms).resolve()
    fi = compact_interventions(json.loads((Path(interventions) / "results.json").read_text()))
    want = {"positions": rec["analysis"]["config"]["positions"], "seed": rec["crosscoder_seed"]}
    got = {k: fi["config"].get(k, "last") for k in want}
    if got != want:
        raise ValueError(f"the interventions ran with {got}, the analysis with {want}: pass runs that match")
    if compact_organisms(org)["config"] != rec["organisms"]["config"]:
        raise ValueError(f"{org} is not the build of the record (organism seed {rec['seed']}): pass that build")
    return {**rec, "interventions": strip_paths(fi, [("organisms", org), ("out", Path(interventions).resolve())])}


def load_structured(folder: Path = STRUCTURED) -> list[dict]:
    """The organism-seed records (`collect-organism-seed`), by organism seed; they must share one preset."""
    recs = sorted((json.loads(p.read_text()) for p in folder.glob("seed-*.json")), key=lambda r: r["seed"])
    presets = {r["organisms"]["config"]["preset"] for r in recs}
    if len(presets) > 1:
        raise ValueError(f"{folder}: records of several presets {sorted(presets)}; a section shows one")
    return recs


def organism_seed_path(data: Path, rec: dict) -> Path:
    """Where `collect-organism-seed` files a record: `seed-<S>.json`, or under `positions-<P>/` for a run whose
    success stage read the latents elsewhere than the default's last prompt token (a Q3-only record)."""
    positions = rec["analysis"]["config"]["positions"]
    folder = data if positions == "last" else data / f"positions-{positions}"
    return folder / f"seed-{rec['seed']}.json"


def load_structured_positions(folder: Path = STRUCTURED) -> dict[str, list[dict]]:
    """The Q3 records read at other positions (`organism_seed_path`), by position."""
    return {p.name.removeprefix("positions-"): load_structured(p) for p in sorted(folder.glob("positions-*"))}


def q4_subsection(preset: str, recs: list[dict], where: str) -> str:
    """Q4 on a preset's builds, when every record carries an interventions run (else empty)."""
    if not recs or not all("interventions" in r for r in recs):
        return ""
    body = q4_section(recs).split("\n", 1)[1]
    return f"### Q4 on the `{preset}` builds{where}\n{body}"


def positions_subsections(preset: str, by_positions: dict[str, list[dict]]) -> str:
    out = []
    for positions, recs in by_positions.items():
        q3 = q3_section(recs).split("\n", 1)[1]
        out.append(f"""### Q3 on the `{preset}` builds, read at another position (`--positions {positions}`)

`python -m featalign.analyze {hook_flag(recs[0]["analysis"]["config"], recs[0]["analysis"]["hook"])}--stages success --positions {positions}` on the same builds, with crosscoders
trained by the same settings and seeds as above; only where the latents are read differs.
{q3}""")
        q4 = q4_subsection(preset, recs, f", read at another position (`--positions {positions}`)")
        out += [q4] if q4 else []
    return "\n\n".join(out)


def structured_section(recs: list[dict], by_positions: dict[str, list[dict]] | None = None) -> str:
    """Q1 to Q3 on a preset's builds over organism seeds (the structured preset: a known same-family transfer),
    by the same rules as the sections above, and Q3 read at other positions; empty when there are none."""
    if not recs:
        return ""
    org = recs[0]["organisms"]["config"]
    a = recs[0]["analysis"]["config"]
    q1, q2, q3 = (section(recs).split("\n", 1)[1] for section in (q1_section, q2_section, q3_section))  # no heading
    more = "\n\n".join(
        x
        for x in (q4_subsection(org["preset"], recs, ""), positions_subsections(org["preset"], by_positions or {}))
        if x
    )
    last_q = "Q4" if all("interventions" in r for r in recs) else "Q3"
    from featalign.models.hooks import default_hook

    hook = recs[0]["analysis"]["hook"]
    fixed = (
        f" These runs read a given block{' (the middle one)' if hook == default_hook(org['n_layers']) else ''}, not"
        " one measured by `--hook auto` (the default now): rerun them without `--hook` to read the measured block."
        if hook_flag(a, hook)
        else ""
    )
    return f"""## The `{org["preset"]}` preset over organism seeds: Q1 to {last_q}

The same analysis (`{("python -m featalign.analyze " + hook_flag(a, recs[0]["analysis"]["hook"])).rstrip()}`, every stage, {a["variant"]},
{a["n_latents"]} latents, {a["steps"]} steps, hook `{recs[0]["analysis"]["hook"]}`) on builds of the `{org["preset"]}` preset with organism
seeds {", ".join(str(r["seed"]) for r in recs)} (each its own base and post-training; docs/organisms.md shows
their transfer: RL on `{org["post_train_domains"][0]}` gains on its family through the planted stop). Here
"seed" is the organism seed; each build's crosscoders use crosscoder seed
{", ".join(sorted({str(r["crosscoder_seed"]) for r in recs}))}. {
        "Q4 ran as `examples/reproduce_feature_interventions.py` on each build; the drift example did not"
        if all("interventions" in r for r in recs)
        else "Q4 and the drift example were not run on these builds"
    }. The
success selection reads the latents where analyze reads them (`--positions`, the same for every build); the
planted stop is decided after the answer, so at the last prompt token it can show only through what the model
already represents there.{fixed}

### Q1 on the `{org["preset"]}` builds
{q1}

### Q2 on the `{org["preset"]}` builds
{q2}

### Q3 on the `{org["preset"]}` builds
{q3}""" + (f"\n\n{more}" if more else "")


MIDDLE_BLOCK = DATA / "middle-block"  # the same runs at the fixed middle block (the default hook before auto)


def answer_of(section_text: str) -> str:
    """A question section's answer: its first bold span that starts a line (the rules write it there)."""
    m = re.search(r"^\*\*(.+?)\*\*", section_text, re.M | re.S)
    if m is None:
        raise ValueError("the section states no answer in bold at the start of a line")
    return " ".join(m.group(1).split())


def answers_compared(here_text: str, there_text: str) -> str:
    """ "the same answer", or both answers quoted: two renderings of one question's section set side by side."""
    here, there = answer_of(here_text), answer_of(there_text)
    return "the same answer" if here == there else f"another answer (here: “{here}”; there: “{there}”)"


def load_fixed_hook(folder: Path = MIDDLE_BLOCK) -> list[dict]:
    """The seed records of the runs at a fixed hook (`collect --data FOLDER`), [] when there are none; like the
    main records they share one build (`load_runs`) and, by `collect`'s check, one hook per seed."""
    if not list(folder.glob("seed-*.json")):
        return []
    runs = load_runs(folder)
    if len({r["analysis"]["hook"] for r in runs}) > 1:
        raise ValueError(f"{folder}: records at several hooks; a section shows one hook")
    return runs


def hook_flag(cfg: dict, hook: str) -> str:
    """The `--hook` option that reruns a run which read `hook`: none for a run at the default (auto); the
    hook itself for a run given one or run before auto was the default (its config's hook is then null)."""
    return "" if cfg.get("hook") == "auto" else f"--hook {hook} "


def fixed_hook_section(recs: list[dict], runs: list[dict], size_matched: Sequence[dict] = ()) -> str:
    """Q1 to Q4 (and Q4 with size-matched controls when `size_matched` has records) of the runs at a fixed hook,
    by the same rules as the sections above, each answer set against theirs; empty without records."""
    if not recs:
        return ""
    r0, hook = recs[0], recs[0]["analysis"]["hook"]
    same_build = bool(runs) and build_key(r0["organisms"]) == build_key(runs[0]["organisms"])
    sections = (q1_section, q2_section, q3_section, q4_section)
    texts = [section(recs) for section in sections]
    q1, q2, q3, q4 = (t.split("\n", 1)[1] for t in texts)
    compared = ""
    if runs and same_build:
        compared = (
            "\n\nAgainst the sections above (the measured block, the same build): "
            + "; ".join(
                f"Q{i} {answers_compared(t, section(runs))}" for i, (t, section) in enumerate(zip(texts, sections), 1)
            )
            + "."
        )
    seeds = " ".join(str(r["seed"]) for r in recs)
    flag = {part: hook_flag(r0[part]["config"], hook) for part in ("analysis", "interventions", "drift")}
    return f"""## Q1 to Q4 at the fixed middle block `{hook}`

The sections above read the block `--hook auto` measured. Here the same analysis, examples and crosscoder seeds
({", ".join(str(r["seed"]) for r in recs)}) read the fixed middle block `{hook}` instead (`--hook {hook}`; the
default hook before the measured one), on {
        "the same build as the sections above"
        if same_build
        else "another build than the sections above (stamp: "
        + ", ".join(f"{k} {v}" for k, v in sorted(r0["organisms"]["provenance"].items()) if k in STAMP_KEYS)
        + ")"
    }: what changes when the hook is fixed instead of measured.{compared}

Regenerate (`ORG` and `runs/transfer` as in the footer):

```bash
for S in {seeds}; do
  python -m featalign.analyze {flag["analysis"]}--seed $S --out runs/middle/s$S/analysis
  python examples/reproduce_feature_interventions.py {flag["interventions"]}--seed $S --out runs/middle/s$S/fi
  python examples/reproduce_drift.py {flag["drift"]}--seed $S --out runs/middle/s$S/drift
  python docs/results.py collect --data docs/data/results/{MIDDLE_BLOCK.name} --analysis runs/middle/s$S/analysis \\
    --interventions runs/middle/s$S/fi --drift runs/middle/s$S/drift --transfer runs/transfer --organisms $ORG --seed $S
done
```

### Q1 at `{hook}`
{q1}

### Q2 at `{hook}`
{q2}

### Q3 at `{hook}`
{q3}

### Q4 at `{hook}`
{q4}""" + (
        "\n\n"
        + q4_size_matched_section(
            list(size_matched),
            recs,
            f"### Q4 at `{hook}` with controls matched on size too",
            f"Q4 at `{hook}`",
        )
        if size_matched
        else ""
    )


PREDICTION = DATA / "transfer_prediction.json"
PREDICTION_TRANSFERS = (("rl_delta", "RL transfer (accuracy delta)"), ("sft_delta", "SFT transfer (accuracy delta)"))


def collect_prediction(run: Path, organisms: Path) -> dict:
    """The compact record of one `examples/predict_transfer.py` run (its results.json; the similarity and
    transfer matrices are small) and the organisms build it ran on, without machine paths."""
    r = json.loads((run / "results.json").read_text())
    org = json.loads((organisms / "config.json").read_text())
    timings = run / "organisms" / "timings.json"  # the post-training runs the example built (organisms only)
    stages = json.loads(timings.read_text()) if timings.exists() else {}
    rec = {
        "format_version": FORMAT_VERSION,
        "config": r["config"],
        "stamp": stamp(r),
        "organisms_config": org,
        "post_training_s": {k: v for k, v in stages.items() if k.startswith(("rl-", "sft-"))},
        **pick(r, ("hook", "tasks", "train", "similarity", "transfer", "scores", "best", "seconds")),
    }
    rec = strip_paths(rec, [("run", run.resolve()), ("organisms", organisms.resolve())])
    leftover = [x for x in strings(rec) if x.startswith(("/", "~"))]
    if leftover:
        raise ValueError(f"machine paths left in the prediction record: {leftover[:3]}")
    return rec


def prediction_verdict(s: dict) -> Verdict:
    """A measure predicts transfer when its Spearman interval is above 0 and its permutation p < 0.05."""
    iv = ci(s["ci"][0], s["ci"][1], lambda x: signed(x, 2))
    if s["ci"][0] > 0 and s["p_permutation"] < 0.05:
        return Verdict(
            "predicts", f"predicts it (Spearman {signed(s['spearman'], 2)} {iv}, p {pval(s['p_permutation'])})"
        )
    if s["p_permutation"] < 0.05 or s["ci"][0] > 0:
        return Verdict(
            "weakly",
            f"weakly: one of the interval {iv} and the permutation p {pval(s['p_permutation'])} says so, not both",
        )
    return Verdict("no", f"no evidence (Spearman {signed(s['spearman'], 2)} {iv}, p {pval(s['p_permutation'])})")


def prediction_section(pred: dict | None) -> str:
    """Issue 15's question on the organisms with structure by construction, next to the baselines."""
    if pred is None:
        return ""
    cfg, org = pred["config"], pred["organisms_config"]
    lines = [
        "## Predicting where RL transfers from the base model's features (`examples/predict_transfer.py`)",
        "",
        f"The `{org['preset']}` organisms (organism seed {org['seed']}; {len(pred['tasks'])} domains: "
        f"{', '.join(pred['tasks'])}); "
        f"single-domain RL and SFT from the one base on each of {', '.join(pred['train']['rl_delta'])}, every "
        f"model evaluated on every domain ({org['eval_samples']} prompts; the similarity from the base alone on "
        f"{cfg['n_prompts']} prompts per domain, a {cfg['variant']} SAE of {cfg['n_latents']} latents at "
        f"`{pred['hook']}`). Spearman over the off-diagonal pairs; p: one-sided permutation test "
        f"({cfg['n_permutations']} relabellings of the domains); interval: 95% bootstrap over domains "
        f"({cfg['n_boot']} resamples). A measure *predicts* when its interval is above 0 and p < 0.05.",
        "",
    ]
    header = ["measure", *[label for _, label in PREDICTION_TRANSFERS]]
    rows = []
    for m in pred["scores"]["rl_delta"]:
        row = [m + (" (baseline)" if m in ("ngram", "residual_cosine") else "")]
        for t, _ in PREDICTION_TRANSFERS:
            sc = pred["scores"].get(t, {}).get(m)
            row.append(
                "–"
                if sc is None
                else f"{signed(sc['spearman'], 2)} {ci(*sc['ci'], lambda x: signed(x, 2))}, "
                f"p {pval(sc['p_permutation'])}"
            )
        rows.append(row)
    lines += [table(header, rows), ""]
    for t, label in PREDICTION_TRANSFERS:
        if t not in pred["scores"]:
            continue
        sc = pred["scores"][t]
        best = pred["best"][t]["features"]
        base_best = max((m for m in sc if m in ("ngram", "residual_cosine")), key=lambda m: sc[m]["spearman"])
        v = prediction_verdict(sc[best]) if best else Verdict("no", "no feature measure could be scored")
        vb = prediction_verdict(sc[base_best])
        beats = (
            "its interval lies above the best baseline's point estimate"
            if best and sc[best]["ci"][0] > sc[base_best]["spearman"]
            else "the intervals do not separate it from the best baseline"
        )
        lines.append(
            f"**{label}.** Best feature measure `{best}`: {v.text}; best baseline `{base_best}`: {vb.text}; {beats}."
        )
        lines.append("")
    post = pred.get("post_training_s") or {}
    lines.append(
        f"Time: the {len(post)} single-domain RL and SFT runs {sum(post.values()) / 60:.0f} min (as their build "
        f"recorded them), the prediction and its scoring {pred['seconds'] / 60:.0f} min (the example's last call, "
        "which reuses built runs). Figures of the run: `figures/scatter_rl_delta.png`, `figures/matrices.png`."
    )
    return "\n".join(lines)


def load_prediction(path: Path = PREDICTION) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def render(
    runs: list[dict],
    prediction: dict | None = None,
    variants: dict[str, list[dict]] | None = None,
    structured: list[dict] | None = None,
    structured_positions: dict[str, list[dict]] | None = None,
    q4_variants: dict[str, list[dict]] | None = None,
    fixed_hook: list[dict] | None = None,
    q4_size_matched: list[dict] | None = None,
    fixed_hook_size_matched: list[dict] | None = None,
) -> str:
    """The whole page from the seed records (as `load_runs` returns them), the transfer-prediction record, the
    variant runs (as `load_variants` returns them) and a preset's organism-seed records (`load_structured`)."""
    parts = [
        header(runs),
        organisms_section(runs),
        q1_section(runs, bool(variants)),
        q2_section(runs),
        q3_section(runs),
        q4_section(runs),
        transfer_section(runs),
        prediction_section(prediction),
        variants_section(variants or {}, runs),
        q4_variants_section(q4_variants or {}, runs),
        q4_size_matched_section(q4_size_matched or [], runs),
        fixed_hook_section(fixed_hook or [], runs, fixed_hook_size_matched or []),
        structured_section(structured or [], structured_positions),
        times_section(runs),
        FOOTER,
    ]
    return "\n\n".join(p for p in parts if p) + "\n"


def render_page() -> str:
    """docs/results.md as the committed JSON says it should be."""
    return render(
        load_runs(DATA),
        load_prediction(DATA / PREDICTION.name),
        load_variants(VARIANTS),
        load_structured(STRUCTURED),
        load_structured_positions(STRUCTURED),
        load_q4_variants(Q4_VARIANTS),
        load_fixed_hook(MIDDLE_BLOCK),
        load_q4_size_matched(Q4_SIZE_MATCHED),
        load_q4_size_matched(MIDDLE_BLOCK / Q4_SIZE_MATCHED.name),
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="verb", required=True)
    c = sub.add_parser("collect", help="the compact parts of four runs' outputs -> docs/data/results/seed-S.json")
    for name in ("analysis", "interventions", "drift", "transfer", "organisms"):
        c.add_argument(f"--{name}", type=Path, required=True)
    c.add_argument("--seed", type=int, required=True)
    c.add_argument("--data", type=Path, default=DATA, help="folder of the seed files")
    cp = sub.add_parser(
        "collect-prediction", help="one predict_transfer.py run -> docs/data/results/transfer_prediction.json"
    )
    cp.add_argument("--run", type=Path, required=True, help="the run's --out folder")
    cp.add_argument("--organisms", type=Path, required=True, help="the organisms folder it ran on")
    cp.add_argument("--data", type=Path, default=DATA)
    for verb, default, what in (
        (
            "collect-variant",
            VARIANTS,
            "one analyze --stages attribution,controls run -> <variant>-seed-S.json (a --stages drift,success run: "
            "its Q2 and Q3 added to that file)",
        ),
        ("collect-organism-seed", STRUCTURED, "one analyze run on one build of a preset -> seed-<organism seed>.json"),
    ):
        one = sub.add_parser(verb, help=f"{what} in {default.relative_to(DOCS.parent)}")
        one.add_argument("--analysis", type=Path, required=verb == "collect-variant", help="the run's --out folder")
        one.add_argument("--organisms", type=Path, required=True, help="the organisms folder it ran on")
        one.add_argument("--data", type=Path, default=default)
        if verb == "collect-variant":
            one.add_argument("--seed", type=int, required=True)
        else:
            one.add_argument(
                "--interventions",
                type=Path,
                help="a reproduce_feature_interventions.py run's --out on the same build (without --analysis: "
                "added to the build's record already collected)",
            )
    for verb, folder, what in (
        (
            "collect-q4-variant",
            Q4_VARIANTS,
            "a reproduce_feature_interventions.py --variant V --seed S run (every such run on one build, with one set "
            "of settings) -> <variant>-seed-S.json",
        ),
        (
            "collect-q4-size-matched",
            Q4_SIZE_MATCHED,
            "a reproduce_feature_interventions.py --size-bins N --seed S run, the seed's Q4 run in --data otherwise "
            "-> seed-S.json",
        ),
    ):
        q = sub.add_parser(verb, help=f"{what} in {folder.relative_to(DOCS.parent)}")
        q.add_argument("--interventions", type=Path, required=True, help="the run's --out folder")
        q.add_argument("--organisms", type=Path, required=True, help="the organisms folder it ran on")
        q.add_argument(
            "--data", type=Path, default=DATA, help=f"folder of the seed files (records go to its {folder.name}/)"
        )
    r = sub.add_parser("render", help="docs/results.md from every seed file")
    r.add_argument("--data", type=Path, default=DATA)
    r.add_argument("--page", type=Path, default=PAGE)
    r.add_argument("--check", action="store_true", help="exit 1 if the page disagrees with the JSON")
    a = ap.parse_args(argv)
    from featalign.io import atomic_write_json, atomic_write_text

    if a.verb == "collect":
        rec = collect(a.analysis, a.interventions, a.drift, a.transfer, a.organisms, a.seed)
        atomic_write_json(a.data / f"seed-{a.seed}.json", rec)
        print(f"wrote {a.data / f'seed-{a.seed}.json'}")
        return 0
    if a.verb == "collect-prediction":
        atomic_write_json(a.data / PREDICTION.name, collect_prediction(a.run, a.organisms))
        print(f"wrote {a.data / PREDICTION.name}")
        return 0
    if a.verb == "collect-variant":
        report = json.loads((a.analysis / "report.json").read_text())
        if "q1_specific_latents" in report:
            rec = collect_variant(a.analysis, a.organisms, a.seed)
            if "q2_drift" in report and "q3_success_features" in report:  # a run of every stage: Q2 and Q3 too
                rec = collect_variant_q23(a.analysis, a.organisms, a.seed, rec)
        else:  # a drift,success run: Q2 and Q3 added to the variant's Q1 record of the same seed
            path = a.data / f"{report['config']['variant']}-seed-{a.seed}.json"
            rec = collect_variant_q23(a.analysis, a.organisms, a.seed, json.loads(path.read_text()))
        path = a.data / f"{rec['variant']}-seed-{a.seed}.json"
        atomic_write_json(path, rec)
        print(f"wrote {path}")
        return 0
    if a.verb == "collect-q4-variant":
        rec = collect_q4_variant(a.interventions, a.organisms)
        path = a.data / Q4_VARIANTS.name / f"{rec['variant']}-seed-{rec['seed']}.json"
        others = [json.loads(p.read_text()) for p in path.parent.glob("*-seed-*.json") if p != path]
        check_q4_variants(others + [rec])  # refused before anything is written
        atomic_write_json(path, rec)
        print(f"wrote {path}")
        return 0
    if a.verb == "collect-q4-size-matched":
        rec = collect_q4_variant(a.interventions, a.organisms)
        check_q4_size_matched([rec], load_runs(a.data))  # against the seed's Q4 run in --data; refused before writing
        path = a.data / Q4_SIZE_MATCHED.name / f"seed-{rec['seed']}.json"
        atomic_write_json(path, rec)
        print(f"wrote {path}")
        return 0
    if a.verb == "collect-organism-seed":
        if a.analysis is not None:
            rec = collect_organism_seed(a.analysis, a.organisms, a.interventions)
        elif a.interventions is not None:
            fi_cfg = json.loads((a.interventions / "results.json").read_text())["config"]
            key = {
                "seed": compact_organisms(a.organisms.resolve())["config"]["seed"],
                "analysis": {"config": {"positions": fi_cfg.get("positions", "last")}},
            }
            rec = with_interventions(
                json.loads(organism_seed_path(a.data, key).read_text()), a.interventions, a.organisms
            )
        else:
            ap.error("collect-organism-seed needs --analysis, --interventions or both")
        path = organism_seed_path(a.data, rec)
        atomic_write_json(path, rec)
        print(f"wrote {path}")
        return 0
    text = render(
        load_runs(a.data),
        load_prediction(a.data / PREDICTION.name),
        load_variants(a.data / "variants"),
        load_structured(a.data / "structured"),
        load_structured_positions(a.data / "structured"),
        load_q4_variants(a.data / Q4_VARIANTS.name),
        load_fixed_hook(a.data / MIDDLE_BLOCK.name),
        load_q4_size_matched(a.data / Q4_SIZE_MATCHED.name),
        load_q4_size_matched(a.data / MIDDLE_BLOCK.name / Q4_SIZE_MATCHED.name),
    )
    if a.check:
        if a.page.read_text() != text:
            print(f"{a.page} disagrees with {a.data}: run python docs/results.py render")
            return 1
        return 0
    atomic_write_text(a.page, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
