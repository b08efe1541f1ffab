"""Fill docs/crosscoder.md's benchmark tables from the JSON in docs/bench (run after the benchmarks).

    python benchmarks/fill_docs.py
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from tables import quality, speed  # benchmarks/tables.py

ROOT = Path(__file__).parents[1]
QUALITY = ("base", "aux", "lr", "l1024", "auxk32", "auxk32_l1024")


def fill(text: str, marker: str, table: str) -> str:
    block = f"<!-- {marker} -->\n{table}\n<!-- /{marker} -->\n"
    pat = re.compile(rf"<!-- {marker} -->\n(?:.*?\n<!-- /{marker} -->\n)?", re.S)
    return pat.sub(lambda _: block, text, count=1)


if __name__ == "__main__":
    bench = ROOT / "docs" / "bench"
    doc = ROOT / "docs" / "crosscoder.md"
    text = doc.read_text()
    text = fill(text, "bench-crosscoder-table", speed(json.loads((bench / "bench_crosscoder.json").read_text())))
    # a second machine kind (AVX-512 without AMX, two threads), kept beside the first rather than replacing it
    avx512 = json.loads((bench / "bench_crosscoder_avx512_2026-12-07.json").read_text())
    text = fill(text, "bench-crosscoder-table-avx512", speed(avx512))
    # a third (AVX-512 with bf16 dot products, bf16 GEMMs ~4x fp32), after the step kept its encoder output
    avx512bf16 = json.loads((bench / "bench_crosscoder_avx512bf16_2026-12-07.json").read_text())
    text = fill(text, "bench-crosscoder-table-avx512bf16", speed(avx512bf16))
    runs = [json.loads((bench / f"batchtopk_quality_{n}.json").read_text()) for n in QUALITY]
    text = fill(text, "batchtopk-quality-table", quality(runs))
    doc.write_text(text)
