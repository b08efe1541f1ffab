"""Markdown tables for docs/crosscoder.md from the benchmarks' JSON (so the figures are not hand-copied).

    python benchmarks/tables.py docs/bench/bench_crosscoder.json docs/bench/batchtopk_quality_*.json
"""

from __future__ import annotations

import json
import sys


def speed(r: dict) -> str:
    rows = ["| step | tokens/s | ceiling measured in the same rounds | ratio (median, best) | target |", "|---|---|---|---|---|"]
    for key, tgt in (("fp32", ">= 0.9"), ("bf16", ">= 0.8")):
        d = r.get(f"dense_{key}")
        if d is None:
            rows.append(f"| `l1` {key} | not timed: bf16 matmul slower than fp32 on this CPU | | | {tgt} |")
            continue
        rows.append(f"| `l1` {key} | {d['tokens_per_s']:,.0f} | square matmul {d['matmul_gflops']:.0f} GFLOP/s | "
                    f"{d['ratio_to_matmul']:.2f}, {d['ratio_best']:.2f} | {tgt} |")
    for key, tgt in (("fp32", ">= 0.8"), ("fp32_aux_active", ""), ("bf16", "faster than fp32"),
                     ("bf16_aux_active", "")):
        d = r.get(f"batchtopk_{key}")
        if d is None:
            continue
        what = key.replace("_aux_active", f", aux active ({d.get('quiet_frac', 0):.0%} of latents quiet)")
        rows.append(f"| `batchtopk` k {r['shape']['k']} {what} | {d['tokens_per_s']:,.0f} | encoder GEMM "
                    f"{d['enc_gemm_gflops']:.0f} GFLOP/s ({d['gemm_bound_tokens_per_s']:,.0f} tok/s bound) | "
                    f"{d['ratio_to_enc_gemm']:.2f}, {d['ratio_best']:.2f} | {tgt} |")
    b = r["batchtopk"]
    rows.append(f"| `batchtopk` sparse vs dense-decode step (fp32) | | | {b['speedup']:.2f}x | >= 2x |")
    s = r["shape"]
    la = r.get("load_avg")
    cpu = f", CPU capability {r['cpu_capability']}" if r.get("cpu_capability") else ""
    return (f"B {s['B']}, K {s['K']}, L {s['L']}, {r['threads']} thread(s), device {r.get('device', 'cpu')}{cpu}"
            + (f", load average at the start {la[0]:.1f}" if la else "") + "\n\n" + "\n".join(rows))


def quality(runs: list[dict]) -> str:
    rows = ["| setting | latents | recovered | model-only | attribution | dead (held-out) | FVU | L0 | train s |",
            "|---|---|---|---|---|---|---|---|---|"]
    for r in runs:
        for s in r["settings"]:
            rows.append(f"| {s['name']} | {r['latents']} | {s['recovered']:.3f} | {s['model_only_recovered']:.3f} | "
                        f"{s['attribution']:.3f} | {s['dead']:.3f} | {s['fvu']:.4f} | {s['l0']:.1f} | {s['train_s']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    runs = [json.load(open(p)) for p in sys.argv[1:]]
    for r in runs:
        if "dense_fp32" in r:
            print(speed(r), "\n")
    q = [r for r in runs if "settings" in r]
    if q:
        print(quality(q))
