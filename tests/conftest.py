"""Shared fixtures: the tiny organisms are built once per test session (about 10 s on 2 cores)."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("FEATALIGN_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def tiny_organisms(tmp_path_factory):
    """A built `tiny` organisms folder (base, sft-count, rl-count with 5 checkpoints each, eval)."""
    from featalign.organisms import preset_config
    from featalign.organisms.build import build_organisms

    root = tmp_path_factory.mktemp("organisms") / "tiny"
    return build_organisms(preset_config("tiny"), root, workers=2)  # parallel, whatever the machine


@pytest.fixture(scope="session")
def trio(tiny_organisms):
    """The tiny organisms' base / rl / sft, loaded once as a ModelGroup of TransformerBridges."""
    from featalign.models import ModelGroup

    return ModelGroup.from_paths(tiny_organisms.default_trio())
