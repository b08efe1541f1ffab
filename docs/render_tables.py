"""Render the docs' tables that come from committed run outputs (`docs/data/*.json`) into their pages.

    python docs/render_tables.py          # rewrite the marked blocks in place
    python docs/render_tables.py --check  # exit 1 if a page disagrees with its JSON (tests run this)

A block is the text between `<!-- table:NAME -->` and `<!-- /table:NAME -->`; NAME picks the renderer.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent


def organisms_build(path: Path) -> str:
    """Accuracy per domain and in/out-of-domain deltas of one organisms build (`eval/summary.json`)."""
    s = json.loads(path.read_text())
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


def first_run(path: Path) -> str:
    """The README's first-run time, from `benchmarks/bench_first_run.py`'s JSON (a sentence saying how to
    measure it while there is none)."""
    if not path.exists():
        return ("Not yet measured with this version: `python benchmarks/bench_first_run.py` on an otherwise idle "
                "machine writes `docs/bench/first_run.json`, and `python docs/render_tables.py` puts it here.")
    s = json.loads(path.read_text())
    p = s["phases_s"]
    return (f"Measured {s['date']} ({s['cores']} cores, load average {s['load_average_before'][0]:.1f} at the start, "
            f"{s['cores_busy']:.2f} cores busy on average): **{s['wall_s'] / 60:.1f} minutes**: the organisms "
            f"{p['organisms']:.0f} s (pretraining {p['organisms_pretraining']:.0f} s, post-training and evaluation "
            f"{p['organisms_post_training_and_eval']:.0f} s), caching the activations {p['activations_caching']:.0f} s, "
            f"training the crosscoder {p['crosscoder_training']:.0f} s, its evaluation {p['crosscoder_evaluation']:.0f} s "
            f"(`docs/bench/first_run.json`).")


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


BENCH = DOCS / "bench"
RENDERERS = {"bench-cache-2026-12-02": lambda: bench_cache(BENCH / "bench_cache.json"),
             "bench-cache-compare-2026-12-02": lambda: bench_cache_compare({
                 "today's code, run 1 (the table above)": BENCH / "bench_cache.json",
                 "today's code, run 2": BENCH / "bench_cache_2026-12-02_run2.json",
                 "before the refactor (1139bb7), run 1": BENCH / "bench_cache_2026-12-02_1139bb7_run1.json",
                 "before the refactor (1139bb7), run 2": BENCH / "bench_cache_2026-12-02_1139bb7_run2.json"}),
             "organisms-default-2026-12-01": lambda: organisms_build(DOCS / "data" / "organisms_default_2026-12-01.json"),
             "organisms-targets-2026-12-01": lambda: organisms_targets(DOCS / "data" / "organisms_default_2026-12-01.json"),
             "organisms-default-2026-12-02": lambda: organisms_build(DOCS / "data" / "organisms_default_2026-12-02.json"),
             "organisms-targets-2026-12-02": lambda: organisms_targets(DOCS / "data" / "organisms_default_2026-12-02.json"),
             "first-run": lambda: first_run(BENCH / "first_run.json"),
             "real-models-plan": lambda: real_models_plan(DOCS / "data" / "real_models_plan.json")}
BLOCK = re.compile(r"(<!-- table:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table:(?P=name) -->)", re.S)


def render(text: str) -> str:
    def sub(m: re.Match) -> str:
        if m.group("name") not in RENDERERS:
            raise KeyError(f"no renderer for table {m.group('name')!r}; known: {sorted(RENDERERS)}")
        return m.group(1) + RENDERERS[m.group("name")]() + "\n" + m.group(4)

    return BLOCK.sub(sub, text)


def main(check: bool) -> int:
    stale = []
    for page in sorted(DOCS.glob("*.md")) + [DOCS.parent / "README.md"]:
        text = page.read_text()
        new = render(text)
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
