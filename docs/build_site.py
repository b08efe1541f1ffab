"""Build featalign's docs site: README.md and the pages in docs/ as HTML, next to the pdoc API reference.

    python docs/build_site.py                # -> docs/site/index.html (docs/site/ is git-ignored)
    python docs/build_site.py --out /tmp/site
    python docs/build_site.py --check-only   # only check the Markdown links (no build)

Layout: `index.html` (README.md), `docs/<page>.html` (docs/<page>.md), `api/` (docs/build_api.py). The
Markdown goes through pdoc's own renderer (`pdoc.render_helpers.to_html`, markdown2), so the site needs
nothing beyond pdoc, which the `dev` extra already brings. Links between pages are rewritten from `.md` to
`.html`; a link to a module's source (`featalign/x/y.py`) goes to its API page; heading ids follow GitHub's
rule, so one anchor (`crosscoder.md#cli`) works both on GitHub and in the site.

Two link checks, both run by `tests/test_docs.py` and by `--check-only` / the build:
`markdown_link_problems` (every relative link in README.md and docs/*.md names an existing file, and an
existing heading where it gives an anchor) and `html_link_problems` (no internal link of the built site,
the API reference included, points to a missing file or id).
"""

from __future__ import annotations

import argparse
import html
import html.parser
import importlib.util
import posixpath
import re
import shutil
import sys
from pathlib import Path
from urllib.parse import unquote, urlsplit

ROOT = Path(__file__).resolve().parent.parent

_FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
_CODE_SPAN = re.compile(r"(`+)(?!`).*?(?<!`)\1(?!`)", re.S)
_INLINE_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_REF_LINK = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*<?(\S+?)>?(?:\s|$)", re.M)
_HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$", re.M)
_EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.I)  # http:, https:, mailto:, data:, javascript:


def pages(root: Path = ROOT) -> list[Path]:
    """The site's Markdown sources: README.md and docs/*.md."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


def _strip_code(text: str) -> str:
    """Markdown without fenced blocks and code spans (a `[x](y)` inside code is not a link)."""
    return _CODE_SPAN.sub("", _FENCE.sub("", text))


def markdown_links(text: str) -> list[str]:
    """Link targets of a Markdown text (inline, image and reference-style), outside code."""
    prose = _strip_code(text)
    return _INLINE_LINK.findall(prose) + _REF_LINK.findall(prose)


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (Markdown code marks and link targets dropped), lower case,
    characters other than letters, digits, spaces, '-' and '_' removed, spaces to '-'."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text stays, its target goes
    text = re.sub(r"<[^>]+>", "", text).replace("`", "").replace("*", "")
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


def heading_anchors(text: str) -> list[str]:
    """Anchors of a Markdown text's headings, in order, repeats numbered `-1`, `-2` as GitHub does."""
    seen: dict[str, int] = {}
    out = []
    for _, title in _HEADING.findall(_FENCE.sub("", text)):
        slug = github_slug(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.append(slug if n == 0 else f"{slug}-{n}")
    return out


def markdown_link_problems(root: Path = ROOT, files: list[Path] | None = None) -> list[str]:
    """Every relative link of README.md and docs/*.md (or `files`) that names a missing file or heading."""
    problems = []
    for md in files if files is not None else pages(root):
        text = md.read_text()
        for target in markdown_links(text):
            if _EXTERNAL.match(target):
                continue
            path, _, anchor = target.partition("#")
            dest = (md.parent / unquote(path)).resolve() if path else md
            where = f"{md.relative_to(root) if md.is_relative_to(root) else md}: ({target})"
            if not dest.exists():
                problems.append(f"{where}: no file {dest}")
            elif anchor and dest.suffix == ".md" and unquote(anchor) not in heading_anchors(dest.read_text()):
                problems.append(f"{where}: {dest.name} has no heading with anchor #{anchor}")
    return problems


# --- rendering ---------------------------------------------------------------------------------------------

_STYLE = """body{font-family:system-ui,sans-serif;max-width:64em;margin:0 auto;padding:0 1em 3em;line-height:1.5}
nav{border-bottom:1px solid #ddd;padding:.6em 0;margin-bottom:1em;font-size:90%} nav a{margin-right:.9em}
pre{background:#f6f8fa;padding:.7em;overflow-x:auto} code{background:#f6f8fa;padding:0 .2em}
table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:2px 6px;font-size:92%}"""


def _site_path(md: Path, root: Path) -> str:
    """Where a Markdown source lands in the site (relative to its root)."""
    return "index.html" if md == root / "README.md" else f"docs/{md.stem}.html"


def _relative(from_page: str, to: str) -> str:
    """`to` (a site path) as a link from the page `from_page`."""
    return posixpath.relpath(to, posixpath.dirname(from_page) or ".")


class _Rewriter:
    """Maps a link of a source page to its place in the site (and records the repository files it needs)."""

    def __init__(self, root: Path, md: Path):
        self.root, self.md, self.page = root, md, _site_path(md, root)
        self.copies: set[Path] = set()

    def __call__(self, m: re.Match) -> str:
        target = html.unescape(m.group(2))
        if _EXTERNAL.match(target) or target.startswith("#"):
            return m.group(0)
        path, _, anchor = target.partition("#")
        dest = (self.md.parent / unquote(path)).resolve()
        try:
            rel = dest.relative_to(self.root)
        except ValueError:
            return m.group(0)
        if dest.suffix == ".md" and dest in pages(self.root):
            new = _site_path(dest, self.root)
        elif rel.parts[0] == "featalign" and dest.suffix == ".py":
            mod = rel.with_suffix("")
            mod = mod.parent if mod.name == "__init__" else mod
            new = "api/" + "/".join(mod.parts) + ".html"
        else:  # another file of the repository (a figure, a JSON table): copied into the site
            self.copies.add(dest)
            new = "files/" + rel.as_posix()
        new = _relative(self.page, new) + (f"#{anchor}" if anchor else "")
        return f'{m.group(1)}="{html.escape(new)}"'


def render_page(md: Path, root: Path = ROOT) -> tuple[str, set[Path]]:
    """One Markdown source as a site page (HTML), and the repository files its links need copied."""
    from pdoc.render_helpers import to_html

    text = md.read_text()
    body = str(to_html(text))
    anchors = heading_anchors(text)
    heads = re.findall(r"<h[1-6](?: id=\"[^\"]*\")?>", body)
    if len(heads) != len(anchors):  # a heading form this module does not parse: fix it here, not silently
        raise ValueError(f"{md}: {len(heads)} rendered headings but {len(anchors)} Markdown ones")
    # GitHub's heading ids (markdown2's differ), so that the Markdown's anchors hold in the site too
    it = iter(anchors)
    body = re.sub(r"<h([1-6])(?: id=\"[^\"]*\")?>", lambda m: f'<h{m.group(1)} id="{next(it)}">', body)
    rewrite = _Rewriter(root, md)
    body = re.sub(r'(href|src)="([^"]*)"', rewrite, body)
    page = _site_path(md, root)
    nav = [f'<a href="{_relative(page, _site_path(p, root))}">{"README" if p.name == "README.md" else p.stem}</a>'
           for p in pages(root)]
    nav.append(f'<a href="{_relative(page, "api/index.html")}">API reference</a>')
    title = next((t for _, t in _HEADING.findall(text)), md.stem).replace("`", "")
    doc = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
           f"</title><style>{_STYLE}</style></head><body><nav>{''.join(nav)}</nav>{body}</body></html>")
    return doc, rewrite.copies


def _build_api():
    spec = importlib.util.spec_from_file_location("featalign_docs_build_api", ROOT / "docs" / "build_api.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def build(out: str | Path, root: Path = ROOT, api: bool = True) -> Path:
    """Render the site into `out` (the API reference under `out/api` unless `api` is false); returns its
    index page. Raises if a Markdown link is broken, so a broken site is never written silently."""
    problems = markdown_link_problems(root)
    if problems:
        raise SystemExit("broken links in the Markdown:\n  " + "\n  ".join(problems))
    out = Path(out)
    if api:
        _build_api().build(out / "api")
    for md in pages(root):
        doc, copies = render_page(md, root)
        dest = out / _site_path(md, root)
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_text(doc)
        for f in copies:
            (out / "files" / f.relative_to(root)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, out / "files" / f.relative_to(root))
    return out / "index.html"


# --- checking the built HTML -------------------------------------------------------------------------------


class _Links(html.parser.HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.ids: set[str] = set()
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("id", "name") and v is not None and (k == "id" or tag == "a"):
                self.ids.add(v)
            if k in ("href", "src") and v:
                self.links.append(v)


def html_link_problems(site: str | Path) -> list[str]:
    """Every internal link (href/src) of the HTML under `site` that names a missing file or a missing id."""
    site = Path(site)
    parsed: dict[Path, _Links] = {}

    def parse(p: Path) -> _Links:
        if p not in parsed:
            parsed[p] = _Links()
            parsed[p].feed(p.read_text(errors="replace"))
        return parsed[p]

    problems = []
    for page in sorted(site.rglob("*.html")):
        for link in parse(page).links:
            if _EXTERNAL.match(link):
                continue
            parts = urlsplit(link)
            dest = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            where = f"{page.relative_to(site)}: {link}"
            if dest.is_dir():
                dest = dest / "index.html"
            if not dest.exists():
                problems.append(f"{where}: no file")
            elif parts.fragment and dest.suffix == ".html" and unquote(parts.fragment) not in parse(dest).ids:
                problems.append(f"{where}: no id #{parts.fragment} in {dest.relative_to(site)}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "site"), help="output folder (default: docs/site)")
    p.add_argument("--check-only", action="store_true", help="check the Markdown links, build nothing")
    args = p.parse_args(argv)
    if args.check_only:
        problems = markdown_link_problems()
        print("\n".join(problems) or f"links of {len(pages())} Markdown pages: all resolve")
        return 1 if problems else 0
    index = build(args.out)
    problems = html_link_problems(args.out)
    print("\n".join(problems) or f"site written to {index} (every internal link resolves)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
