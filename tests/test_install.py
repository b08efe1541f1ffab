"""The lock (`constraints.txt`) pins every package that featalign pulls in, inside pyproject's ranges.

A dependency added to pyproject without a lock update, or a range tightened past the locked version,
fails here rather than on a user's fresh machine.
"""

from __future__ import annotations

import importlib.metadata as md
import re
from pathlib import Path

import pytest

packaging_requirements = pytest.importorskip("packaging.requirements")
tomllib = pytest.importorskip("tomllib")

ROOT = Path(__file__).resolve().parents[1]
EXTRAS = ("dev", "notebooks")


def _canon(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _lock() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact pin (name==version)"
            pins[_canon(name)] = version
    return pins


def _direct_requirements() -> list:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in EXTRAS:
        reqs += project["optional-dependencies"][extra]
    return [packaging_requirements.Requirement(r) for r in reqs]


def test_every_direct_requirement_is_pinned_inside_its_range():
    pins = _lock()
    for req in _direct_requirements():
        name = _canon(req.name)
        assert name in pins, f"{req.name} is a dependency but constraints.txt does not pin it"
        assert req.specifier.contains(pins[name], prereleases=True), (
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject's range {req.specifier}"
        )


def test_lock_covers_the_installed_dependency_tree():
    """Walk the requirements of the installed featalign (with the extras CI installs) transitively."""
    pins = _lock()
    env = {"extra": ""}
    todo = [(r, "") for r in _direct_requirements()]
    seen, missing = set(), []
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({**env, "extra": extra}):
            continue
        name = _canon(req.name)
        if name in seen:
            continue
        seen.add(name)
        try:
            dist = md.distribution(req.name)
        except md.PackageNotFoundError:
            continue  # not installed here (e.g. a platform-specific requirement): nothing to compare
        if name not in pins:
            missing.append(name)
        for sub in dist.requires or []:
            sub_req = packaging_requirements.Requirement(sub)
            for want in req.extras or {""}:
                todo.append((sub_req, want))
    assert not missing, f"installed dependencies that constraints.txt does not pin: {sorted(missing)}"
