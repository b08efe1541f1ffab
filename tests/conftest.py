"""Shared fixtures: the tiny organisms are built once per test session (about 10 s on 2 cores; under
pytest-xdist once for all workers).

The suite runs on every core (pytest-xdist, `-n auto` in pyproject.toml): each test runs torch on one
thread, so two workers on two cores halve the wall time. Each worker gets its own FEATALIGN_CACHE
subfolder, so no two workers build the same organisms folder at once; `-n 0` runs serially. Tests
marked `slow` (minutes each) are handed out first, so they run beside the many short ones rather than
after them, alone on one core at the end.
"""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FEATALIGN_TEST_THREADS", "1")))

if os.environ.get("PYTEST_XDIST_WORKER"):
    from featalign.organisms.config import CACHE_ENV, default_cache_dir

    os.environ[CACHE_ENV] = str(default_cache_dir() / f"xdist-{os.environ['PYTEST_XDIST_WORKER']}")


def pytest_collection_modifyitems(config, items):
    """Slow tests first, those with the longest own timeout first among them; the rest as collected."""

    def own_timeout(item) -> float:
        m = item.get_closest_marker("timeout")
        return float(m.args[0]) if m and m.args else 0.0

    items.sort(key=lambda item: (item.get_closest_marker("slow") is None, -own_timeout(item)))


@pytest.fixture(scope="session")
def tiny_organisms(tmp_path_factory):
    """A built `tiny` organisms folder (base, sft-count, rl-count with 5 checkpoints each, eval)."""
    from featalign.organisms import preset_config
    from featalign.organisms.build import build_organisms

    if not os.environ.get("PYTEST_XDIST_WORKER"):
        root = tmp_path_factory.mktemp("organisms") / "tiny"
        return build_organisms(preset_config("tiny"), root, workers=2)  # parallel, whatever the machine
    from filelock import FileLock

    # one build for all workers (the session's shared temp folder): the first builds, the others wait and open it
    shared = tmp_path_factory.getbasetemp().parent / "organisms-shared"
    shared.mkdir(exist_ok=True)
    from featalign.organisms.build import Organisms

    root = shared / "tiny"
    with FileLock(str(shared / "tiny.lock")):
        if (root / "config.json").exists() and Organisms.open(root).is_complete():
            return Organisms.open(root)
        return build_organisms(preset_config("tiny"), root, workers=2)


@pytest.fixture(scope="session")
def trio(tiny_organisms):
    """The tiny organisms' base / rl / sft, loaded once as a ModelGroup of TransformerBridges."""
    from featalign.models import ModelGroup

    return ModelGroup.from_paths(tiny_organisms.default_trio())
