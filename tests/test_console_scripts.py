"""Every stage's CLI answers --help as a console script and as its package's `python -m`."""

from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_console_script_entry_points_resolve_and_print_help(name, capsys):
    import importlib

    module, func = SCRIPTS[name].split(":")
    entry = getattr(importlib.import_module(module), func)
    argv = sys.argv
    sys.argv = [name, "--help"]
    try:
        with pytest.raises(SystemExit) as e:
            entry()
    finally:
        sys.argv = argv
    assert e.value.code == 0
    assert "usage" in capsys.readouterr().out.lower()


@pytest.mark.parametrize("package", ["featalign.activations", "featalign.crosscoder", "featalign.analysis",
                                     "featalign.interventions", "featalign.organisms"])
def test_package_main_runs(package):
    args = [sys.executable, "-m", package, "--help"]
    r = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "usage" in r.stdout.lower()
