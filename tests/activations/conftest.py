"""Fixtures: the tiny organisms trio loaded once, and a small reference store."""

from __future__ import annotations

import pytest

from featalign.activations import CacheConfig, cache_activations
from featalign.models import ModelGroup

HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]


@pytest.fixture(scope="session")
def trio(tiny_organisms) -> ModelGroup:
    return ModelGroup.from_paths(tiny_organisms.default_trio())


@pytest.fixture(scope="session")
def small_cfg() -> CacheConfig:
    """~6 shards of ~1.3k rows for 6000 tokens: several commits, cheap."""
    return CacheConfig(hooks=tuple(HOOKS), n_tokens=6000, batch_size=32, shard_mb=0.25)


@pytest.fixture(scope="session")
def ref_store(trio, small_cfg, tmp_path_factory):
    """An uninterrupted run, the reference for resume/append tests."""
    return cache_activations(trio, None, out_dir=tmp_path_factory.mktemp("ref") / "store", config=small_cfg,
                             progress=False)
