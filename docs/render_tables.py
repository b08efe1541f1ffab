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


RENDERERS = {"organisms-default-2026-12-01": lambda: organisms_build(DOCS / "data" / "organisms_default_2026-12-01.json"),
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
    for page in sorted(DOCS.glob("*.md")):
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
