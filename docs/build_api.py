"""Render featalign's API reference (HTML, from the docstrings) with pdoc.

    python docs/build_api.py                 # -> docs/api/index.html (docs/api/ is git-ignored)
    python docs/build_api.py --out /tmp/api

Every public module of the package is rendered: the package is walked with `pkgutil`, and modules
with a private name component (a leading underscore, e.g. `featalign.organisms.__main__`, the CLI
entry point) are left out. Needs the `dev` extra (`pip install -e ".[dev]"`, which brings pdoc).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "featalign"


def public_modules(package: str = PACKAGE) -> list[str]:
    """Dotted names of every public module of `package` (itself included), sorted."""
    if str(ROOT) not in sys.path:  # document this checkout, also when featalign is not installed
        sys.path.insert(0, str(ROOT))
    pkg = importlib.import_module(package)
    names = [package]
    for info in pkgutil.walk_packages(pkg.__path__, package + "."):
        if not any(part.startswith("_") for part in info.name.split(".")):
            names.append(info.name)
    return sorted(names)


def build(out: str | Path, modules: list[str] | None = None) -> list[str]:
    """Render `modules` (default: every public module) into `out`; returns the module names."""
    try:
        import pdoc
        import pdoc.render
    except ImportError as e:
        raise SystemExit('pdoc is not installed: pip install -e ".[dev]" (or pip install "pdoc>=14")') from e
    modules = modules or public_modules()
    for name in modules:  # a module that fails to import should fail here, naming itself
        importlib.import_module(name)
    pdoc.render.configure(docformat="restructuredtext", show_source=True, search=True,
                          footer_text=f"{PACKAGE} API reference")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # featalign.organisms exports build_organisms / ensure_organisms / Organisms lazily (a
        # module __getattr__ that keeps its import acyclic); pdoc cannot resolve those names there,
        # and they are documented in featalign.organisms.build.
        warnings.filterwarnings("ignore", message=r"Found '.*' in featalign\.organisms\.__all__, but it does not resolve")
        # pdoc also walks the submodules of every package it is given; the explicit list repeats them.
        warnings.filterwarnings("ignore", message=r"The module specification '.*' adds a module named .*already been added")
        pdoc.pdoc(*modules, output_directory=out)
    return modules


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "docs" / "api"), help="output folder (default: docs/api)")
    args = p.parse_args(argv)
    modules = build(args.out)
    print(f"{len(modules)} modules rendered into {args.out} (open {Path(args.out) / 'index.html'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
