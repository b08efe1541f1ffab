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


RENDERERS = {"organisms-default-2026-12-01": lambda: organisms_build(DOCS / "data" / "organisms_default_2026-12-01.json")}
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
