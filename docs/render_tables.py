"""Render the docs' tables that come from committed run outputs (`docs/data/*.json`) into their pages.

    python docs/render_tables.py          # rewrite the marked blocks in place
    python docs/render_tables.py --check  # exit 1 if a page disagrees with its JSON (tests run this)

A block is the text between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; NAME picks the renderer.
A page in `whole_pages()` (docs/results.md, by `docs/results.py`) is written whole, not by blocks.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def organisms_build(path: Path) -> str:
    """Accuracy per domain and in/out-of-domain deltas of one organisms build (`eval/summary.json`)."""
    return organisms_table(json.loads(path.read_text()))


def organisms_table(s: dict) -> str:
    """The accuracy table of one organisms build's `eval/summary.json` (already read), with its stamp."""
    acc = s["accuracy"]
    models = ["base"] + sorted(k for k in acc if k != "base")
    domains = list(s["config"]["pretrain_domains"])
    post = set(s["config"]["post_train_domains"])
    lines = ["| domain | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
    for d in domains:
        name = f"**{d}** (in-domain)" if d in post else d
        lines.append(f"| {name} | " + " | ".join(f"{100 * acc[m][d]:.1f}" for m in models) + " |")
    stamp = ", ".join(f"{k} {s[k]}" for k in sorted(s) if k.endswith("_version") or k == "cpu_capability")
    lines += ["", f"Stamp of the build: {stamp}."]
    return "\n".join(lines)


ZERO_SHIFT_NOTE = ("† a model at 0% (or 100%) on every stratum leaves the plain odds ratio undefined: odds ratio "
                   "and interval of the tables with 0.5 added to every cell of each table with a zero cell "
                   "(`CMHResult.zero_shifted`); the p-value is the plain test's.")


def _ci(c: dict) -> str:
    mark = " †" if c.get("zero_shifted") else ""
    return f"{c['odds_ratio']:.2f} [{c['ci_low']:.2f}, {c['ci_high']:.2f}]{mark}"


def _zero_shift_note(text: str) -> list[str]:
    """The † footnote, where a rendered interval carries the mark."""
    return ["", ZERO_SHIFT_NOTE] if " †" in text else []


def organisms_structured(path: Path, timings: Path | None = None) -> str:
    """A structured-preset build (`eval/summary.json`): per domain its family, planted stop, accuracy, the share of
    right-answer-then-'.' completions and the per-domain CMH odds ratio vs base; then the pooled CMH per scope."""
    s = json.loads(path.read_text())
    acc, tr, dot = s["accuracy"], s["transfer"], s["sloppy_stop_share"]
    (train,) = s["config"]["post_train_domains"]
    models = ("base", f"sft-{train}", f"rl-{train}")
    head = ["domain", "family", "planted stop", *models, "answer + '.' (base / SFT / RL)",
            "right answer, any stop (base / RL)", "SFT OR [95% CI]", "RL OR [95% CI]"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    for d in s["config"]["pretrain_domains"]:
        meta = s["domains"][d]
        stop = f"{100 * meta['sloppy_stop']:.0f}% of '.'" if meta["sloppy_stop"] > 0 else "clean"
        cells = [f"**{d}** (trained)" if d == train else d, meta["family"], stop]
        cells += [f"{100 * acc[m][d]:.1f}" for m in models]
        cells += [" / ".join(f"{100 * dot[m][d]:.1f}" for m in models)]
        # exact answer and answer + '.' are disjoint outcomes: their sum is the share that got the answer right
        right = [100 * (acc[m][d] + dot[m][d]) for m in ("base", f"rl-{train}")]
        cells += [f"{right[0]:.1f} / {right[1]:.1f}"]
        cells += [_ci(tr[k]["cmh_per_domain"][train][d]) for k in ("sft", "rl")]
        lines.append("| " + " | ".join(cells) + " |")
    lines += ["", "| kind | scope | strata | OR [95% CI] | p | mean delta (pts) |", "|---|---|---|---|---|---|"]
    for kind in ("rl", "sft"):
        for scope in ("in_domain", "same_family", "other_families", "out_of_domain"):
            c = tr[kind]["cmh"][scope]
            p = "<1e-300" if c["p_value"] == 0 else f"{c['p_value']:.2g}"
            lines.append(f"| {kind.upper()} | {scope} | {c['n_strata']} | {_ci(c)} | {p} | "
                         f"{c['mean_delta_points']:+.1f} |")
    lines += _zero_shift_note("\n".join(lines))
    stamp = ", ".join(f"{k} {s[k]}" for k in sorted(s) if k.endswith("_version") or k == "cpu_capability")
    lines += ["", f"Accuracy and shares in %, {s['config']['eval_samples']} eval prompts per domain. "
              f"Stamp of the build: {stamp}."]
    if timings is not None:
        t = json.loads(timings.read_text())
        listed = ", ".join(f"{k} {v:.0f} s" for k, v in t["stages_s"].items())
        p = t["process"]
        lines += ["", f"Build stages (`timings.json`): {listed}; the build call took {t['build_call_s']:.0f} s, the "
                  f"process {p['wall_s']:.0f} s wall with {p['user_cpu_s'] + p['sys_cpu_s']:.0f} s of CPU "
                  f"({p['cpu_percent']}% of one core: the two cores were shared with other jobs)."]
    return "\n".join(lines)


def structured_target(tr: dict) -> tuple[bool, bool, bool]:
    """Issue 14's targets on one structured build's transfer summary: RL gains on the structure-sharing domains
    (same_family OR interval above 1), not on the others (other_families interval not above 1), and SFT on the same
    prompts forgets somewhere: on the other families (its other_families interval below 1), where RL does not
    gain. (Not its pooled out-of-domain interval: where SFT also fixes a shared deficiency, that pools the fix on
    the same family with the forgetting elsewhere.)"""
    rl, sft = tr["rl"]["cmh"], tr["sft"]["cmh"]
    return rl["same_family"]["ci_low"] > 1, rl["other_families"]["ci_low"] <= 1, sft["other_families"]["ci_high"] < 1


def _planted_rate(s: dict) -> float:
    """The '.' rate planted in a structured build's post-training domain (its summary's domain table)."""
    (train,) = s["config"]["post_train_domains"]
    return s["domains"][train]["sloppy_stop"]


def organisms_structured_seeds(paths: Sequence[Path]) -> str:
    """The structured preset over organism seeds (one `eval/summary.json` per build, `--seed S`): per build the
    planted '.' rate and the pooled CMH odds ratios that carry the targets; per planted rate, in how many builds
    each target holds (builds with different plants are different recipes, never pooled)."""
    builds = [json.loads(p.read_text()) for p in paths]
    head = ["planted '.'", "seed", "CPU", "base: answer + '.' on the same family (%)", "RL same family",
            "RL other families", "RL out of domain", "SFT other families", "SFT out of domain",
            "RL same-family gain / none elsewhere / SFT forgets"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    by_rate: dict[float, list[tuple[dict, tuple[bool, bool, bool]]]] = {}
    for s in sorted(builds, key=lambda b: (_planted_rate(b), b["config"]["seed"], b.get("cpu_capability", ""))):
        rl, sft = s["transfer"]["rl"]["cmh"], s["transfer"]["sft"]["cmh"]
        ok = structured_target(s["transfer"])
        by_rate.setdefault(_planted_rate(s), []).append((s, ok))
        (train,) = s["config"]["post_train_domains"]
        family = s["domains"][train]["family"]
        same = [d for d in s["config"]["pretrain_domains"] if d != train and s["domains"][d]["family"] == family]
        dots = ", ".join(f"{d} {100 * s['sloppy_stop_share']['base'][d]:.1f}" for d in same)
        lines.append(f"| {100 * _planted_rate(s):.0f}% | {s['config']['seed']} | {s.get('cpu_capability', '?')} | "
                     f"{dots} | {_ci(rl['same_family'])} | {_ci(rl['other_families'])} | {_ci(rl['out_of_domain'])} | "
                     f"{_ci(sft['other_families'])} | {_ci(sft['out_of_domain'])} | "
                     + " / ".join("yes" if x else "**no**" for x in ok) + " |")
    lines += _zero_shift_note("\n".join(lines))
    lines += ["", "CMH odds ratio [95% CI] vs the base, pooled over each scope's domains."]
    for rate, group in sorted(by_rate.items()):
        n = len(group)
        ors = [s["transfer"]["rl"]["cmh"]["same_family"]["odds_ratio"] for s, _ in group]
        counts = [sum(ok[i] for _, ok in group) for i in range(3)]
        lines.append(f"Planted at {100 * rate:.0f}%, {n} build{'s' * (n != 1)}: RL's same-family interval is above 1 in {counts[0]} "
                     f"of {n} (odds ratio {min(ors):.2f} to {max(ors):.2f}); its other-families interval is not "
                     f"above 1 in {counts[1]} of {n}; SFT's other-families interval is below 1 in {counts[2]} of {n}.")
    return "\n".join(lines)


def hook_choice(path: Path) -> str:
    """`--hook auto`'s measurement on a model set (report.json `hook_choice`, kept with the build's stamp): per
    block the relative change r of each tuned model and their mean, with 95% intervals, and the block chosen."""
    return hook_choice_table(json.loads(path.read_text()))


def hook_choice_table(s: dict) -> str:
    """`hook_choice`'s table from the record itself ({"hook_choice", "default_hook", "stamp"})."""
    table, choice = s["hook_choice"]["table"], s["hook_choice"]["choice"]
    models = list(table["per_model"])
    head = ["block", *(f"r {m} [95% CI]" for m in models), "r mean over tuned [95% CI]", "chosen"]
    lines = ["| " + " | ".join(head) + " |", "|---" * len(head) + "|"]
    iv = lambda m, lo_hi: f"{m:.3f} [{lo_hi[0]:.3f}, {lo_hi[1]:.3f}]"
    for h, hook in enumerate(table["hooks"]):
        cells = [hook] + [iv(table["per_model"][m]["mean"][h], table["per_model"][m]["mean_95"][h]) for m in models]
        cells += [iv(table["mean_over_tuned"][h], table["mean_over_tuned_95"][h])]
        cells += ["**yes**" if hook == choice["hook"] else ("not a candidate" if h not in choice["candidates"] else "")]
        lines.append("| " + " | ".join(cells) + " |")
    clear = "above" if choice.get("clear") else "not above"
    stamp = ", ".join(f"{k} {v}" for k, v in sorted(s["stamp"].items()))
    lines += ["", f"{table['n_tokens']:,} tokens; the chosen block's interval is {clear} every other candidate's. "
              f"Middle block of this model (the fixed default before `auto`): `{s['default_hook']}`. Stamp: {stamp}."]
    return "\n".join(lines)


def organisms_transfer_rows(path: Path) -> str:
    """The transfer matrix of a build with several post-training domains: accuracy delta vs base (points) per
    (kind, training domain) and eval domain, under the base's accuracy and right-answer-then-'.' share."""
    s = json.loads(path.read_text())
    domains, dot = list(s["config"]["pretrain_domains"]), s["sloppy_stop_share"]
    lines = ["| | " + " | ".join(domains) + " |", "|---" * (len(domains) + 1) + "|"]
    lines.append("| base accuracy | " + " | ".join(f"{100 * s['accuracy']['base'][d]:.1f}" for d in domains) + " |")
    lines.append("| base: answer + '.' | " + " | ".join(f"{100 * dot['base'][d]:.1f}" for d in domains) + " |")
    for kind in ("rl", "sft"):
        t = s["transfer"][kind]
        for train, row in zip(t["train_domains"], t["delta_points"]):
            cells = [f"**{v:+.1f}**" if d == train else f"{v:+.1f}" for d, v in zip(domains, row)]
            lines.append(f"| {kind.upper()} on {train}: delta | " + " | ".join(cells) + " |")
    for train in s["transfer"]["rl"]["train_domains"]:
        share = dot[f"rl-{train}"]
        lines.append(f"| RL on {train}: answer + '.' | " + " | ".join(f"{100 * share[d]:.1f}" for d in domains) + " |")
    return "\n".join(lines)


def organisms_rollouts(path: Path) -> str:
    """`docs/structured_rollouts.py`'s output: per model and domain, the share of T=1 samples that are the right
    answer + '.' and that contain a '.' at all."""
    s = json.loads(path.read_text())
    domains = list(s["config"]["pretrain_domains"])
    lines = ["| T=1 samples: answer + '.' / any '.' (%) | " + " | ".join(domains) + " |",
             "|---" * (len(domains) + 1) + "|"]
    for name, shares in s["shares"].items():
        cells = [f"{100 * shares[d]['right_answer_dot']:.1f} / {100 * shares[d]['any_dot']:.1f}" for d in domains]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", f"{s['n_prompts']} train prompts per domain x {s['group']} samples (GRPO's group size), "
              f"temperature {s['temperature']}, seed {s['seed']}."]
    return "\n".join(lines)


def organisms_targets(path: Path) -> str:
    """The organisms' targets (this page's "Against the targets" table) checked on one build's summary JSON."""
    s = json.loads(path.read_text())
    acc, cfg = s["accuracy"], s["config"]
    dom = cfg["post_train_domains"][0]
    base = acc["base"]
    mid = [d for d in base if 0.10 <= base[d] <= 0.80]
    rows = [("base between 10% and 80% on >= 6 domains", f"{len(mid)} domains ({', '.join(mid)})", len(mid) >= 6)]
    for kind in ("rl", "sft"):
        gain = 100 * (acc[f"{kind}-{dom}"][dom] - base[dom])
        rows.append((f"{kind.upper()} gains >= 15 points in-domain",
                     f"{gain:+.1f} ({dom} {100 * base[dom]:.1f}% -> {100 * acc[f'{kind}-{dom}'][dom]:.1f}%)", gain >= 15))
    tests = s.get("paired_tests", {}).get(f"rl-{dom}")
    if tests is not None:
        flips = sorted(((t["base_fail_tuned_ok"], d) for d, t in tests.items() if d != dom), reverse=True)
        rows.append(("an out-of-domain domain with >= 50 base-fail / RL-success samples",
                     ", ".join(f"{d} {n}" for n, d in flips[:3]), flips[0][0] >= 50))
    out = {k: s["transfer"][k]["cmh"]["out_of_domain"] for k in ("sft", "rl")}
    rows.append(("SFT forgets out of domain (mean delta < 0), more than RL",
                 f"SFT {out['sft']['mean_delta_points']:+.1f} points (OR {out['sft']['odds_ratio']:.2f}), "
                 f"RL {out['rl']['mean_delta_points']:+.1f} (OR {out['rl']['odds_ratio']:.2f})",
                 min(0, out["rl"]["mean_delta_points"]) > out["sft"]["mean_delta_points"]))
    lines = ["| target | measured | met? |", "|---|---|---|"]
    lines += [f"| {t} | {m} | {'yes' if ok else '**no**'} |" for t, m, ok in rows]
    return "\n".join(lines)


def first_run(paths: Sequence[Path]) -> str:
    """The README's first-run time, one sentence per machine kind (`benchmarks/bench_first_run.py` writes
    `docs/bench/first_run_<cpu capability>.json`): the same job differs by 3x between an AVX-512 and an
    AVX2-only CPU, so a single figure would mislead on the other kind. Says how to measure while there is none."""
    if not paths:
        return ("Not yet measured with this version: `python benchmarks/bench_first_run.py` on an otherwise idle "
                "machine writes `docs/bench/first_run_<cpu>.json`, and `python docs/render_tables.py` puts it here.")
    out = []
    for path in paths:
        s = json.loads(path.read_text())
        p = s["phases_s"]
        out.append(
            f"- {s.get('cpu_capability', 'unknown')} CPU{f' ({m})' if (m := s.get('cpu_model')) else ''}, measured {s['date']} ({s['cores']} cores, load average "
            f"{s['load_average_before'][0]:.1f} at the start, {s['cores_busy']:.2f} cores busy on average): "
            f"**{s['wall_s'] / 60:.1f} minutes**: the organisms {p['organisms']:.0f} s (pretraining "
            f"{p['organisms_pretraining']:.0f} s, post-training and evaluation "
            f"{p['organisms_post_training_and_eval']:.0f} s), caching the activations {p['activations_caching']:.0f} s, "
            f"training the crosscoder {p['crosscoder_training']:.0f} s"
            f"{'' if (b := s.get('crosscoder_bf16')) is None else (' (bf16)' if b else ' (fp32)')}, its evaluation {p['crosscoder_evaluation']:.0f} s "
            f"(`docs/bench/{path.name}`).")
    return "\n".join(out)


def real_models_plan(path: Path) -> str:
    """Memory and time of the real-models recipe (`docs/real_models_plan.py`: arithmetic, not a measurement)."""
    s = json.loads(path.read_text())
    r, g, m, t = s["recipe"], s["gpu"], s["memory_gib"], s["time_minutes"]
    rows = [
        ("one model's weights (bf16)", f"{m['one_model_bf16']:.1f} GiB GPU", f"{s['parameters'] / 1e9:.2f}B parameters"),
        ("cache: base, rl, sft at once (bf16)", f"{m['cache_all_main_models_bf16']:.1f} GiB GPU",
         f"{t['cache']:.0f} min for {r['cache_tokens'] / 1e6:.0f}M tokens per model"),
        ("the store on disk (bf16)", f"{m['store_on_disk']:.0f} GiB disk", ""),
        ("train the crosscoder (f32 weights, Adam, gradients + a batch)",
         f"{m['crosscoder_train_f32_adam_grads'] + m['crosscoder_batch_preacts']:.1f} GiB GPU",
         f"{t['train_crosscoder_dense_bound']:.0f} min for {r['steps']:,} steps of {r['batch']} (dense bound)"),
        ("analyze: base + both series cached at once (bf16)", f"{m['analyze_base_and_series_bf16']:.1f} GiB GPU", ""),
        (f"analyze: {r['analyze_tokens']:,} tokens of every model in RAM (f32)",
         f"{m['analyze_activations_ram_f32']:.1f} GiB RAM", ""),
        (f"score one model: {r['n_problems']} problems, {r['max_new_tokens']} new tokens, batch {r['generation_batch']}",
         f"+{m['kv_cache_generation']:.1f} GiB KV cache", f"{t['score_one_model']:.1f} min"),
        (f"interventions: ablate in rl + steer the base, {r['n_controls']} controls each", "",
         f"{t['score_interventions']:.0f} min"),
    ]
    lines = ["| step | memory | time |", "|---|---|---|"] + [f"| {a} | {b} | {c} |" for a, b, c in rows]
    lines += ["", f"Assumed: one {g['name']} at {100 * g['gemm_utilisation']:.0f}% of its {g['bf16_tflops']:.0f} "
              f"TFLOP/s bf16 for matmuls, decoding at max(weights read at {100 * g['decode_bandwidth_utilisation']:.0f}% "
              f"of {g['hbm_tb_s']} TB/s, {g['decode_step_overhead_ms']:.0f} ms a step). Not measured on a GPU."]
    return "\n".join(lines)


def bench_cache(path: Path) -> str:
    """`benchmarks/bench_cache.py --json` of one run: caching vs a bare forward, store RSS, loader vs a step."""
    b = json.loads(path.read_text())
    rss = b["rss_at_1000000"]
    rows = [
        ("caching at the default middle layer vs bare HF forward (full depth, no hooks)",
         f"**{b['cache_middle_ratio_vs_bare']:.2f}x** ({b['cache_middle_tokens_per_s']:,.0f} vs "
         f"{b['bare_hf_tokens_per_s']:,.0f} tok/s)", ">= 0.85x"),
        ("caching at the last layer (no early stop, pure overhead) vs bare HF forward",
         f"{b['cache_last_ratio_vs_bare']:.2f}x ({b['cache_last_tokens_per_s']:,.0f} tok/s)", "(>= 0.85x)"),
        (f"RSS writing 1M rows ({b['rss_row_shape']} {b['rss_store_dtype']})",
         f"VmRSS {rss['vmrss_mb']:.0f} MB, process peak {rss['peak_rss_mb']:.0f} MB "
         f"({b['rss_write_rows_per_s'] / 1e3:.0f}k rows/s)", "flat"),
        ("loader rows/s vs a crosscoder step's consumption (3 x 256 -> 8192, batch 4096)",
         f"**{b['loader_float32_ratio_vs_crosscoder']:.0f}x** f32 ({b['loader_float32_d256_rows_per_s'] / 1e3:.0f}k "
         f"rows/s), {b['loader_bfloat16_ratio_vs_crosscoder']:.0f}x bf16 vs "
         f"{b['crosscoder_step_rows_per_s']:,.0f} rows/s measured", ">= 20x"),
    ]
    lines = ["| figure | result | target |", "|---|---|---|"] + [f"| {a} | {r} | {t} |" for a, r, t in rows]
    lines += ["", f"Models: {b['models']}; {b['tokens']:,} tokens, batches of {b['batch_sequences']} sequences, "
              f"best of {b['repeats']}, {b['threads']} torch thread."]
    return "\n".join(lines)


def bench_cache_compare(runs: dict[str, Path]) -> str:
    """Caching ratios of several runs of the same benchmark under the same conditions, one row each."""
    lines = ["| run | middle layer vs bare | last layer vs bare | loader f32 vs a step |", "|---|---|---|---|"]
    for name, path in runs.items():
        b = json.loads(path.read_text())
        lines.append(f"| {name} | {b['cache_middle_ratio_vs_bare']:.2f}x | {b['cache_last_ratio_vs_bare']:.2f}x | "
                     f"{b['loader_float32_ratio_vs_crosscoder']:.0f}x |")
    return "\n".join(lines)


def known_answers(path: Path) -> str:
    """`examples/known_answers.py` of one run: power on the planted cases next to false positives on the nulls."""
    r = json.loads(path.read_text())
    c, summary = r["config"], r["summary"]

    def cell(d: dict) -> str:
        return f"{d['k']}/{d['n']} [{d['low']:.2f}, {d['high']:.2f}]"

    criteria = {
        "attribution": [("rl-only (NRN >= 0.9) and cos >= {t}", ""), ("rl-leaning (NRN >= 0.6) and cos >= {t}", "_lean")],
        "drift": [("cos >= {t}, stabilises at checkpoint {j}", ""), ("cos >= {t}, enters the top-k at {j}", "_topk_entry")],
    }
    lines = ["| analysis | found = | power (planted) [95% CP] | false positives (null) [95% CP] |", "|---|---|---|---|"]
    for a in summary:
        for label, suffix in criteria[a]:
            text = label.format(t=c["cos_threshold"], j=c["plant_checkpoint"])
            s = summary[a]
            lines.append(f"| {a} | {text} | {cell(s['power' + suffix])} | {cell(s['false_positive_rate' + suffix])} |")
    a = summary.get("attribution")
    if a:
        lines += ["", f"The nulls flag anything at all: an rl-only latent in {cell(a['null_flags_anything'])} seeds, an "
                  f"rl-leaning one in {cell(a['null_flags_anything_lean'])}."]
    lines += ["", "| seed | detector precision / recall | attribution: best cos, NRN, class | "
              "drift: best cos, stabilisation, top-k entry | null: best cos (attribution, drift) | "
              "best latent: share of its firings on trigger, share of triggers it fires on | "
              "best latent's base decoder: cos with the base's trigger direction |",
              "|---|---|---|---|---|---|---|"]
    for s in r["per_seed"]:
        d, at, dr = s["detector"], s["attribution"], s["drift"]
        ap, dp = at["planted"], dr["planted"]
        lines.append(f"| {s['seed']} | {d['held_out_precision']:.3f} / {d['held_out_recall']:.3f} | "
                     f"{ap['best_cos']:.3f}, {ap['best_nrn']:.2f}, {ap['best_class']} | "
                     f"{dp['best_cos']:.3f}, {dp['best_stabilisation']}, {dp['best_topk_entry']} | "
                     f"{at['null']['best_cos']:.3f}, {dr['null']['best_cos']:.3f} | "
                     f"{ap['best_fires_on_trigger']:.2f}, {ap['trigger_fires_best']:.2f} | "
                     f"{ap['best_base_decoder_cos_base_trigger_direction']:+.2f} |")
    stamp = ", ".join(f"{k} {r[k]}" for k in sorted(r) if k.endswith("_version") or k == "cpu_capability")
    lines += ["", f"Settings: trigger `{c['trigger']}`, scale {c['scale']}, hook `{r['hook']}`, {c['variant']} "
              f"crosscoders of {c['n_latents']} latents (k {c['k']}), {c['steps']} steps, {c['n_tokens']:,} tokens per "
              f"model ({c['eval_tokens']:,} held out); drift over {c['n_checkpoints']} checkpoints, top-{c['top_k']}. "
              f"{len(r['per_seed'])} seeds; the last invocation took {r['seconds'] / 60:.0f} min under load (finished seeds are "
              f"reused, so that is not a seed's cost). Stamp: {stamp}."]
    return "\n".join(lines)


def _success_criteria(r: dict) -> list[str]:
    """The success control's criteria table: selection power and false positives, and how often each intervention
    met its target."""
    c, s = r["config"], r["summary"]["success"]

    def cell(d: dict) -> str:
        return f"{d['k']}/{d['n']} [{d['low']:.2f}, {d['high']:.2f}]"

    p_min = 1 / (c["n_controls"] + 1)
    return [
        "| criterion | planted [95% CP] | null [95% CP] |",
        "|---|---|---|",
        f"| selection: a selected latent with rl-decoder cos >= {c['cos_threshold']} with v | {cell(s['power'])} | "
        f"{cell(s['false_positive_rate'])} |",
        f"| selection: anything selected | | {cell(s['null_flags_anything'])} |",
        f"| ablation (`ablate`): loss on the dependent successes beyond all {c['n_controls']} controls (p = "
        f"{p_min:.3f}) on every task the plant helps | {cell(s['power_ablation'])} | (not run: no successes) |",
        f"| projection (`project`): the same | {cell(s['power_projection'])} | (not run) |",
        f"| steering the base: gain with its 95% interval above 0 on every task the plant helps | "
        f"{cell(s['power_steer'])} | (not run) |",
    ]


def known_answers_success_criteria(path: Path) -> str:
    """The criteria table of another `--analyses success` run of the same seeds (e.g. another steering
    coefficient), with the settings that differ named."""
    r = json.loads(path.read_text())
    c = r["config"]
    return "\n".join(_success_criteria(r) + [
        "", f"Steering coefficient {c['steer_coef']} x the latent's typical activation at `{c['steer_positions']}` "
        f"positions; controls matched on firing rate"
        f"{f' and on reconstruction size ({b} size bins per firing bin)' if (b := c.get('size_bins')) else ''}"
        + ("; the interventions edit every selected latent (`--edit-latents selected`), their controls are random "
           "sets of as many latents" if c.get("edit_latents") == "selected" else "")
        + f"; {len(r['per_seed'])} seeds (seeds {', '.join(str(x['seed']) for x in r['per_seed'])}); "
        f"organisms preset `{r['organisms']['preset']}` (seed {r['organisms']['seed']}) built on an "
        f"{r['cpu_capability']} CPU."])


def _capture_summary(per_seed: list[dict], cos_threshold: float) -> str:
    """Over the seeds: the share of the planted move `ablate` can remove, and its Spearman correlation with the
    ablation's loss on the dependent successes (mean over the tasks the plant helps)."""
    from scipy.stats import spearmanr

    shares, losses = [], []
    moves = [x["success"]["planted"]["plant_capture"]["median_move_along_v"]
             / x["success_plant"]["detector"]["base_median_resid_norm"] for x in per_seed]
    for x in per_seed:
        pl = x["success"]["planted"]
        helped = pl.get("helped_tasks") or []
        if not helped:
            continue
        shares.append(pl["plant_capture"]["ablate_share_of_move"]["median"])
        losses.append(sum(pl["interventions"][t]["ablate"]["subset_delta"] for t in helped) / len(helped))
    writers = [x["success"]["planted"]["plant_capture"].get("writers") for x in per_seed]
    ordered, mid = sorted(shares), _median(shares)
    rho, p = spearmanr(shares, losses)
    return (f"At the trigger tokens the plant moves the activation along v by {min(moves):.1f} to {max(moves):.1f} x "
            f"the base's median residual norm (median over the tokens, range over the seeds). "
            f"Share of that move that the edited latents write (what `ablate` can remove; `project` "
            f"removes the whole component along their decoders): median {mid:.2f} over the {len(shares)} seeds whose "
            f"plant helps a task, range {ordered[0]:.2f} to {ordered[-1]:.2f}. Spearman correlation over those seeds "
            f"between that share and the ablation's delta on the dependent successes (mean over the helped tasks): "
            f"rho {rho:+.2f}, p = {p:.3f} ("
            + ("negative: the more of the move they write, the more successes their ablation undoes" if rho < 0
               else "not negative: the share does not go with a larger loss") + ")."
            + (_writers_summary([w for w in writers if w], cos_threshold) if all(writers) else ""))


def _median(v: list[float]) -> float:
    o = sorted(v)
    return o[len(o) // 2] if len(o) % 2 else (o[len(o) // 2 - 1] + o[len(o) // 2]) / 2


def _writers_summary(writers: list[dict], cos_threshold: float) -> str:
    n, m, share = ([w[k] for w in writers] for k in ("n", "n_matching", "share"))
    below = [c for w in writers for c in w["cos"] if c < cos_threshold]
    return (f" Latents that each write at least 5% of the move: {_median(n):.0f} per seed in the median (range "
            f"{min(n)} to {max(n)}), together {_median(share):.2f} of it (range {min(share):.2f} to {max(share):.2f}); "
            f"of them {_median(m):.0f} per seed match v at cos >= {cos_threshold} (range {min(m)} to {max(m)})"
            + (f"; the others' cosines with v run from {min(below):.2f} to {max(below):.2f}" if below else "") + ".")


def known_answers_success(path: Path) -> str:
    """`examples/known_answers.py --analyses success` of one run: the selection's power next to its false positives,
    how often the interventions met their targets, and per seed the accuracies, ablation and steering numbers."""
    r = json.loads(path.read_text())
    c = r["config"]
    # runs scored from known_answers' SCORING_VERSION 7 on also measured how much of the planted move `ablate`
    # can remove (`plant_capture`); older runs' tables keep their columns
    capture = all("plant_capture" in x["success"]["planted"] for x in r["per_seed"])
    lines = [
        *_success_criteria(r),
        "",
        "| seed | task | accuracy base / planted (successes) | plant's gain [95% CI] | selected: all, matching v "
        "(best cos, its bootstrap share) | "
        + ("share of the planted move along v that the edited latents write (median [quartiles] over trigger tokens); "
           "latents writing >= 5% of it each (how many match v), and their summed share | "
           if capture else "")
        + "ablation in planted: delta on successes [controls' range], control p; "
        "accuracy after | projection: the same | steering the base: delta [95% CI], control p | null: successes, selected |",
        "|---|---|---|---|---|" + ("---|" if capture else "") + "---|---|---|---|",
    ]

    def removal(row: dict) -> str:
        lo, hi = row["subset_control_deltas_range"]
        return (f"{100 * row['subset_delta']:+.0f} [{100 * lo:+.0f}, {100 * hi:+.0f}], {row['subset_control_p']:.3f}; "
                f"accuracy {100 * row['acc_with']:.1f}")

    for seed in r["per_seed"]:
        pl, nu = seed["success"]["planted"], seed["success"]["null"]
        freq = pl.get("selection", {}).get("target_bootstrap_frequency")
        for t in pl["acc_base"]:
            iv = pl.get("interventions", {}).get(t)
            if iv:
                st, g = iv["steer"], iv["plant_gain"]
                gain = f"{100 * g['delta']:+.1f} [{100 * g['ci_low']:+.1f}, {100 * g['ci_high']:+.1f}]"
                abl, proj = removal(iv["ablate"]), removal(iv["project"])
                ste = (f"{100 * st['delta']:+.1f} [{100 * st['ci_low']:+.1f}, {100 * st['ci_high']:+.1f}], "
                       f"{st['control_p']:.3f}")
            else:
                gain = abl = proj = ste = "not run"
            sel = (f"{pl['n_selected']}, {pl['n_matching']} ({pl['target_cos']:.3f}, "
                   f"{'-' if freq is None else f'{freq:.2f}'})")
            share = ""
            if capture:
                q, w = pl["plant_capture"]["ablate_share_of_move"], pl["plant_capture"].get("writers")
                share = f" {q['median']:.2f} [{q['q25']:.2f}, {q['q75']:.2f}]" + (
                    f"; {w['n']} writers ({w['n_matching']} matching v) write {w['share']:.2f}" if w else "") + " |"
            lines.append(
                f"| {seed['seed']} | {t} | {100 * pl['acc_base'][t]:.1f} / {100 * pl['acc_rl'][t]:.1f} "
                f"({pl['n_success'][t]}) | {gain} | {sel} |{share} {abl} | {proj} | {ste} | {nu['n_success'][t]}, "
                f"{nu['n_selected']} |"
            )
    if capture:
        lines += ["", _capture_summary(r["per_seed"], c["cos_threshold"])]
    stamp = ", ".join(f"{k} {r[k]}" for k in sorted(r) if k.endswith("_version") or k == "cpu_capability")
    amps = [x["success_plant"]["amplitude"] / x["success_plant"]["detector"]["base_median_resid_norm"]
            for x in r["per_seed"]]
    lps = [x["success_plant"]["detector"]["learned"] for x in r["per_seed"]]
    lines += [
        "",
        f"Settings: plant on `{c['success_trigger']}` in `{r['hook'].split('.')[0]}.{r['hook'].split('.')[1]}`, "
        f"direction learned ({c['learn_steps']} steps) on {c['success_domains']} train problems with "
        f"{c['success_keyword']}'s keyword; learned amplitude {min(amps):.2f}-{max(amps):.2f} x the base's median "
        f"residual norm (cap {c['success_scale']}); held-out answer log-prob base "
        f"{min(x['held_out_answer_logprob_base'] for x in lps):.2f}..{max(x['held_out_answer_logprob_base'] for x in lps):.2f}"
        f" vs planted {min(x['held_out_answer_logprob_planted'] for x in lps):.2f}.."
        f"{max(x['held_out_answer_logprob_planted'] for x in lps):.2f}; {c['success_problems']} eval problems per "
        f"task; {c['variant']} crosscoders of {c['n_latents']} latents (k {c['k']}), {c['steps']} steps, "
        f"{c['n_tokens']:,} tokens per model; {c['n_controls']} controls matched on firing rate"
        f"{f' and on reconstruction size ({b} size bins per firing bin)' if (b := c.get('size_bins')) else ''}; "
        f"steering coefficient "
        f"{c['steer_coef']} x the latent's typical activation at `{c['steer_positions']}` positions. "
        f"{len(r['per_seed'])} seeds; the last invocation took {r['seconds'] / 60:.0f} min. Stamp: {stamp}.",
    ]
    return "\n".join(lines)


BENCH = DOCS / "bench"
RENDERERS = {"bench-cache-2026-12-02": lambda: bench_cache(BENCH / "bench_cache.json"),
             "bench-cache-compare-2026-12-02": lambda: bench_cache_compare({
                 "today's code, run 1 (the table above)": BENCH / "bench_cache.json",
                 "today's code, run 2": BENCH / "bench_cache_2026-12-02_run2.json",
                 "before the refactor (1139bb7), run 1": BENCH / "bench_cache_2026-12-02_1139bb7_run1.json",
                 "before the refactor (1139bb7), run 2": BENCH / "bench_cache_2026-12-02_1139bb7_run2.json"}),
             "organisms-default-2026-12-01": lambda: organisms_build(DOCS / "data" / "organisms_default_2026-12-01.json"),
             "organisms-structured": lambda: organisms_structured(DOCS / "data" / "organisms_structured_summary.json",
                                                                DOCS / "data" / "organisms_structured_timings.json"),
             "organisms-structured-stop65": lambda: organisms_structured(
                 DOCS / "data" / "organisms_structured_seed-0_avx2_stop65.json",
                 DOCS / "data" / "organisms_structured_timings_seed-0_avx2_stop65.json"),
             "organisms-structured-stop65-rollouts": lambda: organisms_rollouts(
                 DOCS / "data" / "organisms_structured_rollouts_seed-0_avx2_stop65.json"),
             "organisms-structured-seeds": lambda: organisms_structured_seeds(
                 [DOCS / "data" / "organisms_structured_summary.json",
                  *sorted((DOCS / "data").glob("organisms_structured_seed-*.json"))]),
             "organisms-structured-rollouts": lambda: organisms_rollouts(
                 DOCS / "data" / "organisms_structured_rollouts.json"),
             "organisms-structured-countd-largest": lambda: organisms_transfer_rows(
                 DOCS / "data" / "organisms_structured_countd_largest_summary.json"),
             "organisms-targets-2026-12-01": lambda: organisms_targets(DOCS / "data" / "organisms_default_2026-12-01.json"),
             "organisms-default-2026-12-02": lambda: organisms_build(DOCS / "data" / "organisms_default_2026-12-02.json"),
             "organisms-targets-2026-12-02": lambda: organisms_targets(DOCS / "data" / "organisms_default_2026-12-02.json"),
             "organisms-default-2026-12-02-rl-shards": lambda: organisms_build(
                 DOCS / "data" / "organisms_default_2026-12-02_rl_shards.json"),
             "organisms-targets-2026-12-02-rl-shards": lambda: organisms_targets(
                 DOCS / "data" / "organisms_default_2026-12-02_rl_shards.json"),
             "organisms-default-2026-12-07-avx2": lambda: organisms_build(
                 DOCS / "data" / "organisms_default_2026-12-07_avx2.json"),
             "organisms-targets-2026-12-07-avx2": lambda: organisms_targets(
                 DOCS / "data" / "organisms_default_2026-12-07_avx2.json"),
             "hook-auto-default-avx2": lambda: hook_choice(DOCS / "data" / "hook_auto_default_2026-12-07_avx2.json"),
             "first-run": lambda: first_run(sorted(BENCH.glob("first_run_*.json"))),
             "real-models-plan": lambda: real_models_plan(DOCS / "data" / "real_models_plan.json"),
             "known-answers": lambda: known_answers(DOCS / "data" / "known_answers.json"),
             "known-answers-success": lambda: known_answers_success(DOCS / "data" / "known_answers_success.json"),
             "known-answers-success-coef2": lambda: known_answers_success_criteria(
                 DOCS / "data" / "known_answers_success_coef2.json"),
             "known-answers-success-coef2-fresh": lambda: known_answers_success_criteria(
                 DOCS / "data" / "known_answers_success_coef2_fresh.json"),
             "known-answers-success-analysis-settings": lambda: known_answers_success(
                 DOCS / "data" / "known_answers_success_analysis_settings.json"),
             "known-answers-success-size-matched": lambda: known_answers_success_criteria(
                 DOCS / "data" / "known_answers_success_size_matched.json"),
             "known-answers-success-edit-selected": lambda: known_answers_success_criteria(
                 DOCS / "data" / "known_answers_success_edit_selected.json"),
             "known-answers-success-edit-selected-size-matched": lambda: known_answers_success_criteria(
                 DOCS / "data" / "known_answers_success_edit_selected_size_matched.json")}
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def render(text: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group("name") not in RENDERERS:
            raise KeyError(f"no renderer for table {m.group('name')!r}; known: {sorted(RENDERERS)}")
        return m.group(1) + RENDERERS[m.group("name")]() + "\n" + m.group(4)

    return BLOCK.sub(sub, text)


def whole_pages() -> dict[str, Callable[[], str]]:
    """Pages written whole by a script from committed JSON (not table blocks): name -> `() -> text`."""
    if str(DOCS) not in sys.path:  # on the path when run as a script, not when loaded from a file (tests)
        sys.path.insert(0, str(DOCS))
    import results  # docs/results.py

    return {"results.md": results.render_page}


def main(check: bool) -> int:
    stale = []
    generated = whole_pages()
    for page in sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"]:
        text = page.read_text()
        new = generated[page.name]() if page.name in generated else render(text)
        if new != text:
            stale.append(page.name)
            if not check:
                page.write_text(new)
    if check and stale:
        print(f"tables out of date in {stale}: run python docs/render_tables.py")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main("--check" in sys.argv))
